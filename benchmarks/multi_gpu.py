"""Data-parallel training on several GPUs of one host: img/s, scaling efficiency, loss curves (JAX).

`dla34` at 512 px, bf16 (`mixed_bfloat16`), a global batch of 32 images per GPU, targets
rendered in the step, on 1, 2, 4 and 8 GPUs (those the machine has), through
`keras_centernet.training.data_parallel_scope` (`keras.distribution.DataParallel`: one SPMD
program whose step equals the single-device step on the global batch):

    KERAS_BACKEND=jax python benchmarks/multi_gpu.py            # a multi-GPU machine
    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        python benchmarks/multi_gpu.py --quick                  # CPU smoke test, 2 virtual devices

How: per device count, a fresh worker process builds the model in the scope, compiles it
with Adam (1.25e-4, the official rate for a batch of 32, scaled linearly with the global
batch) and fits a generator of random batches (random RGB images, 128 random boxes per image):
2 warm-up steps, then the wall time of `--steps` steps. Scaling efficiency = img/s on N
GPUs / (N x img/s on one). Loss curves: every device count also trains `--curve-steps` steps
on the same sequence of batches of 32 x 1 images from the same initial weights (the global
batch of one GPU, split over N), so its loss per step must match the single-GPU curve up to
floating-point reordering; the table gives the largest difference.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import common  # noqa: E402

MAX_OBJECTS = 128
NUM_CLASSES = 80


def random_batch(rng, batch, size):
    import numpy as np

    images = rng.uniform(0, 255, size=(batch, size, size, 3)).astype("float32")
    centres = rng.uniform(0, size, size=(batch, MAX_OBJECTS, 2))
    extents = rng.uniform(0.015, 0.5, size=(batch, MAX_OBJECTS, 2)) * size
    boxes = np.concatenate([centres - extents / 2, centres + extents / 2], axis=-1)
    boxes = np.clip(boxes, 0, size).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=(batch, MAX_OBJECTS)).astype("int32")
    return images, {"boxes": boxes, "labels": labels}


def measure(num_devices, args):
    """Worker side: throughput and a loss curve on `num_devices` devices."""
    import jax
    import keras
    import numpy as np

    import keras_centernet as kc
    from keras_centernet.training import data_parallel_scope

    keras.mixed_precision.set_dtype_policy(args.dtype)
    global_batch = args.batch_per_device * num_devices
    result = {"devices": num_devices, "global_batch": global_batch,
              "device_kind": jax.devices()[0].device_kind}

    def build(batch):
        keras.utils.set_random_seed(0)
        with data_parallel_scope(num_devices if num_devices > 1 else None, batch_size=batch):
            model = kc.CenterNet.from_preset(args.preset, num_classes=NUM_CLASSES)
            model.compile(optimizer=keras.optimizers.Adam(1.25e-4 * batch / 32))
        return model

    # Throughput on random batches (the same batch repeated: no input cost).
    model = build(global_batch)
    batch = random_batch(np.random.default_rng(0), global_batch, args.size)

    def repeated():
        while True:
            yield batch

    started = time.perf_counter()
    model.fit(repeated(), steps_per_epoch=2, epochs=1, verbose=0)
    result["compile_s"] = time.perf_counter() - started
    started = time.perf_counter()
    model.fit(repeated(), steps_per_epoch=args.steps, epochs=1, verbose=0)
    step_ms = (time.perf_counter() - started) * 1e3 / args.steps
    result.update(step_ms=step_ms, img_s=global_batch * 1e3 / step_ms)

    # The loss curve on one GPU's global batch, split over the devices.
    keras.distribution.set_distribution(None)
    model = build(args.batch_per_device)
    rng = np.random.default_rng(1)
    batches = [random_batch(rng, args.batch_per_device, args.size) for _ in range(args.curve_steps)]
    losses = []
    step_losses = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
    model.fit((b for b in batches), steps_per_epoch=args.curve_steps, epochs=1, verbose=0,
              callbacks=[step_losses])
    result["curve"] = losses
    return result


def worker(args):
    common.emit("environment", line=common.environment_line())
    for case in args.cases:
        common.start(case)
        try:
            common.emit(case, **measure(int(case), args))
        except Exception as error:  # reported in the table
            common.emit(case, error=f"{type(error).__name__}: {str(error)[:600]}")


def render(results, environment, args):
    rows, problems = [], []
    one = results.get("1", {}).get("img_s")
    reference_curve = results.get("1", {}).get("curve")
    for case, result in sorted(results.items(), key=lambda item: int(item[0])):
        if "error" in result:
            problems.append(f"- {case} devices: {result['error']}")
            continue
        n = result["devices"]
        efficiency = None if not one else 100 * result["img_s"] / (n * one)
        curve_gap = None
        if reference_curve and result.get("curve"):
            curve_gap = max(abs(a - b) for a, b in zip(reference_curve, result["curve"]))
        rows.append([str(n), str(result["global_batch"]), common.fmt(result.get("compile_s"), 0),
                     common.fmt(result["step_ms"], 1), common.fmt(result["img_s"], 0),
                     common.fmt(efficiency, 1), "" if curve_gap is None else f"{curve_gap:.2e}"])
    text = [
        "# Data-parallel training",
        "",
        environment,
        f"`{args.preset}`, {args.size}x{args.size}, {common.SHORT_DTYPE.get(args.dtype, args.dtype)}, "
        f"{args.batch_per_device} images per device, {MAX_OBJECTS} objects per image, "
        f"{NUM_CLASSES} classes, `keras.distribution.DataParallel` (JAX). Written by "
        "`benchmarks/multi_gpu.py`; its docstring says how each figure is taken. Goals: "
        "scaling efficiency >= 90% at 2 GPUs, >= 85% at 8.",
        "",
        *common.table(["devices", "global batch", "compile s", "step ms", "img/s",
                       "scaling efficiency %", "loss-curve gap to 1 device"], rows),
        "",
    ]
    if problems:
        text += ["## Problems", "", *problems, ""]
    return "\n".join(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dla34")
    parser.add_argument("--dtype", default="mixed_bfloat16")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-per-device", type=int, default=32)
    parser.add_argument("--devices", type=int, nargs="+", default=None,
                        help="device counts (default: 1, 2, 4, 8 up to the machine's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--curve-steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke test: resnet18 at 64 px, 2 images per device, 2 steps")
    parser.add_argument("--case-timeout", type=float, default=400.0)
    parser.add_argument("--budget", type=float, default=3600.0)
    parser.add_argument("--output", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("cases", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.preset, args.size, args.batch_per_device, args.steps, args.curve_steps = (
            "resnet18", 64, 2, 2, 3)
        args.dtype = "float32"
    if args.worker:
        return worker(args)
    if args.devices is None:
        import jax

        count = len(jax.devices())
        args.devices = [n for n in (1, 2, 4, 8) if n <= count]
    here = os.path.dirname(os.path.abspath(__file__))
    output = args.output or os.path.join(
        here, "results", "multi_gpu_quick.md" if args.quick else "multi_gpu.md")
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--preset", args.preset,
               "--dtype", args.dtype, "--size", str(args.size),
               "--batch-per-device", str(args.batch_per_device), "--steps", str(args.steps),
               "--curve-steps", str(args.curve_steps), "--"]
    results = common.Results(render, args, output,
                             shown=lambda result: {k: v for k, v in result.items() if k != "curve"})
    common.run_cases(command, [str(n) for n in args.devices], args.case_timeout,
                     time.monotonic() + args.budget, os.path.splitext(output)[0] + ".log",
                     results, one_worker_per_case=True)
    text = results.text()
    common.write_text(output, text)
    print(text)
    print(f"written to {output}")


if __name__ == "__main__":
    main()
