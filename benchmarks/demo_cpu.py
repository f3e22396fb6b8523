"""Seconds per training step of the demo's model on this CPU, and of cheaper variants.

`centernet demo` must finish in about ten minutes on a 2-core machine, so its
length is set by the CPU step time measured here (TensorFlow, the README's
backend) and by the AP that the GPU sweep of `benchmarks/demo_settings.py`
measures for a number of steps. Each case trains on one batch of the demo's
shape (batch 32 of 128 px RGBA canvases, 5 classes, up to 6 objects each,
the official augmentation inside the step) with `train_on_batch`: after 3
warm-up steps, the median of `--steps` steps. Inference is the median of
`predict_on_batch` on the same batch.

    python benchmarks/demo_cpu.py                       # every case
    python benchmarks/demo_cpu.py --cases demo w16 --steps 5

A case is `name[:options]` with the options of `demo_settings.py`
(`width=16,neck=64-32-32,kernels=2-2-2,head=32,batch=16`, and `mixed=1` for
`mixed_bfloat16`, which oneDNN runs on the AMX unit of CPUs that have one).
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

DEFAULT_CASES = (
    "demo",
    "batch16:batch=16",
    "kernels2_head32:kernels=2-2-2,head=32",
    "neck32_head32:neck=128-64-32,head=32",
    "width16:width=16,neck=64-32-32,head=32",
    "batch16_bf16:batch=16,mixed=1",
)


def batch(size, count, rng):
    images = rng.integers(0, 256, (count, size, size, 4)).astype("uint8")
    images[..., 3] = 255
    boxes = np.zeros((count, 6, 4), "float32")
    labels = np.full((count, 6), -1, "int32")
    for i in range(count):
        for j in range(rng.integers(1, 7)):
            x, y = rng.uniform(0, size * 0.7, 2)
            w, h = rng.uniform(12, size * 0.3, 2)
            boxes[i, j] = [x, y, x + w, y + h]
            labels[i, j] = rng.integers(0, 5)
    return images, {"boxes": boxes, "labels": labels}


def time_case(spec, steps):
    import keras

    from demo_settings import build_model
    from demo_settings import parse_case

    name, _, options = spec.partition(":")
    case = parse_case(f"{name}:1e-3:1:aug::{options}")
    data = {"image_size": 128, "num_classes": 5, "preset": "resnet18_small"}
    model = build_model(case, data)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, targets = batch(128, case["batch"], np.random.default_rng(0))
    for _ in range(3):
        model.train_on_batch(images, targets)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, targets)
        times.append(time.perf_counter() - start)
    rgb = images[..., :3].astype("float32")
    model.predict_on_batch(rgb)
    predict = []
    for _ in range(max(3, steps // 2)):
        start = time.perf_counter()
        model.predict_on_batch(rgb)
        predict.append(time.perf_counter() - start)
    step = float(np.median(times))
    return {"case": name, "options": options or "the demo's (resnet18_small)",
            "batch": case["batch"], "params": model.count_params(), "step": step,
            "per_image_ms": 1000 * step / case["batch"],
            "predict": float(np.median(predict))}


def cpu_features():
    """`, with AMX bf16` or `, with AVX-512 bf16` where /proc/cpuinfo lists them (Linux)."""
    try:
        with open("/proc/cpuinfo") as file:
            flags = next((line.split() for line in file if line.startswith("flags")), [])
    except OSError:
        return ""
    found = [name for flag, name in (("amx_bf16", "AMX bf16"), ("avx512_bf16", "AVX-512 bf16"))
             if flag in flags]
    return f" (with {', '.join(found)})" if found else ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--output", default=os.path.join(
        os.path.dirname(__file__), "results", "demo_cpu.md"))
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    rows = []
    for spec in args.cases:
        result = time_case(spec, args.steps)
        rows.append(result)
        print(result, flush=True)
    lines = [
        "# Demo training step on the CPU (`benchmarks/demo_cpu.py`)",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        f"{cpu_features()}, Keras "
        f"{keras.__version__}, backend {keras.backend.backend()}; 128 px, 5 classes, official "
        f"augmentation in the step; median of {args.steps} `train_on_batch` steps after 3 "
        "warm-up steps.",
        "",
        "| case | model | batch | parameters | s / step | ms / image | predict s / batch |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['case']} | {r['options']} | {r['batch']} | {r['params']:,} | {r['step']:.3f} | "
          f"{r['per_image_ms']:.1f} | {r['predict']:.3f} |" for r in rows),
        "",
    ]
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as file:
        file.write(text)
    print(text)


if __name__ == "__main__":
    main()
