"""The fused Pallas `deform_conv2d` (JAX only) against the official DCNv2 fixtures.

Off GPU the kernels run in the Pallas interpreter, so these tests check the
kernels' indexing and arithmetic on the CPU; the GPU run of
`benchmarks/deform_conv.py` repeats the comparisons on the compiled kernels
(its "Agreement of `fused` with the reference" table).
"""

import keras
import numpy as np
import pytest

import keras_centernet as kc
from tests.ops.test_deform_conv import assert_close_to_reference
from tests.ops.test_deform_conv import load_case

pytestmark = [
    pytest.mark.jax,
    pytest.mark.skipif(
        keras.backend.backend() != "jax",
        reason="the fused deformable convolution is written in Pallas (JAX backend only)",
    ),
]

# Small tiles, so that the test shapes span several pixel tiles, channel
# chunks, output-channel tiles and kernel-gradient strips.
SMALL_TILES = dict(block_m=16, block_c=16, block_n=16, bwd_block_m=32, bwd_programs=64)


@pytest.fixture
def fused():
    from keras_centernet.ops import deform_conv_jax

    return deform_conv_jax


def _value_and_grads(fn, args, g):
    import jax
    import jax.numpy as jnp

    def loss(*a):
        return jnp.sum(fn(*a).astype(jnp.float32) * g)

    out = jax.jit(fn)(*args)
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)
    return np.asarray(out), [np.asarray(a) for a in grads]


@pytest.mark.parametrize("case", ["A", "B", "C", "D"])
def test_forward_and_gradients_match_official(fixture_path, fused, case):
    c = load_case(fixture_path, case)
    config = fused.DEFAULT_CONFIG._replace(**SMALL_TILES)

    def fn(x, offsets, mask, kernel, bias):
        return fused.deform_conv2d(
            x, offsets, mask, kernel, bias, strides=c["strides"],
            padding=c["padding"], dilation=c["dilation"], config=config,
            interpret=True,
        )

    out, grads = _value_and_grads(
        fn, (c["x"], c["offsets"], c["mask"], c["kernel"], c["bias"]), c["g"]
    )
    assert_close_to_reference(out, c["out"], f"{case} out")
    for name, grad in zip(["d_x", "d_offsets", "d_mask", "d_kernel", "d_bias"], grads):
        assert_close_to_reference(grad, c[name], f"{case} {name}")


def _random_inputs(rng, batch, height, width, cin, cout, out_h, out_w, scale=2.0):
    return (
        rng.normal(size=(batch, height, width, cin)).astype("float32"),
        rng.normal(0.0, scale, size=(batch, out_h, out_w, 18)).astype("float32"),
        rng.uniform(0.0, 1.0, size=(batch, out_h, out_w, 9)).astype("float32"),
        (rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin)).astype("float32"),
        rng.normal(size=(cout,)).astype("float32"),
    )


@pytest.mark.parametrize(
    "strides, dilation, cin, cout",
    [(1, 2, 32, 48), (2, 1, 20, 32)],
)
def test_matches_reference_values_and_gradients(rng, fused, strides, dilation, cin, cout):
    # Several channel chunks (cin 32), padded channels (20, 48), a dilated
    # and a strided geometry; the reference is the keras.ops version.
    height, width = 11, 10
    out_h = (height + 2 - (2 * dilation + 1)) // strides + 1
    out_w = (width + 2 - (2 * dilation + 1)) // strides + 1
    args = _random_inputs(rng, 2, height, width, cin, cout, out_h, out_w)
    g = rng.normal(size=(2, out_h, out_w, cout)).astype("float32")
    config = fused.DEFAULT_CONFIG._replace(**SMALL_TILES)
    kwargs = dict(strides=strides, padding=1, dilation=dilation)
    out, grads = _value_and_grads(
        lambda *a: fused.deform_conv2d(*a, config=config, interpret=True, **kwargs),
        args, g,
    )
    ref_out, ref_grads = _value_and_grads(
        lambda *a: kc.ops.deform_conv2d(*a, implementation="reference", **kwargs),
        args, g,
    )
    assert_close_to_reference(out, ref_out, "out")
    for name, grad, ref in zip(["x", "offsets", "mask", "kernel", "bias"], grads, ref_grads):
        assert_close_to_reference(grad, ref, f"d_{name}")


def test_bfloat16_compute_is_close_to_float32(rng, fused):
    # Mixed precision: bf16 input and kernel, float32 offsets and mask; the
    # samples stay float32 and only the products run in bf16. The truth is
    # the float32 reference on the same (bf16-rounded) values.
    import jax.numpy as jnp

    x, offsets, mask, kernel, bias = _random_inputs(rng, 2, 8, 8, 16, 16, 8, 8)
    x = jnp.asarray(x, jnp.bfloat16)
    kernel = jnp.asarray(kernel, jnp.bfloat16)
    g = rng.normal(size=(2, 8, 8, 16)).astype("float32")
    config = fused.DEFAULT_CONFIG._replace(**SMALL_TILES)
    out, grads = _value_and_grads(
        lambda *a: fused.deform_conv2d(*a, config=config, interpret=True),
        (x, offsets, mask, kernel, bias), g,
    )
    ref_out, ref_grads = _value_and_grads(
        lambda *a: kc.ops.deform_conv2d(*a, implementation="reference"),
        (x.astype(jnp.float32), offsets, mask, kernel.astype(jnp.float32), bias), g,
    )
    assert out.dtype == jnp.bfloat16
    assert grads[0].dtype == jnp.bfloat16 and grads[3].dtype == jnp.bfloat16
    for name, a, b in zip(
        ["out", "x", "offsets", "mask", "kernel", "bias"],
        [out, *grads], [ref_out, *ref_grads],
    ):
        a = np.asarray(a, "float32")
        error = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert error < 1e-2, f"{name}: relative error {error:.3g}"


def test_dispatch_defaults_to_xla_and_each_implementation_is_selectable(
    fixture_path, monkeypatch
):
    from keras_centernet.ops import deform_conv_jax
    from keras_centernet.ops import deform_conv_xla

    c = load_case(fixture_path, "A")
    args = (c["x"], c["offsets"], c["mask"], c["kernel"], c["bias"])
    calls = []
    for name, module in (("fused", deform_conv_jax), ("xla", deform_conv_xla)):
        def spy(*a, _original=module.deform_conv2d, _name=name, **k):
            calls.append(_name)
            return _original(*a, **k)

        monkeypatch.setattr(module, "deform_conv2d", spy)
    kc.ops.deform_conv2d(*args)
    kc.ops.deform_conv2d(*args, implementation="auto")
    assert calls == ["xla", "xla"], "under JAX the default must be the XLA version"
    monkeypatch.setenv("KERAS_CENTERNET_DCN", "reference")
    kc.ops.deform_conv2d(*args)
    assert calls == ["xla", "xla"], "KERAS_CENTERNET_DCN=reference ran another version"
    monkeypatch.setenv("KERAS_CENTERNET_DCN", "fused")
    kc.ops.deform_conv2d(*args)
    assert calls[-1] == "fused", "KERAS_CENTERNET_DCN=fused did not run the fused kernels"
    monkeypatch.delenv("KERAS_CENTERNET_DCN")
    out = kc.ops.deform_conv2d(*args, implementation="fused")
    assert calls[-1] == "fused", "implementation='fused' did not run the fused kernels"
    assert_close_to_reference(np.asarray(out), c["out"], "fused out")
    with pytest.raises(ValueError, match="must be one of 'auto', 'reference', 'xla', 'fused'"):
        kc.ops.deform_conv2d(*args, implementation="triton")
