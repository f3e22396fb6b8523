"""`apply_heads`: the heads of one map fused into two convolutions give each head's own values and gradients."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_centernet.layers.prediction_head import PredictionHead
from keras_centernet.layers.prediction_head import apply_heads
from tests.test_case import to_numpy
from tests.test_case import value_and_grads


def numpy_head(features, hidden_kernel, hidden_bias, output_kernel, output_bias, distance_scale=None):
    """One head by hand: 3x3 'same' convolution + bias, ReLU, 1x1 convolution + bias (float64)."""
    x = np.pad(features.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = features.shape[1:3]
    hidden = np.zeros(features.shape[:3] + (hidden_kernel.shape[-1],))
    for dy in range(3):
        for dx in range(3):
            hidden += np.einsum("bhwc,cd->bhwd", x[:, dy:dy + height, dx:dx + width], hidden_kernel[dy, dx])
    hidden = np.maximum(hidden + hidden_bias, 0.0)
    output = np.einsum("bhwc,cd->bhwd", hidden, output_kernel[0, 0]) + output_bias
    return output if distance_scale is None else np.maximum(output, 0.0) * distance_scale


def three_heads(head_channels=6):
    return {
        "heatmap": PredictionHead(3, head_channels=head_channels, bias_init=-2.19, name="heatmap"),
        "size": PredictionHead(2, head_channels=head_channels, kernel_stddev=0.3, name="size"),
        "ltrb": PredictionHead(4, head_channels=head_channels, distance_scale=16.0, name="ltrb"),
    }


def build(heads, channels):
    for head in heads.values():
        head.build((None, None, None, channels))
    return heads


@pytest.mark.multi_backend
def test_fused_heads_give_each_heads_values(rng):
    heads = build(three_heads(), channels=5)
    # Random biases too: the initial ones are constants that would hide a mixed-up bias.
    for head in heads.values():
        for conv in (head.hidden, head.output_conv):
            conv.bias.assign(rng.normal(size=conv.bias.shape).astype("float32"))
    features = rng.normal(size=(2, 7, 6, 5)).astype("float32")
    fused = to_numpy(apply_heads(heads, features))
    assert list(fused) == ["heatmap", "size", "ltrb"]
    for name, head in heads.items():
        weights = [w.astype(np.float64) for w in to_numpy(head.weights)]
        expected = numpy_head(features, *weights, distance_scale=head.distance_scale)
        assert fused[name].shape == expected.shape
        np.testing.assert_allclose(fused[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(fused[name], to_numpy(head(features)), rtol=1e-5, atol=1e-5)
    # The relu of the distance head acts: some outputs are clipped at 0.
    assert (fused["ltrb"] == 0).any() and (fused["ltrb"] > 0).any()


@pytest.mark.multi_backend
def test_fused_heads_give_each_heads_gradients(rng):
    heads = build(three_heads(head_channels=4), channels=3)
    variables = [w for head in heads.values() for w in head.weights]
    features = rng.normal(size=(2, 5, 5, 3)).astype("float32")
    cotangents = {name: rng.normal(size=(2, 5, 5, head.channels)).astype("float32")
                  for name, head in heads.items()}

    def loss(run):
        def weighted(features, *values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                outputs = run(features)
            return sum(ops.sum(outputs[name] * ops.convert_to_tensor(cotangents[name])) for name in heads)
        return weighted

    values = [to_numpy(v) for v in variables]
    fused_value, fused_grads = value_and_grads(loss(lambda x: apply_heads(heads, x)), features, *values)
    value, grads = value_and_grads(
        loss(lambda x: {name: head(x) for name, head in heads.items()}), features, *values)
    np.testing.assert_allclose(fused_value, value, rtol=1e-5)
    assert len(fused_grads) == len(grads) == 1 + 4 * len(heads)
    for index, (fused_grad, grad) in enumerate(zip(fused_grads, grads)):
        assert fused_grad.shape == grad.shape
        np.testing.assert_allclose(fused_grad, grad, rtol=1e-4, atol=1e-5, err_msg=f"argument {index}")
        assert np.abs(grad).max() > 0, f"argument {index} has no gradient to compare"


def test_fused_heads_in_mixed_precision_cast_like_each_head(rng):
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    heads = build(three_heads(head_channels=8), channels=4)
    features = rng.normal(size=(1, 6, 6, 4)).astype("float32")  # cast to bfloat16 as a head's call does
    fused = apply_heads(heads, features)
    for name, head in heads.items():
        assert keras.backend.standardize_dtype(fused[name].dtype) == "bfloat16"
        np.testing.assert_allclose(to_numpy(fused[name]).astype("float32"),
                                   to_numpy(head(features)).astype("float32"), rtol=2e-2, atol=2e-2)


def test_heads_that_cannot_be_fused_are_called_one_by_one(rng):
    features = rng.normal(size=(1, 4, 4, 3)).astype("float32")
    # Not built yet (the symbolic pass that builds a model): each head's call builds it.
    heads = three_heads()
    outputs = apply_heads(heads, features)
    assert all(head.built for head in heads.values())
    assert [tuple(outputs[name].shape) for name in heads] == [(1, 4, 4, 3), (1, 4, 4, 2), (1, 4, 4, 4)]

    class Scaled(PredictionHead):  # a subclass may change `call`: never bypassed
        def call(self, features):
            return super().call(features) * 0.0

    mixed = build({"heatmap": PredictionHead(3, head_channels=6), "other": Scaled(2, head_channels=6)}, 3)
    np.testing.assert_array_equal(to_numpy(apply_heads(mixed, features)["other"]), np.zeros((1, 4, 4, 2)))


def test_models_train_with_their_heads_fused(rng):
    """In training a CenterNet's outputs are its heads' own values on the backbone's map (to rounding)."""
    import keras_centernet as kc
    from keras_centernet.backbones import ResNetBackbone
    from keras_centernet.necks import UpConvNeck

    model = kc.CenterNet(ResNetBackbone(depth=18, width=4), neck=UpConvNeck(filters=(8, 8, 8), use_dcn=False),
                         num_classes=3, head_channels=8)
    images = rng.uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
    features = model.neck(model.backbone(model.preprocessor(images), training=True), training=True)
    outputs = to_numpy(model.forward_stacks(images, training=True, all_stacks=True))
    assert len(outputs) == 1
    for name, head in model.stack_heads(0).items():
        np.testing.assert_allclose(outputs[0][name], to_numpy(head(features)), rtol=1e-5, atol=1e-5)
