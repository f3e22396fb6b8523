"""`deform_conv2d(implementation="xla")`: JAX's gather/scatter with a hand-written gradient.

The gradient is written by hand (`jax.custom_vjp`), so every gradient is checked
against the official DCNv2 fixtures and against the automatic gradient of the
`keras.ops` reference, in each of its options.
"""

import keras
import numpy as np
import pytest

from tests.ops.test_deform_conv import assert_close_to_reference
from tests.ops.test_deform_conv import load_case
from tests.ops.test_deform_conv_jax import _random_inputs
from tests.ops.test_deform_conv_jax import _value_and_grads

pytestmark = [
    pytest.mark.jax,
    pytest.mark.skipif(
        keras.backend.backend() != "jax",
        reason="implementation='xla' uses jax.custom_vjp (JAX backend only)",
    ),
]

GRADIENT_NAMES = ["x", "offsets", "mask", "kernel", "bias"]


@pytest.fixture
def xla():
    from keras_centernet.ops import deform_conv_xla

    return deform_conv_xla


@pytest.mark.parametrize(
    "keep_columns, gather_form, scatter_form, pad_barrier, terms_barrier, kernel_first",
    # The CPU's row gathers and the GPU's window gathers both run here, in
    # the column form and projected first (`KERNEL_FIRST`).
    [(False, "rows", "window", True, False, False), (True, "rows", "window", True, False, False),
     (False, "window", "window", True, False, False), (True, "window", "window", True, False, False),
     (False, "rows", "rows", True, False, False), (False, "rows", "sorted", True, False, False),
     (False, "rows", "sortedrows", True, False, False), (False, "window", "sorted", False, False, False),
     (False, "window", "sorted", True, True, False),
     (False, "rows", "window", True, False, True), (True, "window", "sorted", True, False, True),
     (False, "rows", "sortedrows", False, False, True)],
)
@pytest.mark.parametrize("case", ["A", "B", "C", "D"])
def test_forward_and_gradients_match_official(
    fixture_path, xla, monkeypatch, case, keep_columns, gather_form, scatter_form, pad_barrier,
    terms_barrier, kernel_first,
):
    monkeypatch.setattr(xla, "GATHER_FORM", gather_form)
    monkeypatch.setattr(xla, "SCATTER_FORM", scatter_form)
    monkeypatch.setattr(xla, "PAD_BARRIER", pad_barrier)
    monkeypatch.setattr(xla, "TERMS_BARRIER", terms_barrier)
    monkeypatch.setattr(xla, "KERNEL_FIRST", kernel_first)
    c = load_case(fixture_path, case)

    def fn(x, offsets, mask, kernel, bias):
        return xla.deform_conv2d(
            x, offsets, mask, kernel, bias, strides=c["strides"],
            padding=c["padding"], dilation=c["dilation"], keep_columns=keep_columns,
        )

    out, grads = _value_and_grads(
        fn, (c["x"], c["offsets"], c["mask"], c["kernel"], c["bias"]), c["g"]
    )
    assert_close_to_reference(out, c["out"], f"{case} out")
    for name, grad in zip(GRADIENT_NAMES, grads):
        assert_close_to_reference(grad, c[f"d_{name}"], f"{case} d_{name}")


@pytest.mark.parametrize("kernel_first", [False, True])
@pytest.mark.parametrize(
    "strides, dilation, padding, cin, cout",
    [(1, 1, 1, 8, 12), (1, 2, 2, 12, 8), (2, 1, 1, 10, 6), (1, 1, 0, 4, 4)],
)
def test_matches_reference_values_and_gradients(rng, xla, monkeypatch, strides, dilation, padding,
                                                cin, cout, kernel_first):
    # Offsets of 2.5 px (sd) put many samples across the border and outside
    # (-1, H) x (-1, W); the truth is the automatic gradient of the reference.
    monkeypatch.setattr(xla, "KERNEL_FIRST", kernel_first)
    height, width = 9, 11
    span = 2 * dilation + 1
    out_h = (height + 2 * padding - span) // strides + 1
    out_w = (width + 2 * padding - span) // strides + 1
    args = _random_inputs(rng, 2, height, width, cin, cout, out_h, out_w, scale=2.5)
    g = rng.normal(size=(2, out_h, out_w, cout)).astype("float32")
    kwargs = dict(strides=strides, padding=padding, dilation=dilation)
    ref_out, ref_grads = _value_and_grads(
        lambda *a: xla_reference(*a, **kwargs), args, g
    )
    out, grads = _value_and_grads(lambda *a: xla.deform_conv2d(*a, **kwargs), args, g)
    assert_close_to_reference(out, ref_out, "out")
    for name, grad, ref in zip(GRADIENT_NAMES, grads, ref_grads):
        assert_close_to_reference(grad, ref, f"d_{name}")


def xla_reference(*args, **kwargs):
    import keras_centernet as kc

    return kc.ops.deform_conv2d(*args, implementation="reference", **kwargs)


def test_hand_computed_gradients_of_one_sample(xla):
    # One pixel, a 1x1 kernel, one channel: y = m * bilinear(x, 0.25, 0.5) * k.
    # x = [[1, 2], [3, 4]]; sampling at (0.25, 0.5): the value is
    # 0.75 * (0.5 * 1 + 0.5 * 2) + 0.25 * (0.5 * 3 + 0.5 * 4) = 2.0.
    import jax
    import jax.numpy as jnp

    x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1)
    offsets = jnp.zeros((1, 2, 2, 2)).at[0, 0, 0].set(jnp.array([0.25, 0.5]))
    mask = jnp.full((1, 2, 2, 1), 0.5)
    kernel = jnp.full((1, 1, 1, 1), 3.0)

    def y00(x, offsets, mask, kernel):
        return xla.deform_conv2d(x, offsets, mask, kernel, padding=0)[0, 0, 0, 0]

    value = y00(x, offsets, mask, kernel)
    dx, doff, dmask, dkernel = jax.grad(y00, argnums=(0, 1, 2, 3))(x, offsets, mask, kernel)
    np.testing.assert_allclose(value, 0.5 * 2.0 * 3.0, rtol=1e-6)
    # d/dx: m * k * bilinear weights (0.375, 0.375, 0.125, 0.125).
    np.testing.assert_allclose(
        np.asarray(dx).ravel(), 1.5 * np.array([0.375, 0.375, 0.125, 0.125]), rtol=1e-6)
    # d/dy = m * k * (bottom row - top row at lx = 0.5) = 1.5 * (3.5 - 1.5);
    # d/dx = m * k * (right column - left column at ly = 0.25) = 1.5 * (2.5 - 1.5).
    np.testing.assert_allclose(np.asarray(doff)[0, 0, 0], [3.0, 1.5], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(doff)[0, 1:].ravel(), 0.0)
    np.testing.assert_allclose(np.asarray(dmask)[0, 0, 0, 0], 2.0 * 3.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dkernel).ravel(), [0.5 * 2.0], rtol=1e-6)


@pytest.mark.parametrize("scatter_dtype, backward, kernel_first",
                         [(None, "xla", False), ("input", "xla", False), (None, "pallas", False),
                          (None, "xla", True), ("input", "xla", True)])
def test_bfloat16_is_as_accurate_as_the_reference_in_bfloat16(rng, xla, monkeypatch, scatter_dtype,
                                                              backward, kernel_first):
    # Mixed precision: bf16 input, kernel and bias, float32 offsets and mask.
    # The truth is the float32 reference on the same (bf16-rounded) values;
    # the XLA version must be about as close to it as the reference run in
    # bf16 (both round the columns and the products to bf16, in different
    # orders of float32 sums); with `SCATTER_DTYPE = "input"` the input
    # gradient is summed in bf16, as the reference's automatic gradient does;
    # with `BACKWARD = "pallas"` (whose tiles take these shapes) the column
    # gradient, channel sums and kernel gradient come from the Pallas kernel;
    # with `KERNEL_FIRST` the projection `z` and its gradient are rounded to
    # bf16 instead of the columns and theirs.
    import jax.numpy as jnp

    from keras_centernet.ops import deform_conv_jax

    calls = []
    original = deform_conv_jax.backward_columns_call
    monkeypatch.setattr(deform_conv_jax, "backward_columns_call",
                        lambda *a: calls.append(a) or original(*a))
    monkeypatch.setattr(xla, "SCATTER_DTYPE", scatter_dtype)
    monkeypatch.setattr(xla, "BACKWARD", backward)
    monkeypatch.setattr(xla, "KERNEL_FIRST", kernel_first)
    x, offsets, mask, kernel, bias = _random_inputs(rng, 2, 8, 8, 16, 16, 8, 8)
    bf16 = [jnp.asarray(a, jnp.bfloat16) for a in (x, kernel, bias)]
    args = (bf16[0], offsets, mask, bf16[1], bf16[2])
    truth_args = (bf16[0].astype(jnp.float32), offsets, mask, bf16[1].astype(jnp.float32),
                  bf16[2].astype(jnp.float32))
    g = rng.normal(size=(2, 8, 8, 16)).astype("float32")
    out, grads = _value_and_grads(xla.deform_conv2d, args, g)
    ref_out, ref_grads = _value_and_grads(xla_reference, args, g)
    true_out, true_grads = _value_and_grads(xla_reference, truth_args, g)
    assert out.dtype == jnp.bfloat16
    assert [a.dtype for a in grads] == [a.dtype for a in ref_grads]
    assert bool(calls) == (backward == "pallas"), "BACKWARD did not pick the backward that ran"

    def error(a, b):
        a = np.asarray(a, "float32")
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    for name, a, r, t in zip(["out", *GRADIENT_NAMES], [out, *grads], [ref_out, *ref_grads],
                             [true_out, *true_grads]):
        ours, theirs = error(a, t), error(r, t)
        assert ours < 3e-2, f"{name}: relative error {ours:.3g} to float32"
        assert ours <= 2.0 * theirs + 2e-3, (
            f"{name}: relative error {ours:.3g} against the reference's {theirs:.3g} in bf16")


def test_pallas_forward_option_matches_reference(rng, xla, monkeypatch):
    # FORWARD = "pallas": the fused Pallas forward kernel (the interpreter
    # here), the hand-written backward. Its shape rules hold for 16 channels
    # and 2 x 8 x 8 output pixels (a multiple of its 64-pixel tile).
    from keras_centernet.ops import deform_conv_jax

    calls = []
    original = deform_conv_jax.forward_call
    monkeypatch.setattr(deform_conv_jax, "forward_call",
                        lambda *a: calls.append(a) or original(*a))
    monkeypatch.setattr(xla, "FORWARD", "pallas")
    args = _random_inputs(rng, 2, 8, 8, 16, 16, 8, 8, scale=2.5)
    g = rng.normal(size=(2, 8, 8, 16)).astype("float32")
    out, grads = _value_and_grads(xla.deform_conv2d, args, g)
    assert calls, "the Pallas forward did not run"
    ref_out, ref_grads = _value_and_grads(xla_reference, args, g)
    assert_close_to_reference(out, ref_out, "out")
    for name, grad, ref in zip(GRADIENT_NAMES, grads, ref_grads):
        assert_close_to_reference(grad, ref, f"d_{name}")


@pytest.mark.parametrize("forward", ["xla", "pallas"])
@pytest.mark.parametrize(
    "strides, dilation, padding, cin, cout",
    [(1, 1, 1, 32, 16), (2, 1, 1, 16, 32), (1, 2, 2, 16, 16)],
)
def test_pallas_backward_option_matches_reference(rng, xla, monkeypatch, forward, strides,
                                                  dilation, padding, cin, cout):
    # BACKWARD = "pallas": the column gradient, the channel sums and the
    # kernel gradient from one Pallas kernel (the interpreter here), the input
    # gradient from XLA's scatter. Small tiles, so that 2 x 8 x 8 output
    # pixels span several pixel tiles and kernel-gradient strips, and 32
    # input channels two channel chunks.
    from keras_centernet.ops import deform_conv_jax

    calls = []
    original = deform_conv_jax.backward_columns_call
    monkeypatch.setattr(deform_conv_jax, "backward_columns_call",
                        lambda *a: calls.append(a) or original(*a))
    monkeypatch.setattr(deform_conv_jax, "DEFAULT_CONFIG", deform_conv_jax.DEFAULT_CONFIG._replace(
        block_m=32, block_c=16, block_n=16, bwd_block_m=32, bwd_programs=64))
    monkeypatch.setattr(xla, "FORWARD", forward)
    monkeypatch.setattr(xla, "BACKWARD", "pallas")
    size = 8 * strides
    args = _random_inputs(rng, 2, size, size, cin, cout, 8, 8, scale=2.5)
    g = rng.normal(size=(2, 8, 8, cout)).astype("float32")

    def fn(x, offsets, mask, kernel, bias):
        return xla.deform_conv2d(x, offsets, mask, kernel, bias, strides=strides,
                                 padding=padding, dilation=dilation)

    def ref(x, offsets, mask, kernel, bias):
        return xla_reference(x, offsets, mask, kernel, bias, strides=strides,
                             padding=padding, dilation=dilation)

    out, grads = _value_and_grads(fn, args, g)
    assert calls, "the Pallas backward did not run"
    geom, cin_seen = calls[0][0], calls[0][1]
    assert (geom.m_pad, cin_seen) == (128, cin)
    ref_out, ref_grads = _value_and_grads(ref, args, g)
    assert_close_to_reference(out, ref_out, "out")
    for name, grad, expected in zip(GRADIENT_NAMES, grads, ref_grads):
        assert_close_to_reference(grad, expected, f"d_{name}")


def test_pallas_backward_falls_back_where_its_tiles_do_not_fit(rng, xla, monkeypatch):
    # 12 input channels (not a power of two) or 2 x 5 x 5 output pixels (not
    # a whole number of tiles): XLA's backward runs, with the same gradients.
    from keras_centernet.ops import deform_conv_jax

    def refuse(*args):
        raise AssertionError("the Pallas backward ran on operands it does not take")

    monkeypatch.setattr(deform_conv_jax, "backward_columns_call", refuse)
    monkeypatch.setattr(xla, "BACKWARD", "pallas")
    for cin, size in ((12, 8), (16, 5)):
        args = _random_inputs(rng, 2, size, size, cin, 16, size, size)
        g = rng.normal(size=(2, size, size, 16)).astype("float32")
        out, grads = _value_and_grads(xla.deform_conv2d, args, g)
        ref_out, ref_grads = _value_and_grads(xla_reference, args, g)
        assert_close_to_reference(out, ref_out, "out")
        for name, grad, expected in zip(GRADIENT_NAMES, grads, ref_grads):
            assert_close_to_reference(grad, expected, f"d_{name}")


@pytest.mark.parametrize(
    "scatter_form, scatter_dtype, expected",
    # (number of scatter-adds, their dtype, whether they are told that their
    # indices are sorted) in the gradient of bf16 inputs.
    [("window", None, (1, "float32", False)), ("rows", None, (4, "float32", False)),
     ("window", "input", (1, "bfloat16", False)), ("rows", "input", (4, "bfloat16", False)),
     ("sorted", None, (1, "float32", True)), ("sortedrows", "input", (1, "bfloat16", True))],
)
def test_scatter_options_set_the_input_gradients_scatter(
    rng, xla, monkeypatch, scatter_form, scatter_dtype, expected
):
    # The accuracy tests above pass whichever scatter runs; this one fails if
    # an option is ignored: one (2, 2, C) window scatter or one per
    # neighbour, in float32 or in the input's dtype, sorted or not.
    import jax
    import jax.numpy as jnp

    monkeypatch.setattr(xla, "SCATTER_FORM", scatter_form)
    monkeypatch.setattr(xla, "SCATTER_DTYPE", scatter_dtype)
    x, offsets, mask, kernel, _ = _random_inputs(rng, 1, 6, 6, 4, 4, 6, 6)
    x, kernel = jnp.asarray(x, jnp.bfloat16), jnp.asarray(kernel, jnp.bfloat16)

    def loss(x):
        return jnp.sum(xla.deform_conv2d(x, offsets, mask, kernel).astype(jnp.float32))

    jaxpr = jax.make_jaxpr(jax.grad(loss))(x)
    scatters, sorts = [], []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "sort":
                sorts.append(eqn)
            if eqn.primitive.name == "scatter-add":
                scatters.append(
                    (str(eqn.outvars[0].aval.dtype), eqn.params["indices_are_sorted"])
                )
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns"):
                    walk(inner)

    walk(jaxpr.jaxpr)
    assert (len(scatters), *set(scatters)) == (expected[0], expected[1:]), scatters
    # A scatter told its indices are sorted must get them from a sort.
    assert len(sorts) == int(expected[2])


@pytest.mark.parametrize(
    "backend, channels, expected",
    # A GPU sorts the windows, but (2, 2, 512) windows take XLA:GPU's sorted
    # scatter 30x longer than sorted rows (H100, profile_dcn.md); a CPU
    # keeps the unsorted windows.
    [("gpu", 64, "sorted"), ("gpu", 256, "sorted"), ("gpu", 512, "sortedrows"),
     ("cpu", 64, "window"), ("cpu", 512, "window")],
)
def test_default_scatter_form_by_platform_and_channels(xla, monkeypatch, backend, channels,
                                                       expected):
    import jax

    monkeypatch.setattr(xla, "SCATTER_FORM", None)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert xla._scatter_form(channels) == expected
    monkeypatch.setattr(xla, "SCATTER_FORM", "rows")
    assert xla._scatter_form(channels) == "rows"


@pytest.mark.parametrize("kernel_first", [False, True])
def test_kernel_first_option_picks_the_projected_passes(rng, xla, monkeypatch, kernel_first):
    # Projected first, no column tensor is formed: `_columns` must not run,
    # and both projected passes must; in the column form, the reverse.
    import jax

    calls = []
    for name in ("_columns", "_kernel_first_forward", "_kernel_first_backward"):
        original = getattr(xla, name)
        monkeypatch.setattr(xla, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    monkeypatch.setattr(xla, "KERNEL_FIRST", kernel_first)
    x, offsets, mask, kernel, _ = _random_inputs(rng, 1, 5, 5, 6, 3, 5, 5)
    jax.grad(lambda x: xla.deform_conv2d(x, offsets, mask, kernel).sum())(x)
    if kernel_first:
        assert sorted(set(calls)) == ["_kernel_first_backward", "_kernel_first_forward"]
    else:
        assert set(calls) == {"_columns"}


@pytest.mark.parametrize(
    "size, cin, cout, forward_alone, differentiated",
    # DLA-34's and ResNet-18-DCN's shapes at 512 px: a forward alone projects
    # first wherever z (padded input pixels x K x Cout) is smaller than the
    # columns (output pixels x K x Cin), a differentiated one where z is at
    # most a third of them (H100 measurements, profile_dcn.md section 11).
    [(128, 64, 64, False, False), (64, 128, 128, False, False), (64, 128, 64, True, False),
     (32, 256, 128, True, False), (32, 256, 64, True, True), (16, 512, 256, True, False)],
)
def test_kernel_first_by_size_of_z_against_the_columns(xla, monkeypatch, size, cin, cout,
                                                       forward_alone, differentiated):
    geom = xla.Geometry(32, size, size, size, size, 3, 3, (1, 1), (1, 1), (1, 1), 32 * size * size)
    monkeypatch.setattr(xla, "KERNEL_FIRST", None)
    assert xla._kernel_first(geom, cin, cout, False) == forward_alone
    assert xla._kernel_first(geom, cin, cout, True) == differentiated
    for forced in (False, True):
        monkeypatch.setattr(xla, "KERNEL_FIRST", forced)
        assert xla._kernel_first(geom, cin, cout, False) == forced
        assert xla._kernel_first(geom, cin, cout, True) == forced


def test_forward_alone_projects_first_where_a_gradient_does_not(rng, xla, monkeypatch):
    # 6x6, 8 -> 4 channels: z (2 * 8 * 8 * 4 values a kernel point) is smaller
    # than the columns (2 * 6 * 6 * 8) but more than a third of them. The
    # forward alone (inference) runs projected first, a gradient in the column
    # form; both give the reference's values.
    import jax
    import jax.numpy as jnp

    monkeypatch.setattr(xla, "KERNEL_FIRST", None)
    calls = []
    for name in ("_columns", "_kernel_first_forward", "_kernel_first_backward"):
        original = getattr(xla, name)
        monkeypatch.setattr(xla, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    x, offsets, mask, kernel, _ = _random_inputs(rng, 2, 6, 6, 8, 4, 6, 6, scale=2.5)
    expected = np.asarray(xla_reference(x, offsets, mask, kernel))
    alone = jax.jit(xla.deform_conv2d)(x, offsets, mask, kernel)
    assert calls == ["_kernel_first_forward"]
    calls.clear()
    value, _ = jax.value_and_grad(
        lambda x: jnp.sum(xla.deform_conv2d(x, offsets, mask, kernel) ** 2))(x)
    assert set(calls) == {"_columns"}
    assert_close_to_reference(np.asarray(alone), expected, "forward alone")
    np.testing.assert_allclose(float(value), float(np.sum(expected.astype("float64") ** 2)),
                               rtol=1e-5)


def _barrier_shapes(xla, rng, wrt):
    """Output shapes of each optimisation barrier in the value and gradient of a
    (2, 6, 5, 4) -> 4 channel DCN's squared sum, differentiated w.r.t. `wrt`
    ("x" or "offsets")."""
    import jax
    import jax.numpy as jnp

    x, offsets, mask, kernel, _ = _random_inputs(rng, 2, 6, 5, 4, 4, 6, 5)
    args = {"x": x, "offsets": offsets}

    def loss(value):
        kwargs = {**args, wrt: value}
        return jnp.sum(xla.deform_conv2d(mask=mask, kernel=kernel, **kwargs) ** 2)

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(args[wrt])
    return [[v.aval.shape for v in eqn.outvars] for eqn in jaxpr.jaxpr.eqns
            if eqn.primitive.name == "optimization_barrier"]


@pytest.mark.parametrize("pad_barrier", [True, False])
def test_padded_input_is_written_before_the_gathers(rng, xla, monkeypatch, pad_barrier):
    # With PAD_BARRIER the zero-padded (B * (H + 2), W + 2, C) input passes an
    # optimisation barrier, so that XLA writes it once instead of fusing the
    # padding (a bounds test per element) into every gather; the values are
    # those of the official fixtures either way (test above).
    monkeypatch.setattr(xla, "PAD_BARRIER", pad_barrier)
    shapes = _barrier_shapes(xla, rng, "x")
    # The forward's barrier, and its transpose on the input gradient.
    assert shapes == ([[(2 * 8, 7, 4)]] * 2 if pad_barrier else [])


def test_window_starts_are_floor_division_and_remainder(xla):
    import jax.numpy as jnp

    rows = np.array([[0, 1, 129], [130, 131, 541_279]], np.int32)
    starts = np.asarray(xla._window_starts(jnp.asarray(rows), 130))
    np.testing.assert_array_equal(starts[..., 0], rows // 130)
    np.testing.assert_array_equal(starts[..., 1], rows % 130)


@pytest.mark.parametrize("terms_barrier", [True, False])
def test_sampling_terms_are_written_before_the_gathers(rng, xla, monkeypatch, terms_barrier):
    # With TERMS_BARRIER each sample's top-left row, window start and corner
    # weights (and the terms of the offset and mask gradients) pass an
    # optimisation barrier, in the forward and in the backward, so that XLA
    # does not recompute them for every gathered channel.
    monkeypatch.setattr(xla, "TERMS_BARRIER", terms_barrier)
    shapes = _barrier_shapes(xla, rng, "offsets")
    samples = (2 * 6 * 5, 9)
    # The padded input's barrier (PAD_BARRIER; no transpose: x is not
    # differentiated here), then in the forward and in the backward pass:
    # top_left, window starts, 4 corner weights, ly, lx, weight, inside.
    terms = [samples, samples + (2,)] + [samples] * 8
    assert shapes == [[(2 * 8, 7, 4)]] + ([terms, terms] if terms_barrier else [])


def test_packed_gather_gives_the_same_windows(rng, xla, monkeypatch):
    # PACKED_GATHER: bfloat16 channel pairs gathered as one uint32 each; the
    # windows are bit for bit those of the plain gather.
    import jax
    import jax.numpy as jnp

    x_rows = jnp.asarray(rng.normal(size=(14, 9, 6)), jnp.bfloat16)
    starts = jnp.asarray(np.stack([rng.integers(0, 13, (5, 3)), rng.integers(0, 8, (5, 3))],
                                  axis=-1), jnp.int32)
    plain = np.asarray(xla._gather_windows(x_rows, starts).astype(jnp.float32))
    monkeypatch.setattr(xla, "PACKED_GATHER", True)
    assert xla._packable(x_rows)
    packed = np.asarray(xla._gather_windows(x_rows, starts).astype(jnp.float32))
    np.testing.assert_array_equal(packed, plain)
    # The gather itself reads (14, 9, 3) uint32 pairs, not the bf16 values.
    gathers = [eqn for eqn in jax.make_jaxpr(xla._gather_windows)(x_rows, starts).jaxpr.eqns
               if eqn.primitive.name == "gather"]
    assert [(e.invars[0].aval.dtype, e.invars[0].aval.shape) for e in gathers] == [
        (jnp.uint32, (14, 9, 3))]
    # By hand: neighbour (1, 0) of sample (1, 2) is x_rows[row + 1, col].
    row, col = np.asarray(starts[1, 2])
    np.testing.assert_array_equal(
        packed[1, 2, 1, 0], np.asarray(x_rows[row + 1, col].astype(jnp.float32)))
    # float32 and odd channel counts are gathered unpacked.
    assert not xla._packable(x_rows.astype(jnp.float32))
    assert not xla._packable(x_rows[..., :5])


def test_packed_gather_keeps_bfloat16_values_and_gradients(rng, xla, monkeypatch):
    import jax.numpy as jnp

    monkeypatch.setattr(xla, "GATHER_FORM", "window")
    x, offsets, mask, kernel, bias = _random_inputs(rng, 2, 8, 8, 16, 16, 8, 8)
    args = (jnp.asarray(x, jnp.bfloat16), offsets, mask, jnp.asarray(kernel, jnp.bfloat16),
            jnp.asarray(bias, jnp.bfloat16))
    g = rng.normal(size=(2, 8, 8, 16)).astype("float32")
    plain_out, plain_grads = _value_and_grads(xla.deform_conv2d, args, g)
    monkeypatch.setattr(xla, "PACKED_GATHER", True)
    out, grads = _value_and_grads(xla.deform_conv2d, args, g)
    np.testing.assert_array_equal(np.asarray(out, "float32"), np.asarray(plain_out, "float32"))
    for name, a, b in zip(GRADIENT_NAMES, grads, plain_grads):
        np.testing.assert_array_equal(np.asarray(a, "float32"), np.asarray(b, "float32"),
                                      err_msg=name)
