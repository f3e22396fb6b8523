"""`deform_conv2d` against the official DCNv2 (torchvision) fixtures and hand cases."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_centernet as kc
from tests.test_case import to_numpy
from tests.test_case import value_and_grads

pytestmark = pytest.mark.multi_backend


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def hwio(a):
    return np.ascontiguousarray(a.transpose(2, 3, 1, 0))


def load_case(fixture_path, case):
    data = np.load(fixture_path("dcn", "dcn_cases.npz"))
    get = lambda name: data[f"{case}_{name}"]  # noqa: E731
    return {
        "x": nhwc(get("x")),
        "offsets": nhwc(get("offset")),
        "mask": nhwc(get("mask")),
        "kernel": hwio(get("weight")),
        "bias": get("bias"),
        "strides": int(get("stride")[0]),
        "padding": int(get("padding")[0]),
        "dilation": int(get("dilation")[0]),
        "g": nhwc(get("g")),
        "out": nhwc(get("out")),
        "d_x": nhwc(get("d_x")),
        "d_offsets": nhwc(get("d_offset")),
        "d_mask": nhwc(get("d_mask")),
        "d_kernel": hwio(get("d_weight")),
        "d_bias": get("d_bias"),
    }


def assert_close_to_reference(actual, reference, name):
    # 2e-6 relative to max(1, max|ref|): a few float32 steps of the largest value.
    scale = max(1.0, float(np.abs(reference).max()))
    error = float(np.abs(np.asarray(actual) - reference).max()) / scale
    assert error <= 2e-6, f"{name}: relative error {error:.3g} > 2e-6"


@pytest.mark.parametrize(
    "implementation, chunk_rows",
    # "auto" is the XLA version with its own gradient under JAX, the reference elsewhere.
    [("reference", None), ("reference", 5), ("auto", None)],
)
@pytest.mark.parametrize("case", ["A", "B", "C", "D"])
def test_forward_and_gradients_match_official(fixture_path, case, implementation, chunk_rows):
    c = load_case(fixture_path, case)
    g = c["g"]

    def loss(x, offsets, mask, kernel, bias):
        out = kc.ops.deform_conv2d(
            x, offsets, mask, kernel, bias, strides=c["strides"],
            padding=c["padding"], dilation=c["dilation"], chunk_rows=chunk_rows,
            implementation=implementation,
        )
        return ops.sum(out * ops.convert_to_tensor(g))

    out = kc.ops.deform_conv2d(
        c["x"], c["offsets"], c["mask"], c["kernel"], c["bias"],
        strides=c["strides"], padding=c["padding"], dilation=c["dilation"],
        chunk_rows=chunk_rows, implementation=implementation,
    )
    assert_close_to_reference(to_numpy(out), c["out"], f"{case} out")
    _, grads = value_and_grads(
        loss, c["x"], c["offsets"], c["mask"], c["kernel"], c["bias"]
    )
    for name, grad in zip(["d_x", "d_offsets", "d_mask", "d_kernel", "d_bias"], grads):
        assert_close_to_reference(grad, c[name], f"{case} {name}")


def test_zero_offsets_unit_mask_is_plain_convolution(rng):
    x = rng.normal(size=(2, 9, 7, 5)).astype("float32")
    kernel = rng.normal(size=(3, 3, 5, 4)).astype("float32")
    bias = rng.normal(size=(4,)).astype("float32")
    offsets = np.zeros((2, 9, 7, 18), "float32")
    mask = np.ones((2, 9, 7, 9), "float32")
    out = kc.ops.deform_conv2d(x, offsets, mask, kernel, bias)
    # Independent reference: zero-padded correlation in numpy.
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    expected = np.zeros((2, 9, 7, 4), "float64")
    for i in range(3):
        for j in range(3):
            expected += padded[:, i:i + 9, j:j + 7, :] @ kernel[i, j]
    np.testing.assert_allclose(to_numpy(out), expected + bias, atol=1e-4)


def test_integer_offset_shifts_the_sample_and_outside_is_zero():
    # A 1x1 kernel on a ramp image: offset (dy, dx) = (1, 2) reads x[h+1, w+2].
    height, width = 4, 5
    x = np.arange(height * width, dtype="float32").reshape(1, height, width, 1) + 1.0
    kernel = np.ones((1, 1, 1, 1), "float32")
    offsets = np.tile(np.array([1.0, 2.0], "float32"), (1, height, width, 1))
    mask = np.full((1, height, width, 1), 0.5, "float32")
    out = to_numpy(
        kc.ops.deform_conv2d(x, offsets, mask, kernel, padding=0)
    )[0, ..., 0]
    expected = np.zeros((height, width), "float32")
    for h in range(height):
        for w in range(width):
            if h + 1 < height and w + 2 < width:
                expected[h, w] = 0.5 * x[0, h + 1, w + 2, 0]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_half_pixel_offset_at_border_interpolates_with_zero():
    # Sample at h = -0.5: inside (-1, H), so bilinear between the zero pad row and row 0.
    x = np.full((1, 3, 3, 1), 4.0, "float32")
    kernel = np.ones((1, 1, 1, 1), "float32")
    offsets = np.zeros((1, 3, 3, 2), "float32")
    offsets[..., 0] = -0.5
    mask = np.ones((1, 3, 3, 1), "float32")
    out = to_numpy(kc.ops.deform_conv2d(x, offsets, mask, kernel, padding=0))[0, ..., 0]
    np.testing.assert_allclose(out[0], [2.0, 2.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(out[1:], 4.0, atol=1e-6)


def test_jit_compiled_function_matches_eager(fixture_path):
    c = load_case(fixture_path, "A")
    backend = keras.backend.backend()
    fn = lambda *a: kc.ops.deform_conv2d(*a, strides=1, padding=1)  # noqa: E731
    if backend == "jax":
        import jax

        compiled = jax.jit(fn)
    elif backend == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(fn, jit_compile=True)
    else:
        import torch

        compiled = torch.compile(fn, backend="eager")
    out = compiled(c["x"], c["offsets"], c["mask"], c["kernel"], c["bias"])
    assert_close_to_reference(to_numpy(out), c["out"], "jit out")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"x": np.zeros((8, 8, 4))}, "`x` must have rank 4"),
        ({"kernel": np.zeros((3, 3, 5, 6))}, "expects 5"),
        ({"kernel": np.zeros((2, 2, 4, 6))}, "odd"),
        ({"offsets": np.zeros((1, 8, 8, 9))}, "`offsets` must have shape"),
        ({"mask": np.zeros((1, 8, 8, 18))}, "`mask` must have shape"),
        ({"bias": np.zeros((5,))}, "`bias` must have shape"),
        ({"strides": 0}, "`strides` must be >= 1"),
    ],
)
def test_bad_input_names_the_argument(kwargs, message):
    args = {
        "x": np.zeros((1, 8, 8, 4), "float32"),
        "offsets": np.zeros((1, 8, 8, 18), "float32"),
        "mask": np.zeros((1, 8, 8, 9), "float32"),
        "kernel": np.zeros((3, 3, 4, 6), "float32"),
        "bias": np.zeros((6,), "float32"),
    }
    args.update({k: np.asarray(v, "float32") if isinstance(v, np.ndarray) else v
                 for k, v in kwargs.items()})
    with pytest.raises(ValueError, match=message):
        kc.ops.deform_conv2d(**args)
