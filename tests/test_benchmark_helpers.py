"""The benchmarks' bookkeeping helpers, whose mistakes would mislabel measured figures."""

import importlib
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def jax_only(test):
    """Marks a test of the DCN benchmarks, which time the XLA deformable convolution (JAX's)."""
    skip = pytest.mark.skipif(os.environ.get("KERAS_BACKEND") != "jax",
                              reason="the DCN benchmarks time the JAX backend")
    return pytest.mark.jax(skip(test))


def _benchmark(name):
    """The module `benchmarks/<name>.py` (the folder is not a package)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCHMARKS)


@pytest.fixture(scope="module")
def benchmarks():
    return _benchmark("profile_step"), _benchmark("training_step")


@pytest.mark.parametrize(
    "kernel, hlo_op, expected",
    [
        # Kernel and HLO names as the JAX profiler reported them on an H100.
        ("cudnn-conv-bw-filter.334", "cudnn-conv-bw-filter.334", "convolution"),
        ("sm90_xmma_fprop_implicit_gemm", "cudnn-conv.111", "convolution"),
        ("gemm_fusion_dot_general_3", "gemm_fusion_dot_general.3", "convolution"),
        # A type conversion is not a convolution (XLA's "convert" contains "conv").
        ("loop_convert_fusion_3", "loop_convert_fusion.3", "elementwise fusion"),
        ("input_convert_reduce_fusion", "input_convert_reduce_fusion", "reduction fusion"),
        ("input_scatter_fusion_20", "input_scatter_fusion.20", "scatter"),
        ("wrapped_transpose", "wrapped_transpose", "copy / transpose"),
        ("loop_add_fusion", "loop_add_fusion", "elementwise fusion"),
        ("cub::DeviceRadixSortOnesweepKernel", "custom-call.1", "other"),
    ],
)
def test_kernel_class(benchmarks, kernel, hlo_op, expected):
    profile_step, _ = benchmarks
    assert profile_step.kernel_class(kernel, hlo_op) == expected


def test_merged_key_keeps_measurements_from_elsewhere(benchmarks):
    _, training_step = benchmarks
    h200 = {"gpu": "NVIDIA H200", "dcn": "reference", "fit_img_s": 325.0}
    h100 = {"gpu": "NVIDIA H100 80GB HBM3", "dcn": "xla", "fit_img_s": 346.0}
    results = {"dla34:mixed_bfloat16": h200}
    # Another GPU and DCN: kept beside the earlier figure.
    key = training_step.merged_key(results, "dla34:mixed_bfloat16", h100)
    assert key == "dla34:mixed_bfloat16@NVIDIA H100 80GB HBM3|xla"
    # A rerun on the same GPU with the same DCN replaces it.
    rerun = dict(h200, fit_img_s=330.0)
    assert training_step.merged_key(results, "dla34:mixed_bfloat16", rerun) == "dla34:mixed_bfloat16"
    # A new case, and a key already tagged, stay as they are.
    assert training_step.merged_key(results, "dla34:float32", h100) == "dla34:float32"
    tagged = "dla34:mixed_bfloat16@NVIDIA H100 80GB HBM3|xla"
    assert training_step.merged_key(results, tagged, h100) == tagged


def test_merge_result_keeps_measurements_over_errors(benchmarks):
    _, training_step = benchmarks
    h100, h200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"
    case = "dla34:mixed_bfloat16:augment"
    measured = {"gpu": h100, "dcn": "xla", "fit_img_s": 386.0}
    stopped = {"gpu": h100, "error": "stopped after 68 s (time budget of the run)"}
    results = {case: {"gpu": h200, "dcn": "xla", "fit_img_s": 324.0}}
    # A stopped run beside another GPU's figure is listed (a problem to report)...
    training_step.merge_result(results, case, stopped)
    assert results[f"{case}@{h100}|?"] == stopped
    # ... until a later run measures the case on that GPU; the H200 figure stays.
    training_step.merge_result(results, case, measured)
    assert results == {case: {"gpu": h200, "dcn": "xla", "fit_img_s": 324.0}, f"{case}@{h100}|xla": measured}
    # An error never replaces a measurement of the same GPU and implementation.
    failed = {"gpu": h100, "dcn": "xla", "error": "RESOURCE_EXHAUSTED"}
    training_step.merge_result(results, f"{case}@{h100}|xla", failed)
    assert results[f"{case}@{h100}|xla"] == measured
    # But it is recorded for a case not measured before, and a newer error replaces an older one.
    training_step.merge_result(results, "dla34:float32", failed)
    assert results["dla34:float32"] == failed
    newer = dict(failed, error="stopped after 10 s (time budget of the run)")
    training_step.merge_result(results, "dla34:float32", newer)
    assert results["dla34:float32"] == newer


@jax_only
def test_timed_dcn_loss_needs_the_forward_output():
    # deform_conv.py and profile_dcn.py time value_and_grad of this loss. Its
    # output gradient must depend on the output y (here c * y, by hand), or
    # XLA runs the backward without waiting for the forward and merges work
    # that a training step cannot (a constant gradient, as from sum(y), did).
    import jax
    import numpy as np

    deform_conv = _benchmark("deform_conv")
    y = np.array([[1.0, -2.0], [0.5, 3.0]], "float32")
    weights = np.array([[2.0, 1.0], [-1.0, 0.5]], "float32")
    value, grad = jax.value_and_grad(deform_conv.weighted_square)(y, weights)
    np.testing.assert_allclose(value, 0.5 * (2.0 + 4.0 - 0.25 + 4.5))
    np.testing.assert_allclose(grad, weights * y)
    drawn = deform_conv.make_loss_weights(np.random.default_rng(0), 2, 4, 3)
    assert drawn.shape == (2, 4, 4, 3) and drawn.dtype == np.float32


@jax_only
def test_dcn_options_set_the_module_and_an_empty_list_restores_it():
    # profile_dcn.py and training_step.py label their rows with these option
    # names: each must set the module attribute it names, and [] must give
    # back the defaults, or the next variant would run with the last one's.
    from keras_centernet.ops import deform_conv_jax as jax_kernels
    from keras_centernet.ops import deform_conv_xla as xla

    common = _benchmark("common")
    config = jax_kernels.DEFAULT_CONFIG
    names = ["KEEP_COLUMNS", "GATHER_FORM", "SCATTER_FORM", "SCATTER_DTYPE", "FORWARD",
             "BACKWARD", "PAD_BARRIER", "TERMS_BARRIER", "PACKED_GATHER", "KERNEL_FIRST"]
    defaults = {name: getattr(xla, name) for name in names}
    expected = {
        "keep": ("KEEP_COLUMNS", True), "rows": ("GATHER_FORM", "rows"),
        "sortscatter": ("SCATTER_FORM", "sorted"), "lowscatter": ("SCATTER_DTYPE", "input"),
        "pallasfwd": ("FORWARD", "pallas"), "pallasbwd": ("BACKWARD", "pallas"),
        "padfused": ("PAD_BARRIER", False),
        "termsbarrier": ("TERMS_BARRIER", True), "packed": ("PACKED_GATHER", True),
        "kernelfirst": ("KERNEL_FIRST", True), "columnsfirst": ("KERNEL_FIRST", False),
        "kernelfirstauto": ("KERNEL_FIRST", None),
    }
    try:
        for option, (name, value) in expected.items():
            common.set_dcn_xla_options([option])
            assert getattr(xla, name) == value, option
            assert all(getattr(xla, other) == defaults[other] for other in names
                       if other != name), option
            common.set_dcn_xla_options([])
            assert {n: getattr(xla, n) for n in names} == defaults
        with pytest.raises(ValueError, match="unknown DCN options"):
            common.set_dcn_xla_options(["nosuch"])
        with pytest.raises(ValueError, match="more than one of"):
            common.set_dcn_xla_options(["kernelfirst", "columnsfirst"])
        # "kernelfirstauto" is the default (None): it must undo a forced form too.
        xla.KERNEL_FIRST = True
        common.set_dcn_xla_options(["kernelfirstauto"])
        assert xla.KERNEL_FIRST is None
        common.set_dcn_xla_options(["pallasbwd", "cfg.bwd_block_m=128", "cfg.bwd_warps=8"])
        assert jax_kernels.DEFAULT_CONFIG == config._replace(bwd_block_m=128, bwd_warps=8)
        assert xla.BACKWARD == "pallas"
        common.set_dcn_xla_options([])
        assert jax_kernels.DEFAULT_CONFIG == config
        for bad in ("cfg.nosuch=1", "cfg.bwd_warps=four"):
            with pytest.raises(ValueError, match="bad Pallas config option"):
                common.set_dcn_xla_options([bad])
    finally:
        for name, value in defaults.items():
            setattr(xla, name, value)
        jax_kernels.DEFAULT_CONFIG = config


@jax_only
def test_dcn_options_from_the_environment(monkeypatch):
    # training_step.py and architectures.py workers read BENCH_DCN_XLA_OPTIONS.
    from keras_centernet.ops import deform_conv_xla as xla

    common = _benchmark("common")
    defaults = (xla.KERNEL_FIRST, xla.GATHER_FORM)
    try:
        monkeypatch.setenv("BENCH_DCN_XLA_OPTIONS", "columnsfirst,rows")
        common.dcn_xla_options_from_environment()
        assert (xla.KERNEL_FIRST, xla.GATHER_FORM) == (False, "rows")
        monkeypatch.setenv("BENCH_DCN_XLA_OPTIONS", "")
        common.dcn_xla_options_from_environment()
        assert (xla.KERNEL_FIRST, xla.GATHER_FORM) == defaults
        monkeypatch.delenv("BENCH_DCN_XLA_OPTIONS")
        common.dcn_xla_options_from_environment()  # unset: nothing changes
        assert (xla.KERNEL_FIRST, xla.GATHER_FORM) == defaults
    finally:
        xla.KERNEL_FIRST, xla.GATHER_FORM = defaults


@jax_only
def test_deform_conv_benchmark_sets_xla_options_while_tracing_and_restores_them(monkeypatch):
    # `deform_conv.py --implementations xla,xla:kernelfirst`: the option must
    # hold while the function and its gradient are traced (else the row times
    # the default under the option's name), and the next case must run
    # without it.
    import numpy as np

    from keras_centernet.ops import deform_conv_xla as xla

    deform_conv = _benchmark("deform_conv")
    calls = []
    for name in ("_kernel_first_forward", "_kernel_first_backward"):
        original = getattr(xla, name)
        monkeypatch.setattr(xla, name, lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
    default = xla.KERNEL_FIRST
    rng = np.random.default_rng(0)
    inputs = deform_conv.make_inputs(rng, 1, 6, 8, 4)
    differences = deform_conv.parity(inputs, "xla:kernelfirst")
    assert set(calls) == {"_kernel_first_forward", "_kernel_first_backward"}
    assert max(differences.values()) < 1e-5, differences
    assert xla.KERNEL_FIRST == default
    calls.clear()
    results = deform_conv.jax_cases(
        inputs, ("xla:kernelfirst",), loss_weights=deform_conv.make_loss_weights(rng, 1, 6, 4))
    assert set(calls) == {"_kernel_first_forward", "_kernel_first_backward"}
    assert results["xla:kernelfirst_fb"][0] > 0 and results["conv_fb"][0] > 0
    assert xla.KERNEL_FIRST == default


def test_case_xla_flags(benchmarks):
    profile_step, _ = benchmarks
    assert profile_step.case_xla_flags("hourglass104:mixed_bfloat16") == ""
    assert profile_step.case_xla_flags("dla34:mixed_bfloat16:dcn=sortscatter") == ""
    assert profile_step.case_xla_flags(
        "hourglass104:mixed_bfloat16:xla=xla_gpu_autotune_level=0,xla_gpu_enable_command_buffer="
    ) == "--xla_gpu_autotune_level=0 --xla_gpu_enable_command_buffer="


def test_twopass_variant_gives_back_keras_statistics(benchmarks, monkeypatch):
    import keras

    from keras_centernet.layers import OnePassBatchNormalization

    profile_step, _ = benchmarks
    monkeypatch.setattr(OnePassBatchNormalization, "_moments", OnePassBatchNormalization._moments)
    assert OnePassBatchNormalization._moments is not keras.layers.BatchNormalization._moments
    profile_step.twopass_batchnorm()
    assert OnePassBatchNormalization._moments is keras.layers.BatchNormalization._moments


def _patched_conv_class(monkeypatch):
    """Keras' convolution base class, restored after the test whatever a variant patches."""
    from keras.src.layers.convolutional.base_conv import BaseConv

    monkeypatch.setattr(BaseConv, "convolution_op", BaseConv.convolution_op)
    monkeypatch.setattr(BaseConv, "add_weight", BaseConv.add_weight)
    return BaseConv


@jax_only
@pytest.mark.parametrize("row_major", [False, True])
def test_kernelbarrier_keeps_gradients_and_puts_kernels_through_a_barrier(benchmarks, monkeypatch, row_major):
    import jax
    import keras
    import numpy as np

    profile_step, _ = benchmarks
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")

    def gradients():
        keras.utils.set_random_seed(0)
        layer = keras.layers.Conv2D(4, 3, padding="same")
        layer.build(x.shape)
        trainable = [v.value for v in layer.trainable_variables]
        grad = jax.grad(lambda t: (layer.stateless_call(t, [], x)[0] ** 2).sum())
        return grad(trainable), str(jax.make_jaxpr(grad)(trainable))

    before, program_before = gradients()
    _patched_conv_class(monkeypatch)
    profile_step.kernel_gradient_barrier(row_major=row_major)
    after, program_after = gradients()
    for a, b in zip(before, after):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "optimization_barrier" not in program_before
    assert "optimization_barrier" in program_after
    # `kernellayout`: the kernel gradient is constrained to the row-major layout first.
    assert ("layout_constraint" in program_after) == row_major


@jax_only
def test_ohwi_stores_kernels_output_channel_first(benchmarks, monkeypatch):
    import keras
    import numpy as np

    profile_step, _ = benchmarks
    _patched_conv_class(monkeypatch)
    profile_step.ohwi_kernels()
    x = np.random.default_rng(0).normal(size=(2, 3, 2, 3)).astype("float32")
    layer = keras.layers.Conv2D(4, (3, 2), use_bias=False)  # one output position per image
    y = keras.ops.convert_to_numpy(layer(x))
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    assert kernel.shape == (4, 3, 2, 3)
    # With an OHWI kernel: y[n, 0, 0, o] = sum over h, w, i of x[n, h, w, i] * kernel[o, h, w, i].
    np.testing.assert_allclose(y[:, 0, 0], np.einsum("nhwi,ohwi->no", x, kernel), rtol=1e-5, atol=1e-5)


@jax_only
def test_gradbarrier_trains_as_before(benchmarks):
    import jax
    import keras
    import numpy as np

    profile_step, _ = benchmarks
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
    weights = []
    for barrier in (False, True):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
        if barrier:
            profile_step.gradients_barrier(model)
            assert "stateless_apply" in vars(model.optimizer)
        initial = keras.ops.convert_to_numpy(model.weights[0])
        for _ in range(3):
            model.train_on_batch(x, y)
        weights.append([keras.ops.convert_to_numpy(w) for w in model.weights])
        assert not np.allclose(weights[-1][0], initial)  # the steps did update
        trainable = [v.value for v in model.trainable_variables]
        program = jax.make_jaxpr(lambda grads: model.optimizer.stateless_apply(
            [v.value for v in model.optimizer.variables], grads, trainable))(trainable)
        assert ("optimization_barrier" in str(program)) == barrier
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@jax_only
def test_mosaic_probe_gathers_take_each_window():
    # Both of the probe's gathers against NumPy slicing of the padded input at the DCN's own
    # window starts: XLA's, and the Mosaic GPU kernel (one TMA copy per window) in Pallas'
    # Mosaic GPU interpreter.
    import jax.numpy as jnp
    import numpy as np

    probe = _benchmark("probe_mosaic_dcn")
    x_rows, offsets, mask, _, geom = probe.forward_inputs(batch=1, size=4, channels=16, seed=1)
    starts, _ = probe.sampling_terms(offsets, mask, geom)
    assert x_rows.shape == (6, 6, 16) and starts.shape == (16, 9, 2)
    x = np.asarray(x_rows.astype(jnp.float32))
    want = np.stack([x[r:r + 2, c:c + 2] for r, c in np.asarray(starts).reshape(-1, 2)])
    for gather in (probe.xla_gather, probe.tma_gather(16, interpret=True)):
        got = np.asarray(gather(x_rows, starts).astype(jnp.float32))
        np.testing.assert_array_equal(got, want)
    # The copies alone write back each block's first window.
    for auto_barriers in (True, False):
        got = probe.tma_copies(16, auto_barriers, interpret=True)(x_rows, starts)
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), want[::16])


@jax_only
@pytest.mark.parametrize("cin,cout,neighbour_copies", [(16, 32, False), (32, 16, False),
                                                       (64, 16, True)])
def test_mosaic_probe_forward_is_the_dcn(cin, cout, neighbour_copies):
    # The fused Mosaic GPU forward (in Pallas' interpreter; two tiles of 64 pixels; one TMA
    # copy per window, or one per neighbour row) against the keras.ops reference DCN in
    # float32 on the same bf16-valued input and kernel. The kernel rounds the mixed columns
    # and its output to bf16: one bf16 step of the output's scale is allowed.
    import jax.numpy as jnp
    import numpy as np

    from keras_centernet.ops import deform_conv as reference

    probe = _benchmark("probe_mosaic_dcn")
    x, offsets, mask, kernel, _ = probe.deform_conv.make_inputs(
        np.random.default_rng(3), 2, 8, cin, cout)
    x = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
    kernel = np.asarray(jnp.asarray(kernel, jnp.bfloat16).astype(jnp.float32))
    want = np.asarray(reference.deform_conv2d(
        x, offsets, mask, kernel, implementation="reference")).reshape(-1, cout)
    geom = probe.deform_conv.same_geometry(2, 8, 8)
    got = probe.fused_forward(geom, 64, interpret=True, neighbour_copies=neighbour_copies)(
        probe.xla.padded_rows(jnp.asarray(x, jnp.bfloat16)),
        jnp.asarray(offsets).reshape(-1, 18), jnp.asarray(mask).reshape(-1, 9),
        jnp.asarray(kernel, jnp.bfloat16).reshape(9 * cin, cout))
    assert got.shape == (128, cout) and got.dtype == jnp.bfloat16
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), want, rtol=0,
                               atol=2 ** -7 * scale)


@jax_only
def test_mosaic_probe_kernels_lower_for_hopper_at_the_benchmark_shape():
    # Without a GPU, JAX still lowers a Mosaic GPU kernel to its MLIR for CUDA, and checks
    # there the layouts, the shared-memory budget, the TMA strides and the wgmma operands, on
    # which the probe's GPU call would otherwise fail (its JAX, 0.11.2, is newer than this
    # one's). The shape is the probe's default (DLA-34's 128x128x64 layers, batch 32).
    import jax
    import jax.numpy as jnp

    probe = _benchmark("probe_mosaic_dcn")
    geom = probe.deform_conv.same_geometry(32, 128, 128)
    pixels = geom.m_pad
    spec = jax.ShapeDtypeStruct
    operands = (spec((32 * 130, 130, 64), jnp.bfloat16), spec((pixels, 18), jnp.float32),
                spec((pixels, 9), jnp.float32), spec((9 * 64, 64), jnp.bfloat16))
    gradient = spec((pixels, 64), jnp.bfloat16)
    cases = [(probe.fused_forward(geom, 64, registers=r, neighbour_copies=n), operands)
             for r in (False, True) for n in (False, True)] + [
        (probe.fused_backward(geom, 64, parts, neighbour_copies=n), (*operands, gradient))
        for parts in (16, 32) for n in (False, True)] + [
        (probe.tma_copies(block, auto), (operands[0], spec((pixels, 9, 2), jnp.int32)))
        for block in (16, 64) for auto in (True, False)] + [
        (probe.tma_gather(block), (operands[0], spec((pixels, 9, 2), jnp.int32)))
        for block in (32, 64, 128, 256)]
    for fn, args in cases:
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert "mosaic_gpu" in text


@jax_only
@pytest.mark.parametrize("neighbour_copies", [False, True])
def test_mosaic_probe_backward_gives_the_column_gradient_sums_and_kernel_gradient(
        neighbour_copies):
    # The fused Mosaic GPU backward (in Pallas' interpreter: 2 tiles of 64 pixels, each of the
    # 9 kernel points' programs taking both in turn) against NumPy: windows sliced from the
    # padded input at the DCN's window starts, mixed with its corner weights into bf16
    # columns; the column gradient g @ W_k^T rounded to bf16; the four channel sums of the
    # column gradient times each neighbour; the kernel gradient columns^T @ g.
    import jax.numpy as jnp
    import numpy as np

    probe = _benchmark("probe_mosaic_dcn")
    cin, cout = 64, 32
    x_rows, offsets, mask, _, geom = probe.forward_inputs(2, 8, cin, seed=4)
    rng = np.random.default_rng(5)
    kernel_matrix = jnp.asarray(rng.normal(size=(9 * cin, cout)) / 24, jnp.bfloat16)
    g = jnp.asarray(rng.normal(size=(128, cout)), jnp.bfloat16)
    starts, corners = probe.sampling_terms(offsets, mask, geom)
    got = probe.mosaic_backward(64, 2, interpret=True, neighbour_copies=neighbour_copies)(
        x_rows, starts, corners, kernel_matrix, g)

    def f32(a):
        return np.asarray(jnp.asarray(a).astype(jnp.float32))

    def bf16(a):
        return f32(jnp.asarray(a, jnp.bfloat16))

    x = f32(x_rows)
    rows = np.asarray(starts)
    windows = np.stack([[x[r:r + 2, c:c + 2].reshape(4, cin) for r, c in point]
                        for point in rows])  # (M, 9, 4, Cin)
    columns = np.zeros((128, 9, cin), np.float32)
    for corner in range(4):  # the reference's order of float32 sums
        columns += windows[:, :, corner] * np.asarray(corners)[:, :, corner, None]
    columns = bf16(columns)
    w = f32(kernel_matrix).reshape(9, cin, cout)
    want_dcol = bf16(np.einsum("mo,kco->mkc", f32(g), w))
    want_sums = np.einsum("mkc,mkqc->mkq", want_dcol, windows)
    want_dw = np.einsum("mkc,mo->kco", columns, f32(g)).reshape(9 * cin, cout)
    d_columns, sums, d_kernel = got
    assert d_columns.shape == (128, 9, cin) and d_columns.dtype == jnp.bfloat16
    # One bf16 step where the float32 sums of the matmul round differently.
    np.testing.assert_allclose(f32(d_columns), want_dcol, rtol=2 ** -7, atol=1e-6)
    np.testing.assert_allclose(f32(sums), want_sums, rtol=1e-4,
                               atol=1e-4 * np.abs(want_sums).max())
    np.testing.assert_allclose(f32(d_kernel), want_dw, rtol=1e-4,
                               atol=1e-4 * np.abs(want_dw).max())
