"""Issue 10's table: our speed against the official code's, and the TFLOP/s achieved.

It summarises the two GPU benchmarks' results; `--run` runs them first (on a
GPU machine without a per-call limit: together they take about 15 minutes on
an H200, so on the lent machine run each in its own device call and then
this script where the results are):

    python benchmarks/gpu.py                              # the table from benchmarks/results
    KERAS_BACKEND=jax python benchmarks/gpu.py --run      # runs both benchmarks, then the table

- `benchmarks/architectures.py` -> `results/architectures.md`: batch-1
  latency (network + decoding) and batch-32 inference throughput, fp32 and
  bf16, and each network's XLA FLOP count;
- `benchmarks/training_step.py` -> `results/training_step.{md,json}`:
  training img/s at batch 32 (`fit`, targets rendered in the step);
- this script -> `results/gpu.md`: per preset and precision, our figure, the
  official one (`common.OFFICIAL`, from `/work/shared/ANCHORS.md`) and the
  ratio, with the issue's goals, and the TFLOP/s achieved.

TFLOP/s: inference = images/s x the network's forward FLOPs (XLA's count of
the float32 network at 512 px, 1 multiply-add = 2 FLOPs, deformable sampling
arithmetic included, its gathers not); training = images/s x 3 x forward
FLOPs (the usual estimate: the backward pass costs twice the forward). Against
the H200's (= H100 SXM's) dense peaks: 989 TFLOP/s bf16, 495 TFLOP/s TF32.
"""

import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PRESETS = ("resnet18_dcn", "dla34", "hourglass104", "resnet101_dcn")
# Dense tensor-core peaks of an H100 SXM / H200 (same compute), TFLOP/s.
PEAK_TFLOPS = {"float32": 495.0, "mixed_bfloat16": 989.0}  # fp32 runs as TF32 (XLA's default)
GOALS = {"latency": 0.5, "training_vs_official_fp32": 3.0, "training_vs_official_bf16": 2.0}


def markdown_rows(text, section):
    """`{first cell: [cells]}` of the first table under the `## section` heading."""
    part = text.split(f"## {section}", 1)
    if len(part) < 2:
        raise ValueError(f"No section {section!r} in architectures.md.")
    rows = {}
    for line in part[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 1 and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells
    return rows


def number(cell):
    match = re.match(r"^\s*([0-9.]+)", cell or "")
    return float(match.group(1)) if match else None


def read_architectures(path):
    """Per preset: `gflops`, `latency_ms` and `inference_img_s` by dtype, and the header line."""
    with open(path) as file:
        text = file.read()
    device = next((line for line in text.splitlines() if line.startswith("Device:")), "Device: ?")
    size = markdown_rows(text, "Size")
    latency = markdown_rows(text, "Batch-1 latency")
    throughput = markdown_rows(text, "Batch-32 inference throughput")
    result = {}
    for preset in PRESETS:
        if preset not in size:
            continue
        result[preset] = {
            "gflops": number(size[preset][3]),
            # Columns: network fp32, network bf16, net+decode fp32, net+decode bf16.
            "latency_ms": {"float32": number(latency[preset][3]),
                           "mixed_bfloat16": number(latency[preset][4])},
            "network_img_s": {"float32": number(throughput[preset][1]),
                              "mixed_bfloat16": number(throughput[preset][2])},
            "inference_img_s": {"float32": number(throughput[preset][3]),
                                "mixed_bfloat16": number(throughput[preset][4])},
        }
    return result, device


def read_training(path):
    """Per preset and dtype: the measurements (`fit` img/s, GPU, DCN), and the header line.

    A case `preset:dtype` may also be stored as `preset:dtype@tag` (the same
    case from another GPU or DCN implementation, `training_step.py --merge`);
    each is one measurement.
    """
    with open(path) as file:
        data = json.load(file)
    environment = data.get("environment") or "Device: ?"
    result = {}
    for case, values in data["cases"].items():
        parts = common.base_case(case).split(":")
        if len(parts) != 2 or "fit_img_s" not in values:
            continue
        gpu = values.get("gpu") or common.gpu_name(environment)
        result.setdefault(parts[0], {}).setdefault(parts[1], []).append(
            (values["fit_img_s"], gpu, values.get("dcn", "?"))
        )
    return result, environment


def tflops(img_s, gflops, factor=1.0):
    if img_s is None or gflops is None:
        return None
    return img_s * gflops * factor / 1e3


def render(architectures, arch_device, training, train_device):
    lines = [
        "# GPU speed against the official implementation, and TFLOP/s",
        "",
        "Written by `benchmarks/gpu.py` from `architectures.md` (inference) and "
        "`training_step.json` (training); its docstring says how the TFLOP/s are counted. "
        "Official = the PyTorch figures of `/work/shared/ANCHORS.md` (one H100). "
        f"Goals (issue 10): bs1 latency <= {GOALS['latency']}x the official; bf16 training >= "
        f"{GOALS['training_vs_official_fp32']}x the official fp32 and >= "
        f"{GOALS['training_vs_official_bf16']}x its bf16 autocast figure.",
        "",
        f"Inference: {arch_device}",
        "",
        f"Training (each row names its GPU; the last run's line): {train_device}",
        "",
        "## Inference (network + decoding, 512x512)",
        "",
    ]
    rows = []
    for preset, a in architectures.items():
        official = common.OFFICIAL.get(preset, {})
        for dtype in common.DTYPES:
            peak = PEAK_TFLOPS[dtype]
            throughput = tflops(a["network_img_s"][dtype], a["gflops"])
            rows.append([
                preset, common.SHORT_DTYPE[dtype], common.fmt(a["latency_ms"][dtype], 2),
                common.fmt(official.get("latency_ms", {}).get(dtype), 1),
                common.ratio(a["latency_ms"][dtype], official.get("latency_ms", {}).get(dtype)),
                common.fmt(a["inference_img_s"][dtype], 0),
                common.fmt(official.get("inference_img_s", {}).get(dtype), 0),
                common.ratio(a["inference_img_s"][dtype], official.get("inference_img_s", {}).get(dtype)),
                common.fmt(throughput, 0),
                common.fmt(None if throughput is None else 100 * throughput / peak, 1),
            ])
    lines += common.table(
        ["preset", "precision", "bs1 ms", "official bs1 ms", "ours/official (goal <= 0.5)",
         "bs32 img/s", "official bs32 img/s", "ours/official", "network TFLOP/s (bs32)",
         "% of dense peak"],
        rows,
    )
    lines += ["", "## Training (batch 32, 512x512, Adam, targets rendered in the step)", ""]
    rows = []
    for preset, rates in training.items():
        official = common.OFFICIAL.get(preset, {}).get("training_img_s", {})
        gflops = architectures.get(preset, {}).get("gflops")
        measurements = [(dtype, m) for dtype in common.DTYPES
                        for m in rates.get(dtype, [(None, "?", "?")])]
        for dtype, (rate, gpu, dcn) in measurements:
            achieved = tflops(rate, gflops, 3.0)
            rows.append([
                preset, common.SHORT_DTYPE[dtype], gpu, dcn, common.fmt(rate, 0),
                common.fmt(official.get("float32"), 0), common.ratio(rate, official.get("float32")),
                common.fmt(official.get(dtype), 0), common.ratio(rate, official.get(dtype)),
                common.fmt(achieved, 0),
                common.fmt(None if achieved is None else 100 * achieved / PEAK_TFLOPS[dtype], 1),
            ])
    lines += common.table(
        ["preset", "precision", "GPU", "DCN", "img/s", "official fp32 img/s", "ours/official fp32 (bf16 goal >= 3)",
         "official same precision", "ours/official same precision (bf16 goal >= 2)",
         "TFLOP/s (3 x forward)", "% of dense peak"],
        rows,
    )
    lines += [
        "",
        "Peaks: 495 TFLOP/s for fp32 rows (TF32 tensor cores, XLA's default precision), 989 for "
        "bf16, the same on an H100 and an H200 (which has 1.4x the H100's memory bandwidth); "
        "the official figures are an H100's. See the two source files for the dates.",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="store_true",
                        help="run architectures.py and training_step.py first (GPU machine)")
    parser.add_argument("--output", default=os.path.join(RESULTS, "gpu.md"))
    args = parser.parse_args()
    if args.run:
        here = os.path.dirname(os.path.abspath(__file__))
        for script in ("architectures.py", "training_step.py"):
            subprocess.run([sys.executable, os.path.join(here, script)], check=True)
    architectures, arch_device = read_architectures(os.path.join(RESULTS, "architectures.md"))
    training, train_device = read_training(os.path.join(RESULTS, "training_step.json"))
    text = render(architectures, arch_device, training, train_device)
    common.write_text(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
