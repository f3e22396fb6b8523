"""Speed and memory of `deform_conv2d` against a plain 3x3 convolution and torchvision.

Runs every DCN shape of ResNet-18-DCN and DLA-34 at 512 px (batch 1 and 32),
forward and forward+backward, and writes a markdown table:

    KERAS_BACKEND=jax python benchmarks/deform_conv.py            # GPU machine
    KERAS_BACKEND=jax python benchmarks/deform_conv.py --cpu-quick  # here, on CPU

Our op runs under the JAX backend, compiled with `jax.jit`. The plain
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
from keras import ops  # noqa: E402

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


def jax_cases(inputs):
    import jax
    import jax.numpy as jnp

    x, offsets, mask, kernel, bias = [jnp.asarray(a) for a in inputs]

    def dcn(x, offsets, mask, kernel, bias):
        return deform_conv2d(x, offsets, mask, kernel, bias)

    def conv(x, kernel, bias):
        return ops.conv(x, kernel, padding="same") + bias

    def dcn_loss(x, offsets, mask, kernel, bias):
        return jnp.sum(dcn(x, offsets, mask, kernel, bias))

    def conv_loss(x, kernel, bias):
        return jnp.sum(conv(x, kernel, bias))

    cases = {
        "ours": (jax.jit(dcn), (x, offsets, mask, kernel, bias)),
        "ours_fb": (jax.jit(jax.grad(dcn_loss, argnums=(0, 1, 2, 3, 4))), (x, offsets, mask, kernel, bias)),
        "conv": (jax.jit(conv), (x, kernel, bias)),
        "conv_fb": (jax.jit(jax.grad(conv_loss, argnums=(0, 1, 2))), (x, kernel, bias)),
    }
    results = {}
    for name, (fn, args) in cases.items():
        compiled = fn.lower(*args).compile()
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


def torchvision_cases(inputs):
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

    def forward():
        with torch.no_grad():
            return torchvision.ops.deform_conv2d(tx, toff, tkernel, tbias, padding=1, mask=tmask)

    def forward_backward():
        out = torchvision.ops.deform_conv2d(tx, toff, tkernel, tbias, padding=1, mask=tmask)
        return torch.autograd.grad(out.sum(), (tx, toff, tmask, tkernel, tbias))

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
    parser.add_argument("--cpu-quick", action="store_true",
                        help="batch 1 only (the CPU of the development machine)")
    parser.add_argument("--output", default=None, help="markdown file to write")
    args = parser.parse_args()
    if keras.backend.backend() != "jax":
        raise SystemExit("Run with KERAS_BACKEND=jax.")
    import jax

    batches = [1] if args.cpu_quick else args.batches
    platform = jax.devices()[0].platform
    device_name = jax.devices()[0].device_kind
    output = args.output or os.path.join(
        os.path.dirname(__file__), "results",
        "deform_conv.md" if platform == "gpu" else "deform_conv_cpu.md",
    )
    rng = np.random.default_rng(0)
    header = (
        "| network | layer | map | Cin->Cout | batch | ours fwd ms | conv fwd ms | tv fwd ms "
        "| ours fwd+bwd ms | conv fwd+bwd ms | tv fwd+bwd ms | ours/conv fwd | ours/conv f+b "
        "| tv/ours fwd | tv/ours f+b | peak MiB ours f+b | conv f+b | tv f+b |"
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    totals = {}
    for batch in batches:
        for network, layer, size, cin, cout, count in SHAPES:
            inputs = make_inputs(rng, batch, size, cin, cout)
            ours = jax_cases(inputs)
            tv = torchvision_cases(inputs) or {}
            get = lambda d, k, i: d[k][i] if k in d else None  # noqa: E731
            row = [
                network, layer, f"{size}x{size}", f"{cin}->{cout}", str(batch),
                fmt_ms(get(ours, "ours", 0)), fmt_ms(get(ours, "conv", 0)), fmt_ms(get(tv, "tv", 0)),
                fmt_ms(get(ours, "ours_fb", 0)), fmt_ms(get(ours, "conv_fb", 0)), fmt_ms(get(tv, "tv_fb", 0)),
                ratio(get(ours, "ours", 0), get(ours, "conv", 0)),
                ratio(get(ours, "ours_fb", 0), get(ours, "conv_fb", 0)),
                ratio(get(tv, "tv", 0), get(ours, "ours", 0)),
                ratio(get(tv, "tv_fb", 0), get(ours, "ours_fb", 0)),
                fmt_mib(get(ours, "ours_fb", 1)), fmt_mib(get(ours, "conv_fb", 1)), fmt_mib(get(tv, "tv_fb", 1)),
            ]
            rows.append("| " + " | ".join(row) + " |")
            print(rows[-1], flush=True)
            key = (network, batch)
            acc = totals.setdefault(key, {"ours_fb": 0.0, "conv_fb": 0.0, "tv_fb": 0.0, "ours": 0.0, "conv": 0.0, "tv": 0.0})
            for name in acc:
                source = tv if name.startswith("tv") else ours
                value = get(source, name, 0)
                acc[name] = None if (value is None or acc[name] is None) else acc[name] + count * value
    summary = [
        "| network | batch | all DCNs fwd ms ours / conv / tv | all DCNs fwd+bwd ms ours / conv / tv "
        "| ours/conv f+b | tv/ours f+b |",
        "|---|---|---|---|---|---|",
    ]
    for (network, batch), acc in totals.items():
        summary.append(
            f"| {network} | {batch} | {fmt_ms(acc['ours'])} / {fmt_ms(acc['conv'])} / {fmt_ms(acc['tv'])} "
            f"| {fmt_ms(acc['ours_fb'])} / {fmt_ms(acc['conv_fb'])} / {fmt_ms(acc['tv_fb'])} "
            f"| {ratio(acc['ours_fb'], acc['conv_fb'])} | {ratio(acc['tv_fb'], acc['ours_fb'])} |"
        )
    text = "\n".join(
        [
            "# deform_conv2d benchmark",
            "",
            f"Device: {device_name} ({platform}), JAX {jax.__version__}, Keras {keras.__version__}, "
            "float32 inputs (XLA's default matmul precision on GPU). 512 px input; offsets N(0, 1.5) px, "
            "mask U(0, 1). Median of >= 20 timed calls after warm-up. `tv` = torchvision.ops.deform_conv2d "
            "(CUDA), `conv` = a plain 3x3 convolution of the same shape, `fwd+bwd` = gradients w.r.t. "
            "every input. Ratios > 1 in `tv/ours` mean ours is faster.",
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
    )
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        f.write(text)
    print()
    print("\n".join(summary))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
