"""Corner, cascade corner and centre pooling against brute-force NumPy loops."""

import keras
import numpy as np
import pytest

from keras_centernet.layers.corner_pooling import CascadeCornerPooling
from keras_centernet.layers.corner_pooling import CenterPooling
from keras_centernet.layers.corner_pooling import CornerPooling
from keras_centernet.layers.corner_pooling import center_pool
from keras_centernet.layers.corner_pooling import corner_pool
from keras_centernet.layers.corner_pooling import cumulative_max
from tests.test_case import TestCase
from tests.test_case import to_numpy
from tests.test_case import value_and_grads

# The BatchNormalization of a fresh layer at inference: x / sqrt(1 + eps).
BN_SCALE = 1.0 / np.sqrt(1.0 + 1e-5)


def brute_force_pool(x, direction):
    """The official C++ loops: each pixel takes the max over the pixels it looks at."""
    out = np.empty_like(x)
    _, height, width, _ = x.shape
    for i in range(height):
        for j in range(width):
            if direction == "top":
                region = x[:, i:, j]
            elif direction == "bottom":
                region = x[:, : i + 1, j]
            elif direction == "left":
                region = x[:, i, j:]
            else:
                region = x[:, i, : j + 1]
            out[:, i, j] = region.max(axis=1)
    return out


def brute_force_center(x):
    out = np.empty_like(x)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            out[:, i, j] = x[:, :, j].max(axis=1) + x[:, i, :].max(axis=1)
    return out


@pytest.mark.multi_backend
def test_cumulative_max_hand_computed():
    x = np.array([1.0, 3.0, 2.0, 0.0, 5.0, 4.0], "float32")
    np.testing.assert_array_equal(to_numpy(cumulative_max(x, 0)), [1, 3, 3, 3, 5, 5])
    np.testing.assert_array_equal(to_numpy(cumulative_max(x, 0, reverse=True)), [5, 5, 5, 5, 5, 4])
    np.testing.assert_array_equal(to_numpy(cumulative_max(x[:1], 0)), [1])
    np.testing.assert_array_equal(to_numpy(cumulative_max(x[::-1].copy(), -1)), [4, 5, 5, 5, 5, 5])


@pytest.mark.multi_backend
@pytest.mark.parametrize("direction", ["top", "left", "bottom", "right"])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (8, 3), (13, 16)])
def test_corner_pool_matches_brute_force(direction, size, rng):
    x = rng.normal(size=(2,) + size + (3,)).astype("float32")
    np.testing.assert_array_equal(to_numpy(corner_pool(x, direction)), brute_force_pool(x, direction))


@pytest.mark.multi_backend
def test_corner_pool_gradient_goes_to_each_running_maximum(rng):
    # Distinct values: every output's gradient goes to the one pixel it copies,
    # so d sum(top_pool(x)) / dx counts how many pixels above take each pixel.
    x = rng.permutation(30).reshape(1, 5, 6, 1).astype("float32")
    _, (grad,) = value_and_grads(lambda t: keras.ops.sum(corner_pool(t, "top")), x)
    expected = np.zeros_like(x)
    for i in range(5):
        for j in range(6):
            expected[0, i + np.argmax(x[0, i:, j, 0]), j, 0] += 1
    np.testing.assert_array_equal(grad, expected)


@pytest.mark.multi_backend
def test_center_pool_matches_brute_force(rng):
    x = rng.normal(size=(2, 5, 7, 3)).astype("float32")
    np.testing.assert_allclose(to_numpy(center_pool(x)), brute_force_center(x), rtol=1e-6)
    y = rng.normal(size=(2, 5, 7, 3)).astype("float32")
    expected = x.max(axis=1, keepdims=True) + y.max(axis=2, keepdims=True)
    np.testing.assert_allclose(to_numpy(center_pool(x, y)), expected, rtol=1e-6)


# Not multi_backend: like the export tests, these run in the suite's TensorFlow pass.
def test_dynamic_size_in_a_tensorflow_graph(rng):
    import tensorflow as tf

    pool = tf.function(
        lambda t: corner_pool(t, "left"),
        input_signature=[tf.TensorSpec((None, None, None, 2), tf.float32)],
    )
    for shape in [(1, 3, 9, 2), (2, 6, 1, 2), (1, 4, 16, 2)]:
        x = rng.normal(size=shape).astype("float32")
        np.testing.assert_array_equal(pool(x).numpy(), brute_force_pool(x, "left"))


def test_corner_pool_converts_to_builtin_tflite(rng):
    import tensorflow as tf

    pool = tf.function(
        lambda t: corner_pool(t, "top") + corner_pool(t, "right"),
        input_signature=[tf.TensorSpec((1, 6, 5, 2), tf.float32)],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([pool.get_concrete_function()], pool)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    x = rng.normal(size=(1, 6, 5, 2)).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(out, brute_force_pool(x, "top") + brute_force_pool(x, "right"))


def set_identity_convolutions(layer):
    """Every convolution copies its input channel-wise (a centred Kronecker delta)."""
    for sublayer in layer._flatten_layers(include_self=False):
        if isinstance(sublayer, keras.layers.Conv2D):
            kh, kw, cin, cout = sublayer.kernel.shape
            kernel = np.zeros((kh, kw, cin, cout), "float32")
            kernel[kh // 2, kw // 2] = np.eye(cin, cout)
            sublayer.kernel.assign(kernel)


@pytest.mark.multi_backend
@pytest.mark.parametrize("corner", ["top_left", "bottom_right"])
def test_cascade_corner_pooling_with_identity_convolutions(corner, rng):
    layer = CascadeCornerPooling(corner, channels=2, pool_channels=2)
    layer.build((None, 6, 7, 2))
    set_identity_convolutions(layer)
    x = rng.uniform(0, 1, size=(1, 6, 7, 2)).astype("float32")
    c = BN_SCALE
    vertical, horizontal = ("top", "left") if corner == "top_left" else ("bottom", "right")
    # look_conv/p_conv1 branches are relu(c x) = c x for x >= 0.
    pool1 = brute_force_pool(c * x + brute_force_pool(c * x, horizontal), vertical)
    pool2 = brute_force_pool(c * x + brute_force_pool(c * x, vertical), horizontal)
    merged = np.maximum(c * (pool1 + pool2) + c * x, 0)
    expected = np.maximum(c * merged, 0)
    np.testing.assert_allclose(to_numpy(layer(x, training=False)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.multi_backend
def test_center_pooling_with_identity_convolutions(rng):
    layer = CenterPooling(channels=2, pool_channels=2)
    layer.build((None, 5, 6, 2))
    set_identity_convolutions(layer)
    x = rng.uniform(0, 1, size=(2, 5, 6, 2)).astype("float32")
    c = BN_SCALE
    merged = np.maximum(c * brute_force_center(c * x) + c * x, 0)
    np.testing.assert_allclose(to_numpy(layer(x, training=False)), np.maximum(c * merged, 0), rtol=1e-5, atol=1e-6)


class TestPoolingLayers(TestCase):
    @pytest.mark.multi_backend
    def test_corner_pooling_layer(self, rng, tmp_path):
        x = rng.normal(size=(2, 5, 6, 3)).astype("float32")
        output = self.run_layer_test(CornerPooling("right"), x, (2, 5, 6, 3), tmp_path=tmp_path)
        np.testing.assert_array_equal(to_numpy(output), brute_force_pool(x, "right"))

    @pytest.mark.multi_backend
    def test_cascade_corner_pooling_layer(self, rng, tmp_path):
        x = rng.normal(size=(1, 8, 8, 8)).astype("float32")
        layer = CascadeCornerPooling("bottom_right", channels=8, pool_channels=4)
        self.run_layer_test(layer, x, (1, 8, 8, 8), tmp_path=tmp_path, atol=1e-5)
        # 4 conv-BN-ReLU branches, 2 look convs, p_conv1 + p_bn1, conv1 + bn1, conv2 (conv-BN).
        assert len(layer.trainable_weights) == 4 * 3 + 2 + 3 + 3 + 3

    @pytest.mark.multi_backend
    def test_center_pooling_layer(self, rng, tmp_path):
        x = rng.normal(size=(1, 8, 8, 8)).astype("float32")
        self.run_layer_test(CenterPooling(channels=8, pool_channels=4), x, (1, 8, 8, 8), tmp_path=tmp_path, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`direction` must be one of"):
        CornerPooling("up")
    with pytest.raises(ValueError, match="`direction` must be one of"):
        corner_pool(np.zeros((1, 2, 2, 1)), "down")
    with pytest.raises(ValueError, match="`corner` must be one of"):
        CascadeCornerPooling("top_right")
    with pytest.raises(ValueError, match="`pool_channels` must be a positive int"):
        CenterPooling(pool_channels=0)
    with pytest.raises(ValueError, match=r"takes inputs of `channels` \(8\) channels"):
        CenterPooling(channels=8)(np.zeros((1, 4, 4, 3), "float32"))
    with pytest.raises(ValueError, match="`axis` 3 is out of range"):
        cumulative_max(np.zeros((2, 2)), axis=3)
