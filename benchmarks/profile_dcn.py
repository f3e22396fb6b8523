"""Where the GPU time of one deformable convolution's forward+backward goes (JAX backend).

`benchmarks/deform_conv.py` times each implementation of `deform_conv2d`
whole; this script traces them with `jax.profiler` and puts every GPU kernel in
a class (`profile_step.kernel_class`: matmuls and convolutions, scatter,
reduction fusions, elementwise fusions such as the gathers, copies), so that
the cost of each stage shows: the input gradient's scatter-add, the sampling
gathers, the matmuls.

    KERAS_BACKEND=jax python benchmarks/profile_dcn.py --output $OUT/profile_dcn.md

A variant is `implementation[:option...]`: `reference`, `xla`, `fused`, and
for `xla` the options `keep` (`keep_columns=True`: the forward's columns are
kept for the kernel gradient) and `rows` / `window` (the neighbours are gathered one row each, or as one
2x2 window; the default depends on the platform), `winscatter` (the input
gradient is one unsorted scatter-add of 2x2 windows; by default a GPU sorts
them, see `deform_conv_xla._scatter_form`), `rowscatter` (it is scattered one
neighbour row at a time, unsorted), `sortscatter` (the 2x2 windows are sorted by their top-left neighbour
first, so that XLA:GPU sums runs of equal destinations before its atomic
adds), `sortrowscatter` (the four neighbours' rows in one scatter, sorted by
destination), and `lowscatter` (it is scattered in the input's dtype, bfloat16 under mixed
precision, as the reference's automatic gradient does, instead of float32),
`pallasfwd` (the forward pass is the fused Pallas kernel of
`deform_conv_jax.py`, which writes no column tensor; the backward is XLA's),
`pallasbwd` (the column gradient, channel sums and kernel gradient come from
one Pallas kernel, `deform_conv_xla.BACKWARD = "pallas"`), `cfg.FIELD=N` (the
Pallas kernels' tile setting `FIELD` of `deform_conv_jax.KernelConfig` set to
`N`, e.g. `cfg.bwd_stages=1`),
`padfused` (the zero padding is left for XLA to fuse into every gather, with
a bounds test per gathered element, instead of being written once,
`deform_conv_xla.PAD_BARRIER`), `termsbarrier` (each sample's window start and
corner weights written before the gathers, `TERMS_BARRIER`) and `packed`
(bfloat16 channel pairs gathered as one uint32, `PACKED_GATHER`),
`kernelfirst` / `columnsfirst` / `kernelfirstauto` (the input projected by
every kernel point first, `z = x @ W_k`, and `z`'s windows sampled instead of
the input's, in both passes; or in neither; or as `_kernel_first` picks per
pass, the default: `KERNEL_FIRST = True / False / None`);
options join with `:` (`xla:keep:lowscatter`).
`conv` is the plain 3x3 convolution of the same shape.
"""

import argparse
import collections
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import common  # noqa: E402
from deform_conv import dcn_with_options  # noqa: E402
from deform_conv import make_loss_weights  # noqa: E402
from deform_conv import make_inputs  # noqa: E402
from deform_conv import weighted_square  # noqa: E402
from profile_step import CLASSES  # noqa: E402
from profile_step import kernel_class  # noqa: E402
from profile_step import kernel_events  # noqa: E402

# (label, spatial size, Cin, Cout): DLA-34's heaviest DCN shapes at 512 px
# (the default `--shapes`), then its others (also ResNet-18-DCN's).
SHAPES = [
    ("128x128 64->64", 128, 64, 64),
    ("64x64 128->64", 64, 128, 64),
    ("64x64 128->128", 64, 128, 128),
    ("32x32 256->64", 32, 256, 64),
    ("32x32 256->128", 32, 256, 128),
    ("32x32 256->256", 32, 256, 256),
    ("16x16 512->256", 16, 512, 256),
]
DEFAULT_VARIANTS = [
    "conv", "reference", "xla", "xla:winscatter", "xla:rows", "xla:keep", "xla:rowscatter", "xla:sortscatter",
    "xla:sortrowscatter", "xla:lowscatter",
    "xla:keep:lowscatter", "xla:pallasfwd", "xla:pallasfwd:lowscatter",
]


def make_loss(variant):
    """`loss(x, offsets, mask, kernel, bias, loss_weights)` of one variant and the arguments it differentiates.

    The loss is `sum(loss_weights * y**2) / 2` (`deform_conv.weighted_square`):
    its output gradient needs the forward's output, so that the backward
    waits for the forward as in training.
    """
    from keras import ops

    name, *options = variant.split(":")
    if name == "conv":
        def loss(x, offsets, mask, kernel, bias, loss_weights):
            del offsets, mask
            return weighted_square(ops.conv(x, kernel, padding="same") + bias, loss_weights)
        return loss, (0, 3, 4)
    if options and name != "xla":
        raise ValueError(f"unknown variant {variant!r}")

    dcn = dcn_with_options(variant)  # options reset once compiled (`measure`)

    def loss(x, offsets, mask, kernel, bias, loss_weights):
        return weighted_square(dcn(x, offsets, mask, kernel, bias), loss_weights)
    return loss, (0, 1, 2, 3, 4)


def measure(variant, inputs, loss_weights, dtype, profile_calls=3, hlo_path=None):
    """One variant on one input: f+b ms, peak bytes, `{class: ms}`, the heaviest kernels, outputs.

    The outputs are the loss and its gradients as float32 numpy arrays.

    With `hlo_path`, the optimised HLO of the compiled function (its fusions'
    bodies: which operations each GPU kernel holds) is written there.
    """
    import jax

    x, offsets, mask, kernel, bias, loss_weights = [
        jax.numpy.asarray(a) for a in (*inputs, loss_weights)]
    x, kernel, bias = (a.astype(dtype) for a in (x, kernel, bias))
    args = (x, offsets, mask, kernel, bias, loss_weights)
    loss, argnums = make_loss(variant)
    # value_and_grad: the loss's value keeps the forward pass, which XLA drops
    # from a bare gradient of a sum.
    fn = jax.jit(jax.value_and_grad(loss, argnums=argnums))
    try:
        compiled = fn.lower(*args).compile()
    finally:
        common.set_dcn_xla_options([])
    if hlo_path:
        common.write_text(hlo_path, compiled.as_text())
    analysis = compiled.memory_analysis()
    peak = None if analysis is None else (
        analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes)
    outputs = jax.tree_util.tree_leaves(compiled(*args))
    outputs = [np.asarray(a.astype("float32")) for a in outputs]
    ms = common.median_ms(lambda: compiled(*args), jax.block_until_ready)
    trace_dir = tempfile.mkdtemp(prefix="profile_dcn_")
    jax.profiler.start_trace(trace_dir)
    for _ in range(profile_calls):
        out = compiled(*args)
    jax.block_until_ready(out)
    jax.profiler.stop_trace()
    by_class = collections.Counter()
    by_op = collections.Counter()
    for kernel_name, hlo_op, duration, _ in kernel_events(trace_dir):
        kind = kernel_class(kernel_name, hlo_op)
        by_class[kind] += duration
        by_op[(hlo_op or kernel_name[:50], kind)] += duration
    classes = {k: by_class[k] / 1e6 / profile_calls for k in CLASSES}
    top = [(op, kind, d / 1e6 / profile_calls) for (op, kind), d in by_op.most_common(6)]
    return ms, peak, classes, top, outputs


def largest_difference(outputs, baseline):
    """Largest of max |a - b| / max |b| over the loss and each gradient (b: the baseline's)."""
    worst = 0.0
    for a, b in zip(outputs, baseline):
        scale = float(np.max(np.abs(b))) or 1.0
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=DEFAULT_VARIANTS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--shapes", nargs="+", type=int, default=[0, 1, 2],
                        help=f"indices into SHAPES (0-{len(SHAPES) - 1})")
    parser.add_argument("--budget", type=float, default=300.0)
    parser.add_argument("--hlo-dump", metavar="DIR",
                        help="write each case's optimised HLO to DIR/<shape>_<dtype>_<variant>.hlo")
    parser.add_argument("--output", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "profile_dcn.md"))
    args = parser.parse_args()
    import jax
    import keras

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    header = ("| shape | dtype | variant | f+b ms | / conv | kernel ms | "
              + " | ".join(CLASSES) + " | peak MiB | differs from xla | heaviest kernels (HLO op, class, ms) |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    skipped = []
    for dtype in args.dtypes:
        for index in args.shapes:
            label, size, cin, cout = SHAPES[index]
            inputs = make_inputs(rng, args.batch, size, cin, cout)
            loss_weights = make_loss_weights(rng, args.batch, size, cout)
            conv_ms = None
            baseline = None
            for variant in args.variants:
                if time.perf_counter() - started > args.budget:
                    skipped.append(f"{label} {dtype} {variant}")
                    continue
                hlo_path = None
                if args.hlo_dump:
                    name = f"{size}x{size}x{cin}x{cout}_{dtype}_{variant.replace(':', '-')}.hlo"
                    hlo_path = os.path.join(args.hlo_dump, name)
                ms, peak, classes, top, outputs = measure(variant, inputs, loss_weights, dtype,
                                                          hlo_path=hlo_path)
                if variant == "conv":
                    conv_ms = ms
                if variant == "xla":
                    baseline = outputs
                differs = ("n/a" if baseline is None or variant in ("conv", "xla")
                           else f"{largest_difference(outputs, baseline):.1e}")
                row = [label, dtype, variant, f"{ms:.3f}",
                       "n/a" if conv_ms is None else f"{ms / conv_ms:.2f}",
                       f"{sum(classes.values()):.3f}",
                       *(f"{classes[k]:.3f}" for k in CLASSES),
                       "n/a" if peak is None else f"{peak / 2**20:.0f}", differs,
                       "; ".join(f"{op} ({kind}) {d:.3f}" for op, kind, d in top)]
                rows.append("| " + " | ".join(row) + " |")
                print(rows[-1], flush=True)
    device = jax.devices()[0]
    text = [
        "# Where a deformable convolution's forward+backward spends its GPU time",
        "",
        f"Device: {device.device_kind} ({device.platform}), JAX {jax.__version__}, "
        f"Keras {keras.__version__}. Batch {args.batch}; offsets N(0, 1.5) px, mask U(0, 1). "
        "`f+b ms` = median wall time of the compiled value and gradient w.r.t. every input of "
        "`sum(c * y**2) / 2` (random weights `c` passed as an argument: the backward waits for "
        "the forward, as in training); the class "
        "columns are the traced GPU kernel time per call, classed by "
        "`profile_step.kernel_class` (`convolution` includes the matmuls). `differs from xla` = "
        "the largest max |difference| / max |xla's value| over the loss and the gradients, "
        "against the default `xla` variant's (run before it). Written by "
        "`benchmarks/profile_dcn.py`; its docstring names the variants.",
        "",
        *rows,
        "",
    ]
    if skipped:
        text += [f"Not run (the {args.budget:.0f} s budget ran out): " + "; ".join(skipped) + ".", ""]
    common.write_text(args.output, "\n".join(text))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
