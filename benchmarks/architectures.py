"""Size, FLOPs and inference speed of every CenterNet preset (JAX backend).

For each preset of `keras_centernet.models.presets`: trainable parameters,
FLOPs of one 512x512 image, batch-1 latency (network alone, and network +
decoding) and batch-32 images per second, in float32 and `mixed_bfloat16`,
against the official PyTorch figures of `/work/shared/ANCHORS.md`:

    KERAS_BACKEND=jax python benchmarks/architectures.py          # GPU machine
    KERAS_BACKEND=jax python benchmarks/architectures.py --quick  # CPU smoke test

How: the network is `model.stateless_call(trainable, non_trainable, images)`
and network + decoding is `model.detect(images)` (what `predict` runs: the
sigmoid, 3x3 peak pooling, top-K, boxes) under a `StatelessScope`, each
compiled once with `jax.jit(...).lower(...).compile()` for the batch size,
fed random RGB images already on the device, and timed as the median wall
time of calls followed by `block_until_ready`, after warm-up. FLOPs are XLA's
count (`Lowered.cost_analysis()`, the HLO before optimisation, one
multiply-add = 2 FLOPs) of the float32 network at batch 1; it counts the
arithmetic of the deformable convolutions' bilinear sampling and their
matrix products, not their gathers. The GPU backend's cost analysis gives no
FLOP count, so the committed table merges a GPU run with a CPU count:

    python benchmarks/architectures.py --output /tmp/gpu.md           # GPU machine
    python benchmarks/architectures.py --flops-only --merge /tmp/gpu.json  # CPU

Each preset and precision runs in a worker process under a time limit
(`--case-timeout`), and the table is rewritten after every case.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import common  # noqa: E402

# The presets with official figures first, so that a run cut short has them.
PRESET_ORDER = (
    "resnet18_dcn", "dla34", "hourglass104", "resnet101_dcn",
    "resnet18", "resnet34_dcn", "resnet50_dcn", "hourglass52",
)


def count_flops(model, size):
    """XLA's FLOP count of the float32 network on one image (HLO before optimisation)."""
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def network(trainable, non_trainable, images):
        outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
        return outputs

    images = jax.ShapeDtypeStruct((1, size, size, 3), "float32")
    cost = jax.jit(network).lower(trainable, non_trainable, images).cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) / 1e9 if cost and "flops" in cost else None


def measure(preset, dtype, size, batch, quick, flops_only=False):
    """Worker side: every figure of one preset in one precision."""
    import jax
    import keras
    import numpy as np

    import keras_centernet as kc

    keras.mixed_precision.set_dtype_policy(dtype)
    model = kc.CenterNet.from_preset(preset, num_classes=80)
    result = {}
    if dtype == "float32":
        result["trainable_params"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        result["all_params"] = int(sum(np.prod(v.shape) for v in model.weights))
        result["gflops"] = count_flops(model, size)
        result["flops_platform"] = jax.devices()[0].platform
    if flops_only:
        return result
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def network(trainable, non_trainable, images):
        outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
        return outputs

    def network_and_decoding(trainable, non_trainable, images):
        mapping = list(zip(model.trainable_variables, trainable))
        mapping += list(zip(model.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping):
            return model.detect(images)

    key = jax.random.PRNGKey(0)
    warmup = 1 if quick else 5
    for name, fn in (("network", network), ("detect", network_and_decoding)):
        for images_per_call in (1, batch):
            images = jax.random.uniform(key, (images_per_call, size, size, 3), "float32", 0.0, 255.0)
            started = time.perf_counter()
            compiled = jax.jit(fn).lower(trainable, non_trainable, images).compile()
            result[f"compile_s_{name}_{images_per_call}"] = time.perf_counter() - started
            if images_per_call == 1:
                ms = common.median_ms(
                    lambda: compiled(trainable, non_trainable, images), jax.block_until_ready,
                    warmup=warmup, repeats=3 if quick else 50, min_seconds=0.0 if quick else 1.0,
                )
                result[f"{name}_ms_bs1"] = ms
            else:
                ms = common.median_ms(
                    lambda: compiled(trainable, non_trainable, images), jax.block_until_ready,
                    warmup=min(warmup, 2), repeats=3 if quick else 10, min_seconds=0.0 if quick else 1.0,
                )
                result[f"{name}_img_s_bs{batch}"] = batch * 1e3 / ms
    return result


def worker(args):
    import jax

    common.emit("environment", line=common.environment_line(), platform=jax.devices()[0].platform)
    # Benchmark-only: options of the XLA deformable convolution (profile_dcn.py's).
    common.dcn_xla_options_from_environment()
    for case in args.cases:
        preset, dtype = case.split(":")
        common.start(case)
        try:
            values = measure(preset, dtype, args.size, args.batch, args.quick, args.flops_only)
            common.emit(case, **values)
        except Exception as error:  # reported in the table, the other cases go on
            common.emit(case, error=f"{type(error).__name__}: {str(error)[:600]}")


def render(results, environment, args):
    """The markdown text of the results gathered so far."""

    def value(preset, dtype, key):
        return results.get(f"{preset}:{dtype}", {}).get(key)

    def error(preset):
        messages = [
            f"{common.SHORT_DTYPE[d]}: {results[f'{preset}:{d}']['error']}"
            for d in common.DTYPES
            if "error" in results.get(f"{preset}:{d}", {})
        ]
        return messages

    presets = [p for p in PRESET_ORDER + tuple(args.presets)
               if any(f"{p}:{d}" in results for d in common.DTYPES)]
    presets = list(dict.fromkeys(presets))
    flops_platforms = {r.get("flops_platform") for r in results.values() if r.get("gflops")}
    batch = args.batch
    size_rows, latency_rows, throughput_rows, problems = [], [], [], []
    for preset in presets:
        official = common.OFFICIAL.get(preset, {})
        params = value(preset, "float32", "trainable_params")
        all_params = value(preset, "float32", "all_params")
        size_rows.append([
            preset,
            common.fmt(params / 1e6 if params else None, 2),
            common.fmt(all_params / 1e6 if all_params else None, 2),
            common.fmt(value(preset, "float32", "gflops"), 1),
            " / ".join(
                common.fmt(value(preset, d, "compile_s_network_1"), 0) for d in common.DTYPES
            ),
        ])
        latency = {d: value(preset, d, "detect_ms_bs1") for d in common.DTYPES}
        official_latency = official.get("latency_ms", {})
        latency_rows.append([
            preset,
            *[common.fmt(value(preset, d, "network_ms_bs1"), 2) for d in common.DTYPES],
            *[common.fmt(latency[d], 2) for d in common.DTYPES],
            " / ".join(common.fmt(official_latency.get(d)) for d in common.DTYPES) if official_latency else "",
            " / ".join(common.ratio(latency[d], official_latency.get(d)) for d in common.DTYPES)
            if official_latency else "",
        ])
        rate = {d: value(preset, d, f"detect_img_s_bs{batch}") for d in common.DTYPES}
        official_rate = official.get("inference_img_s", {})
        throughput_rows.append([
            preset,
            *[common.fmt(value(preset, d, f"network_img_s_bs{batch}"), 0) for d in common.DTYPES],
            *[common.fmt(rate[d], 0) for d in common.DTYPES],
            " / ".join(common.fmt(official_rate.get(d), 0) for d in common.DTYPES) if official_rate else "",
            " / ".join(common.ratio(rate[d], official_rate.get(d)) for d in common.DTYPES)
            if official_rate else "",
        ])
        problems += [f"- `{preset}` {m}" for m in error(preset)]
    text = [
        "# CenterNet architectures: size and inference speed",
        "",
        environment,
        f"{args.size}x{args.size} RGB input, random weights, 80 classes, JAX backend "
        "(XLA's default matmul precision: TF32 convolutions in float32, as PyTorch's default). "
        "Written by `benchmarks/architectures.py`; its docstring says how each figure is taken. "
        "Official = the PyTorch models of `/work/shared/ANCHORS.md` on an H100.",
        "",
        "## Size",
        "",
        "GFLOPs: XLA's count (`jax.jit(...).lower(...).cost_analysis()`, the network's HLO before "
        "optimisation, so independent of the device; 1 multiply-add = 2 FLOPs) of the float32 "
        "network on one image. It includes the bilinear sampling arithmetic and matrix products "
        "of the deformable convolutions, not their gathers."
        + (f" Counted on the {', '.join(sorted(p for p in flops_platforms if p))} backend "
           "(`--flops-only`): the GPU backend's `Lowered.cost_analysis()` gave no count."
           if flops_platforms and "gpu" not in flops_platforms else ""),
        "",
        *common.table(
            ["preset", "trainable params (M)", "all weights incl. BN statistics (M)",
             f"GFLOPs at {args.size}x{args.size} (XLA count, fp32, bs1)",
             "compile s, bs1 network fp32 / bf16"],
            size_rows,
        ),
        "",
        "## Batch-1 latency (ms, median; lower is better)",
        "",
        "`net+decode` = network + decoding (100 boxes), the official test-time figure.",
        "",
        *common.table(
            ["preset", "network fp32", "network bf16", "net+decode fp32", "net+decode bf16",
             "official net+decode fp32 / bf16", "ours/official fp32 / bf16 (goal <= 0.5)"],
            latency_rows,
        ),
        "",
        f"## Batch-{batch} inference throughput (images/s; higher is better)",
        "",
        "The ratio compares our network + decoding with the official inference figure.",
        "",
        *common.table(
            ["preset", "network fp32", "network bf16", "net+decode fp32", "net+decode bf16",
             "official fp32 / bf16", "ours/official fp32 / bf16"],
            throughput_rows,
        ),
        "",
    ]
    if problems:
        text += ["## Problems", "", *problems, ""]
    return "\n".join(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESET_ORDER))
    parser.add_argument("--dtypes", nargs="+", default=list(common.DTYPES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke test: 128 px, batch 2, resnet18 and hourglass52, few repeats")
    parser.add_argument("--case-timeout", type=float, default=240.0,
                        help="seconds for one preset in one precision, compilation included")
    parser.add_argument("--budget", type=float, default=3600.0,
                        help="seconds for the whole run; cases not started by then are listed as not run")
    parser.add_argument("--flops-only", action="store_true",
                        help="parameters and FLOPs only (no compilation or timing; runs on the CPU)")
    parser.add_argument("--merge", nargs="+", default=[],
                        help="JSON results of earlier runs to merge (e.g. GPU timings with CPU FLOPs)")
    parser.add_argument("--output", default=None, help="markdown file to write")
    parser.add_argument("--log", default=None, help="where the workers' output goes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("cases", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch = 128, 2
        if args.presets == list(PRESET_ORDER):
            args.presets = ["resnet18", "hourglass52"]
    if args.worker:
        return worker(args)

    deadline = time.monotonic() + args.budget
    here = os.path.dirname(os.path.abspath(__file__))
    output = args.output or os.path.join(
        here, "results", "architectures_quick.md" if args.quick else "architectures.md"
    )
    log = args.log or os.path.splitext(output)[0] + ".log"
    command = [sys.executable, os.path.abspath(__file__), "--worker",
               "--size", str(args.size), "--batch", str(args.batch)]
    if args.quick:
        command.append("--quick")
    if args.flops_only:
        command.append("--flops-only")
        args.dtypes = ["float32"]
    cases = [f"{p}:{d}" for p in args.presets for d in args.dtypes]
    results = {}
    environment = None
    for path in args.merge:
        with open(path) as f:
            earlier = json.load(f)
        environment = environment or earlier.get("environment")
        for case, values in earlier["cases"].items():
            results.setdefault(case, {}).update(values)

    def on_result(result):
        nonlocal environment
        case = result.pop("case")
        if case == "environment":
            # Timings come from the first device; a FLOP count keeps their header.
            environment = environment or result["line"]
            print(result["line"], flush=True)
            return
        if "error" not in result:
            results.get(case, {}).pop("error", None)
        results.setdefault(case, {}).update(result)
        print(case, json.dumps(result), flush=True)
        common.write_text(output, render(results, environment or "Device: (not reported)", args))
        common.write_text(
            os.path.splitext(output)[0] + ".json",
            json.dumps({"environment": environment, "cases": results}, indent=1),
        )

    common.run_cases(command + ["--"], cases, args.case_timeout, deadline, log, on_result)
    text = render(results, environment or "Device: (not reported)", args)
    common.write_text(output, text)
    print()
    print(text)
    print(f"written to {output}")


if __name__ == "__main__":
    main()
