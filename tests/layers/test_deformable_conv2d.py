"""`DeformableConv2D` = the official `DCN` module (fixture case E), round trips, policies."""

import keras
import numpy as np
import pytest

import keras_centernet as kc
from tests.test_case import TestCase
from tests.test_case import to_numpy

pytestmark = pytest.mark.multi_backend


def official_module_case(fixture_path):
    data = np.load(fixture_path("dcn", "dcn_cases.npz"))
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    hwio = lambda a: np.ascontiguousarray(a.transpose(2, 3, 1, 0))  # noqa: E731
    weights = {
        "kernel": hwio(data["E_weight"]),
        "bias": data["E_bias"],
        "offset_kernel": hwio(data["E_conv_offset_mask_weight"]),
        "offset_bias": data["E_conv_offset_mask_bias"],
    }
    return nhwc(data["E_x"]), weights, nhwc(data["E_conv_offset_mask_out"]), nhwc(data["E_out"])


def load_weights(layer, weights):
    layer.kernel.assign(weights["kernel"])
    layer.bias.assign(weights["bias"])
    layer.offset_kernel.assign(weights["offset_kernel"])
    layer.offset_bias.assign(weights["offset_bias"])


class TestDeformableConv2D(TestCase):
    def test_matches_official_dcn_module(self, fixture_path):
        x, weights, raw_offset_mask, expected = official_module_case(fixture_path)
        layer = kc.layers.DeformableConv2D(16)
        layer.build(x.shape)
        load_weights(layer, weights)
        offsets, mask = layer.offsets_and_mask(x)
        # The official chunk: offsets = raw[:18] interleaved, mask = sigmoid(raw[18:]).
        np.testing.assert_allclose(to_numpy(offsets), raw_offset_mask[..., :18], atol=2e-6)
        sigmoid = 1.0 / (1.0 + np.exp(-raw_offset_mask[..., 18:].astype("float64")))
        np.testing.assert_allclose(to_numpy(mask), sigmoid, atol=2e-6)
        out = to_numpy(layer(x))
        scale = max(1.0, float(np.abs(expected).max()))
        assert np.abs(out - expected).max() / scale <= 2e-6

    def test_fresh_layer_is_a_half_masked_plain_convolution(self, rng):
        x = rng.normal(size=(1, 6, 6, 3)).astype("float32")
        layer = kc.layers.DeformableConv2D(2)
        out = to_numpy(layer(x))
        kernel = to_numpy(layer.kernel)
        padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
        expected = sum(
            padded[:, i:i + 6, j:j + 6, :] @ kernel[i, j] for i in range(3) for j in range(3)
        )
        np.testing.assert_allclose(out, 0.5 * expected, atol=1e-5)

    def test_layer_round_trips(self, rng, tmp_path):
        x = rng.normal(size=(2, 8, 10, 3)).astype("float32")
        layer = kc.layers.DeformableConv2D(
            4, strides=2, offset_initializer=keras.initializers.RandomNormal(stddev=0.5)
        )
        self.run_layer_test(layer, x, expected_output_shape=(2, 4, 5, 4), tmp_path=tmp_path)

    def test_chunked_rows_equal_unchunked(self, rng):
        x = rng.normal(size=(2, 12, 9, 4)).astype("float32")
        init = keras.initializers.RandomNormal(stddev=1.0, seed=1)
        whole = kc.layers.DeformableConv2D(5, offset_initializer=init)
        chunked = kc.layers.DeformableConv2D(5, offset_initializer=init, chunk_rows=5)
        y = whole(x)
        chunked.build(x.shape)
        chunked.set_weights(whole.get_weights())
        np.testing.assert_allclose(to_numpy(chunked(x)), to_numpy(y), atol=1e-5)

    @pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
    def test_mixed_precision_keeps_offsets_in_float32(self, policy, rng):
        x = rng.normal(size=(2, 8, 8, 4)).astype("float32")
        init = keras.initializers.RandomNormal(stddev=0.5, seed=2)
        reference = kc.layers.DeformableConv2D(6, offset_initializer=init)
        expected = to_numpy(reference(x))
        layer = kc.layers.DeformableConv2D(6, offset_initializer=init, dtype=policy)
        layer.build(x.shape)
        layer.set_weights(reference.get_weights())
        out = layer(x)
        assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
        offsets, mask = layer.offsets_and_mask(x)
        assert keras.backend.standardize_dtype(offsets.dtype) == "float32"
        assert keras.backend.standardize_dtype(mask.dtype) == "float32"
        assert layer.offset_kernel.dtype == "float32"
        tolerance = 0.05 if policy == "mixed_bfloat16" else 5e-3
        scale = np.abs(expected).max()
        assert np.abs(to_numpy(out).astype("float32") - expected).max() <= tolerance * scale

    def test_trains_in_a_compiled_fit(self, rng):
        x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
        y = rng.normal(size=(8, 8, 8, 2)).astype("float32")
        inputs = keras.Input((8, 8, 3))
        model = keras.Model(inputs, kc.layers.DeformableConv2D(2)(inputs))
        # Under torch, Keras' jit_compile is a full inductor build (a C++ toolchain
        # run, minutes on two cores, and it can stall inside pytest-xdist workers);
        # torch.compile's tracing of the op is covered by
        # tests/ops/test_deform_conv.py::test_jit_compiled_function_matches_eager.
        jit_compile = keras.backend.backend() != "torch"
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=jit_compile
        )
        before = [to_numpy(w).copy() for w in model.weights]
        history = model.fit(x, y, epochs=3, batch_size=4, verbose=0)
        losses = history.history["loss"]
        assert np.isfinite(losses).all() and losses[-1] < losses[0]
        after = [to_numpy(w) for w in model.weights]
        # Every weight, the zero-initialised offset branch included, gets a gradient.
        assert all(np.abs(a - b).max() > 0 for a, b in zip(after, before))

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"filters": 0}, "`filters`"),
            ({"filters": 4, "kernel_size": 2}, "`kernel_size` must be odd"),
            ({"filters": 4, "strides": 0}, "`strides` must be >= 1"),
            ({"filters": 4, "chunk_rows": 0}, "`chunk_rows`"),
        ],
    )
    def test_bad_arguments(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            kc.layers.DeformableConv2D(**kwargs)

    def test_bad_input_rank(self):
        layer = kc.layers.DeformableConv2D(4)
        with pytest.raises(ValueError, match="rank 4"):
            layer.build((8, 8, 3))
