"""Speed and memory of `deform_conv2d` against a plain 3x3 convolution and torchvision.

Runs every DCN shape of ResNet-18-DCN and DLA-34 at 512 px (batch 1 and 32),
forward and forward+backward, and writes a markdown table:

    KERAS_BACKEND=jax python benchmarks/deform_conv.py            # GPU machine
    KERAS_BACKEND=jax python benchmarks/deform_conv.py --cpu-quick  # here, on CPU

Our op runs under the JAX backend, compiled with `jax.jit`, in each of its
implementations: the `keras.ops` reference and, on a GPU, the fused Pallas
kernels, whose agreement with the reference is checked on every shape. The plain
convolution is `keras.ops.conv` of the same shape (what DCN costs over a
convolution). torchvision's `deform_conv2d` (CUDA kernel) runs where torch
with CUDA and torchvision are installed. Peak memory: for JAX, the compiled
program's temporary buffers plus its arguments and outputs
(`memory_analysis()`); for torch, `max_memory_allocated` over the call minus
what was allocated before.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
from keras import ops  # noqa: E402

import common  # noqa: E402
from keras_centernet.ops import deform_conv2d  # noqa: E402

# (network, layer(s), spatial size at 512 px input, Cin, Cout, how many in the network)
SHAPES = [
    ("resnet18_dcn", "deconv_layers.0", 16, 512, 256, 1),
    ("resnet18_dcn", "deconv_layers.6", 32, 256, 128, 1),
    ("resnet18_dcn", "deconv_layers.12", 64, 128, 64, 1),
    ("dla34", "ida_0.proj_1", 16, 512, 256, 1),
    ("dla34", "ida_0.node_1", 32, 256, 256, 1),
    ("dla34", "ida_1.proj_*", 32, 256, 128, 2),
    ("dla34", "ida_1.node_*", 64, 128, 128, 2),
    ("dla34", "ida_2.proj_*, ida_up.proj_1", 64, 128, 64, 4),
    ("dla34", "ida_up.proj_2", 32, 256, 64, 1),
    ("dla34", "ida_2.node_*, ida_up.node_*", 128, 64, 64, 5),
]


def median_ms(fn, sync, warmup=3, repeats=20, min_seconds=0.5):
    for _ in range(warmup):
        sync(fn())
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all) < min_seconds:
        start = time.perf_counter()
        sync(fn())
        times.append((time.perf_counter() - start) * 1e3)
        if len(times) >= 200:
            break
    return statistics.median(times)


def make_inputs(rng, batch, size, cin, cout):
    x = rng.normal(size=(batch, size, size, cin)).astype("float32")
    offsets = rng.normal(0.0, 1.5, size=(batch, size, size, 18)).astype("float32")
    mask = rng.uniform(0.0, 1.0, size=(batch, size, size, 9)).astype("float32")
    kernel = (rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin)).astype("float32")
    bias = rng.normal(size=(cout,)).astype("float32")
    return x, offsets, mask, kernel, bias


def make_loss_weights(rng, batch, size, cout):
    """Random weights of the timed loss `weighted_square` (an argument of the timed function)."""
    return rng.normal(size=(batch, size, size, cout)).astype("float32")


def weighted_square(y, loss_weights):
    """`sum(loss_weights * y**2) / 2` in float32: the timed forward+backward's loss.

    Its output gradient `loss_weights * y` depends on the forward's output, so
    the backward waits for the forward, as in training. With `sum(y)` (or
    any loss linear in y) the output gradient is known without the forward:
    XLA then ran the backward first and merged the forward's column
    sampling into the backward's channel-sum fusion (seen in the optimised
    HLO, 2026-12-06), which a training step cannot do.
    """
    import jax.numpy as jnp

    y = y.astype("float32")
    return 0.5 * jnp.sum(loss_weights * y * y)


def dcn_with_options(implementation):
    """`dcn(x, offsets, mask, kernel, bias)` of an implementation name, "xla:option:..." included.

    The options (`common.set_dcn_xla_options`) are set when `dcn` is traced, so
    that they hold for the gradient traced with it; the caller restores the
    defaults (`common.set_dcn_xla_options([])`) once the function is compiled.
    """
    name, *options = implementation.split(":")

    def dcn(x, offsets, mask, kernel, bias):
        common.set_dcn_xla_options(options)
        return deform_conv2d(x, offsets, mask, kernel, bias, implementation=name)

    return dcn


def jax_cases(inputs, implementations=("reference",), dtype="float32", loss_weights=None):
    """Compiled timings and peak memory of DCN (each implementation) and a conv.

    Returns `{name: (ms, peak_bytes)}` with names `<impl>`, `<impl>_fb`,
    `conv`, `conv_fb`. Inputs and kernel are cast to `dtype` (bfloat16 as
    under mixed precision: offsets and mask stay float32, as Keras' layers
    keep them). The `_fb` cases differentiate `weighted_square(y, loss_weights)`
    (`make_loss_weights`; drawn here when None).
    """
    import jax
    import jax.numpy as jnp

    x, offsets, mask, kernel, bias = [jnp.asarray(a) for a in inputs]
    x, kernel, bias = (a.astype(dtype) for a in (x, kernel, bias))
    if loss_weights is None:
        loss_weights = make_loss_weights(np.random.default_rng(1), *x.shape[:2], kernel.shape[-1])
    loss_weights = jnp.asarray(loss_weights)

    def make_dcn(implementation):
        dcn = dcn_with_options(implementation)  # options reset after compiling, below

        def dcn_loss(x, offsets, mask, kernel, bias, loss_weights):
            return weighted_square(dcn(x, offsets, mask, kernel, bias), loss_weights)

        return dcn, dcn_loss

    def conv(x, kernel, bias):
        return ops.conv(x, kernel, padding="same") + bias

    def conv_loss(x, kernel, bias, loss_weights):
        return weighted_square(conv(x, kernel, bias), loss_weights)

    dcn_args = (x, offsets, mask, kernel, bias)
    cases = {}
    for implementation in implementations:
        dcn, dcn_loss = make_dcn(implementation)
        cases[implementation] = (jax.jit(dcn), dcn_args)
        # The loss sum(c * y**2) / 2 has the output gradient c * y, so the
        # backward needs the forward's output, as a training loss does (the
        # gradient of sum(y) does not, and XLA then fuses the forward's
        # sampling into the backward's, which no training step allows).
        cases[implementation + "_fb"] = (
            jax.jit(jax.value_and_grad(dcn_loss, argnums=(0, 1, 2, 3, 4))),
            (*dcn_args, loss_weights))
    if "xla" in implementations:
        cases.update(_stage_cases(x, offsets, mask, kernel))
    cases["conv"] = (jax.jit(conv), (x, kernel, bias))
    cases["conv_fb"] = (
        jax.jit(jax.value_and_grad(conv_loss, argnums=(0, 1, 2))), (x, kernel, bias, loss_weights))
    results = {}
    for name, (fn, args) in cases.items():
        try:
            compiled = fn.lower(*args).compile()
        except Exception as error:  # a kernel that fails to compile is reported, not fatal
            print(f"  {name}: {type(error).__name__}: {str(error)[:300]}", flush=True)
            results[name] = (None, None)
            continue
        finally:
            common.set_dcn_xla_options([])
        analysis = compiled.memory_analysis()
        peak = None
        if analysis is not None:
            peak = (
                analysis.temp_size_in_bytes
                + analysis.argument_size_in_bytes
                + analysis.output_size_in_bytes
            )
        ms = median_ms(lambda: compiled(*args), jax.block_until_ready)
        results[name] = (ms, peak)
    return results


def same_geometry(batch, height, width):
    """`deform_conv_xla.Geometry` of the benchmarked layers: 3x3, stride 1, padding 1."""
    from keras_centernet.ops import deform_conv_xla as xla

    return xla.Geometry(batch, height, width, height, width, 3, 3, (1, 1), (1, 1),
                        (1, 1), batch * height * width)


def _stage_cases(x, offsets, mask, kernel):
    """The two stages of `implementation="xla"` that touch every sample, alone.

    `sample`: the forward's gather of every 2x2 neighbourhood and its float32
    mixing into the (M, 9 * Cin) columns in the compute dtype. `scatter`: the
    input gradient's float32 scatter-add in the module's default form, from
    a float32 column gradient and corner weights already in memory. Any DCN
    whose input gradient is a float32 scatter-add pays at least the latter.
    """
    import jax
    import jax.numpy as jnp

    from keras_centernet.ops import deform_conv_xla as xla

    batch, height, width, cin = x.shape
    num_pixels = batch * height * width
    geom = same_geometry(batch, height, width)
    x_rows = xla.padded_rows(x)
    flat_offsets = offsets.reshape(num_pixels, 18)
    flat_mask = mask.reshape(num_pixels, 9)

    def sample(x_rows, flat_offsets, flat_mask):
        top_left, starts, corners, _ = xla._sampling(flat_offsets, flat_mask, geom)
        return xla._columns(x_rows, top_left, starts, corners, kernel.dtype)

    top_left, _, corners, _ = jax.jit(
        lambda o, m: xla._sampling(o, m, geom))(flat_offsets, flat_mask)
    d_columns = jnp.ones((num_pixels, 9, cin), jnp.float32) + 0.0
    grid = xla.corner_grid(corners)

    def scatter(top_left, d_columns, grid):
        return xla.input_gradient(x_rows.shape, top_left, d_columns, grid)

    return {
        "sample": (jax.jit(sample), (x_rows, flat_offsets, flat_mask)),
        "scatter": (jax.jit(scatter), (top_left, d_columns, grid)),
    }


def parity(inputs, implementation="fused"):
    """Largest differences of `implementation` from the keras.ops reference.

    Both run with float32 products at full precision (`highest`), so what
    remains is summation order. Returns `{"y", "dx", "doffsets", "dmask",
    "dkernel", "dbias"}` -> max |a - b| / max(1, max |b|).
    """
    import jax
    import jax.numpy as jnp

    args = [jnp.asarray(a) for a in inputs]
    out = {}
    with jax.default_matmul_precision("highest"):
        values = {}
        for impl in ("reference", implementation):
            def loss(x, offsets, mask, kernel, bias, dcn=dcn_with_options(impl)):
                y = dcn(x, offsets, mask, kernel, bias)
                # A fixed non-uniform cotangent: every output element counts differently.
                weights = jnp.cos(jnp.arange(y.size, dtype="float32")).reshape(y.shape)
                return jnp.sum(y * weights), y

            try:
                (_, y), grads = jax.jit(
                    jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(*args)
            finally:
                common.set_dcn_xla_options([])
            values[impl] = (y, *grads)
    for name, a, b in zip(("y", "dx", "doffsets", "dmask", "dkernel", "dbias"),
                          values[implementation], values["reference"]):
        scale = max(1.0, float(jnp.max(jnp.abs(b))))
        out[name] = float(jnp.max(jnp.abs(a - b))) / scale
    return out


def torchvision_cases(inputs, loss_weights):
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda")
    x, offsets, mask, kernel, bias = inputs
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), device=device, requires_grad=True)
    toff = torch.tensor(offsets.transpose(0, 3, 1, 2).copy(), device=device, requires_grad=True)
    tmask = torch.tensor(mask.transpose(0, 3, 1, 2).copy(), device=device, requires_grad=True)
    tkernel = torch.tensor(kernel.transpose(3, 2, 0, 1).copy(), device=device, requires_grad=True)
    tbias = torch.tensor(bias, device=device, requires_grad=True)
    tweights = torch.tensor(loss_weights.transpose(0, 3, 1, 2).copy(), device=device)

    def forward():
        with torch.no_grad():
            return torchvision.ops.deform_conv2d(tx, toff, tkernel, tbias, padding=1, mask=tmask)

    def forward_backward():
        out = torchvision.ops.deform_conv2d(tx, toff, tkernel, tbias, padding=1, mask=tmask)
        loss = 0.5 * (tweights * out * out).sum()
        return torch.autograd.grad(loss, (tx, toff, tmask, tkernel, tbias))

    def sync(_):
        torch.cuda.synchronize()

    results = {}
    for name, fn in (("tv", forward), ("tv_fb", forward_backward)):
        ms = median_ms(fn, sync)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        sync(fn())
        peak = torch.cuda.max_memory_allocated() - base
        # Count the inputs too, as the JAX figure does.
        peak += sum(t.numel() * 4 for t in (tx, toff, tmask, tkernel, tbias))
        results[name] = (ms, peak)
    return results


def fmt_ms(value):
    return "n/a" if value is None else f"{value:.3f}"


def fmt_mib(value):
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def ratio(a, b):
    return "n/a" if a is None or b is None else f"{a / b:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--implementations", default=None,
                        help="comma-separated DCN implementations to time "
                             "(default: reference,fused on a GPU, reference elsewhere)")
    parser.add_argument("--bf16-batches", type=int, nargs="*", default=[32],
                        help="batches also timed in bfloat16 (mixed precision's compute dtype)")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds; shapes left when it runs out are skipped and said so")
    parser.add_argument("--cpu-quick", action="store_true",
                        help="batch 1 only, float32 (the CPU of the development machine)")
    parser.add_argument("--output", default=None, help="markdown file to write")
    args = parser.parse_args()
    if keras.backend.backend() != "jax":
        raise SystemExit("Run with KERAS_BACKEND=jax.")
    import jax

    started = time.perf_counter()
    platform = jax.devices()[0].platform
    device_name = jax.devices()[0].device_kind
    if args.implementations:
        implementations = tuple(args.implementations.split(","))
    else:
        implementations = ("reference", "fused") if platform == "gpu" else ("reference",)
    runs = [(b, "float32") for b in ([1] if args.cpu_quick else args.batches)]
    if not args.cpu_quick:
        runs += [(b, "bfloat16") for b in args.bf16_batches]
    output = args.output or os.path.join(
        os.path.dirname(__file__), "results",
        "deform_conv.md" if platform == "gpu" else "deform_conv_cpu.md",
    )
    rng = np.random.default_rng(0)
    short = {"reference": "ref", "fused": "fused"}
    names = [short.get(i, i) for i in implementations]
    best = implementations[-1]
    header = (
        "| network | layer | map | Cin->Cout | batch | dtype | "
        + " | ".join(f"{n} fwd ms" for n in names) + " | conv fwd ms | tv fwd ms | "
        + " | ".join(f"{n} f+b ms" for n in names) + " | conv f+b ms | tv f+b ms | "
        + f"{short.get(best, best)}/conv fwd | {short.get(best, best)}/conv f+b | "
        + f"tv/{short.get(best, best)} f+b | sample ms | scatter ms | scatter/conv f+b "
        + "| peak MiB f+b "
        + " / ".join(names) + " / conv / tv |"
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    parity_rows = [
        "| network | layer | map | Cin->Cout | batch | y | dx | doffsets | dmask | dkernel | dbias |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    totals = {}
    skipped = []
    get = lambda d, k, i: d[k][i] if k in d else None  # noqa: E731
    for batch, dtype in runs:
        for network, layer, size, cin, cout, count in SHAPES:
            if time.perf_counter() - started > args.budget:
                skipped.append(f"{network} {layer} batch {batch} {dtype}")
                continue
            inputs = make_inputs(rng, batch, size, cin, cout)
            loss_weights = make_loss_weights(rng, batch, size, cout)
            ours = jax_cases(inputs, implementations, dtype, loss_weights)
            tv = (torchvision_cases(inputs, loss_weights) or {}) if dtype == "float32" else {}
            row = [network, layer, f"{size}x{size}", f"{cin}->{cout}", str(batch), dtype]
            row += [fmt_ms(get(ours, i, 0)) for i in implementations]
            row += [fmt_ms(get(ours, "conv", 0)), fmt_ms(get(tv, "tv", 0))]
            row += [fmt_ms(get(ours, i + "_fb", 0)) for i in implementations]
            row += [fmt_ms(get(ours, "conv_fb", 0)), fmt_ms(get(tv, "tv_fb", 0))]
            row += [
                ratio(get(ours, best, 0), get(ours, "conv", 0)),
                ratio(get(ours, best + "_fb", 0), get(ours, "conv_fb", 0)),
                ratio(get(tv, "tv_fb", 0), get(ours, best + "_fb", 0)),
                fmt_ms(get(ours, "sample", 0)),
                fmt_ms(get(ours, "scatter", 0)),
                ratio(get(ours, "scatter", 0), get(ours, "conv_fb", 0)),
                " / ".join(fmt_mib(get(ours, i + "_fb", 1)) for i in implementations)
                + f" / {fmt_mib(get(ours, 'conv_fb', 1))} / {fmt_mib(get(tv, 'tv_fb', 1))}",
            ]
            rows.append("| " + " | ".join(row) + " |")
            print(rows[-1], flush=True)
            if dtype == "float32" and len(implementations) > 1 and batch == min(args.batches):
                diffs = parity(inputs, implementations[-1])
                parity_rows.append(
                    f"| {network} | {layer} | {size}x{size} | {cin}->{cout} | {batch} | "
                    + " | ".join(f"{diffs[k]:.1e}" for k in
                                 ("y", "dx", "doffsets", "dmask", "dkernel", "dbias")) + " |")
                print(parity_rows[-1], flush=True)
            acc = totals.setdefault((network, batch, dtype), {})
            for name in [*implementations, *(i + "_fb" for i in implementations),
                         "conv", "conv_fb", "tv", "tv_fb"]:
                value = get(tv if name.startswith("tv") else ours, name, 0)
                previous = acc.get(name, 0.0)
                acc[name] = None if (value is None or previous is None) else previous + count * value
    summary = [
        "| network | batch | dtype | all DCNs f+b ms " + " / ".join(names) + " / conv / tv "
        + f"| {short.get(best, best)}/conv f+b | ref/{short.get(best, best)} f+b "
        + f"| tv/{short.get(best, best)} f+b |",
        "|---|---|---|---|---|---|---|",
    ]
    for (network, batch, dtype), acc in totals.items():
        summary.append(
            f"| {network} | {batch} | {dtype} | "
            + " / ".join(fmt_ms(acc[i + "_fb"]) for i in implementations)
            + f" / {fmt_ms(acc['conv_fb'])} / {fmt_ms(acc['tv_fb'])} "
            f"| {ratio(acc[best + '_fb'], acc['conv_fb'])} "
            f"| {ratio(acc['reference_fb'], acc[best + '_fb']) if 'reference_fb' in acc else 'n/a'} "
            f"| {ratio(acc['tv_fb'], acc[best + '_fb'])} |"
        )
    text = [
        "# deform_conv2d benchmark",
        "",
        f"Device: {device_name} ({platform}), JAX {jax.__version__}, Keras {keras.__version__}. "
        "512 px input; offsets N(0, 1.5) px, mask U(0, 1). Median of >= 20 timed calls after "
        "warm-up. `ref` = the keras.ops gather + matmul with automatic gradients "
        "(`implementation=\"reference\"`), `xla` = the same gathers with a hand-written "
        "gradient (`implementation=\"xla\"`, the default under JAX), `fused` = the Pallas "
        "kernels (`implementation=\"fused\"`), "
        "`tv` = torchvision.ops.deform_conv2d (CUDA, float32 only), `conv` = a plain 3x3 "
        "convolution of the same shape, `f+b` = forward and gradients w.r.t. every input "
        "(`jax.value_and_grad` of `sum(c * y**2) / 2` with random weights `c` passed as an "
        "argument: the output gradient `c * y` needs the forward pass, so the backward waits "
        "for it, as in training). "
        "float32 uses XLA's default matmul precision on GPU (TF32); bfloat16 casts input, "
        "kernel and bias as mixed precision does. Ratios > 1 in `tv/...` and `ref/...` mean "
        "the second is faster. With `xla` timed: `sample ms` = its forward's gathers and "
        "mixing into the columns alone, `scatter ms` = its input gradient's float32 "
        "scatter-add alone (with its products of column gradient and corner weights), "
        "from those factors already in memory.",
        "",
        "## Per layer shape",
        "",
        *rows,
        "",
        "## Whole network (every DCN layer of the network, counted with its multiplicity)",
        "",
        *summary,
        "",
    ]
    if len(parity_rows) > 2:
        text += [
            f"## Agreement of `{implementations[-1]}` with the reference",
            "",
            "Largest |difference| / max(1, largest |reference value|), both at float32 "
            "`highest` precision, gradients under a fixed non-uniform cotangent.",
            "",
            *parity_rows,
            "",
        ]
    if skipped:
        text += [f"Not run (the {args.budget:.0f} s budget ran out): " + "; ".join(skipped) + ".", ""]
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        f.write("\n".join(text))
    print()
    print("\n".join(summary))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
