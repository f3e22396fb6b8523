"""Training images per second, and the share of the step spent rendering targets (JAX backend).

For `resnet18_dcn`, `dla34` and `hourglass104` at 512 px, batch 32, 80
classes and 128 objects per image, in float32 and `mixed_bfloat16`, against
the official PyTorch figures of `/work/shared/ANCHORS.md`:

    KERAS_BACKEND=jax python benchmarks/training_step.py          # GPU machine
    KERAS_BACKEND=jax python benchmarks/training_step.py --quick  # CPU smoke test

How: `model.compile(optimizer=keras.optimizers.Adam(1.25e-4))` (the official
learning rate), then three ways of running the training step on one random
batch already on the device (random RGB images, 128 random boxes per image,
every one a valid object); the targets are rendered and the paper's loss
computed inside the compiled step (`CenterNet.compute_loss`):
- `train_on_batch(images, {"boxes", "labels"})`: the first call compiles;
  after warm-up, the median wall time of single calls (each waits for the
  loss, so one step never overlaps the next, and each pays Keras's per-call
  host work: state gathering and write-back);
- `fit` on a generator that repeats the batch (2 warm-up steps in a first
  `fit`, then the wall time of one `fit` of 2 x `--steps` steps, divided by
  the steps): what a user gets;
- the compiled step function (Keras's `train_function`) called back to back
  in a Python loop, waiting only at the end: the device's own rate.
The ratio to the official figure uses `fit`. Peak memory is the device's
`peak_bytes_in_use`, one process per case.

Rendering share: `render_targets` alone, jitted, at the same batch, 128
objects, 80 classes, on the 128x128 output grid: its median time over the
`fit` step time of each model.

A batch that does not fit in memory is halved until it does (the table says
so). Each case runs in its own worker process under a time limit
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

PRESETS = ("resnet18_dcn", "dla34", "hourglass104")
MAX_OBJECTS = 128
CANVAS = 640  # accelerator-mode canvases (`--augment-presets`)
NUM_CLASSES = 80


def random_objects(rng, batch, size):
    """(B, 128, 4) `xyxy` boxes in input pixels, 8 to 50% of the image wide, and labels."""
    import numpy as np

    centres = rng.uniform(0, size, size=(batch, MAX_OBJECTS, 2))
    extents = rng.uniform(0.015, 0.5, size=(batch, MAX_OBJECTS, 2)) * size
    boxes = np.concatenate([centres - extents / 2, centres + extents / 2], axis=-1)
    boxes = np.clip(boxes, 0, size - 1).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=(batch, MAX_OBJECTS)).astype("int32")
    return boxes, labels


def is_out_of_memory(error):
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def measure_rendering(size, batches, quick):
    """Worker side: median ms of a jitted `render_targets` per batch size."""
    import jax
    import numpy as np

    from keras_centernet.targets import render_targets

    grid = size // 4
    result = {}
    for batch in batches:
        boxes, labels = random_objects(np.random.default_rng(batch), batch, size)
        boxes = jax.device_put(boxes / 4.0)
        labels = jax.device_put(labels)
        fn = jax.jit(
            lambda b, l: render_targets(b, l, (grid, grid), NUM_CLASSES, max_objects=MAX_OBJECTS)
        )
        result[f"render_ms_bs{batch}"] = common.median_ms(
            lambda: fn(boxes, labels), jax.block_until_ready,
            warmup=1 if quick else 3, repeats=3 if quick else 50, min_seconds=0.0 if quick else 1.0,
        )
    return result


def measure_training(preset, dtype, size, batch, steps, quick, augment=False):
    """Worker side: one model in one precision, at `batch` or the largest half of it that fits.

    With `augment`, the model carries `BatchAugmentation(size)` and takes what
    `augment_on="accelerator"` readers yield: uint8 RGBA canvases of 640x640
    holding a 640x480 image each (a COCO-sized photo), augmented inside the step.
    """
    import gc

    import jax
    import keras
    import numpy as np

    import keras_centernet as kc

    keras.mixed_precision.set_dtype_policy(dtype)
    result = {"requested_batch": batch, "out_of_memory_at": []}
    while batch >= 1:
        extra = {"augmentation": kc.layers.BatchAugmentation(size, seed=0)} if augment else {}
        model = kc.CenterNet.from_preset(preset, num_classes=NUM_CLASSES, **extra)
        model.compile(optimizer=keras.optimizers.Adam(1.25e-4))
        result["has_dcn"] = any(isinstance(layer, kc.layers.DeformableConv2D)
                                for layer in model._flatten_layers())
        rng = np.random.default_rng(0)
        if augment:
            canvases = rng.integers(0, 256, (batch, CANVAS, CANVAS, 4), dtype=np.uint8)
            canvases[:, 480:] = 0
            canvases[:, :480, :, 3] = 255
            images = jax.device_put(canvases)
            boxes, labels = random_objects(rng, batch, 480)
        else:
            images = jax.device_put(rng.uniform(0, 255, size=(batch, size, size, 3)).astype("float32"))
            boxes, labels = random_objects(rng, batch, size)
        targets = {"boxes": jax.device_put(boxes), "labels": jax.device_put(labels)}
        try:
            started = time.perf_counter()
            logs = model.train_on_batch(images, targets, return_dict=True)
            result["compile_s"] = time.perf_counter() - started
            for _ in range(1 if quick else 3):
                model.train_on_batch(images, targets)
            times = []
            for _ in range(steps):
                started = time.perf_counter()
                logs = model.train_on_batch(images, targets, return_dict=True)
                times.append(time.perf_counter() - started)
            break
        except Exception as error:
            if not is_out_of_memory(error) or batch == 1:
                raise
            result["out_of_memory_at"].append(batch)
            result["out_of_memory_error"] = str(error).splitlines()[0][:300]
            del model, images, targets
            keras.backend.clear_session()
            gc.collect()
            batch //= 2
    times.sort()
    step_ms = times[len(times) // 2] * 1e3
    result.update(
        batch=batch,
        step_ms=step_ms,
        img_s=batch * 1e3 / step_ms,
        loss=float(logs["loss"]),
        heatmap_loss=float(logs["heatmap_loss"]),
    )

    # `fit` on the same batch, repeated by a generator; `(x, y, None)` has
    # the structure of `train_on_batch`'s data, so the compiled step is reused.
    def batches():
        while True:
            yield images, targets, None

    fit_steps = 2 * steps
    model.fit(batches(), steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    started = time.perf_counter()
    history = model.fit(batches(), steps_per_epoch=fit_steps, epochs=1, verbose=0, shuffle=False)
    fit_ms = (time.perf_counter() - started) * 1e3 / fit_steps
    result.update(fit_step_ms=fit_ms, fit_img_s=batch * 1e3 / fit_ms, fit_loss=history.history["loss"][-1])
    # The compiled step back to back, no host wait between steps.
    _, _, loop_ms = common.run_train_function(model, (images, targets, None), steps)
    result.update(loop_step_ms=loop_ms, loop_img_s=batch * 1e3 / loop_ms)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["peak_gib"] = stats["peak_bytes_in_use"] / 2**30
    return result


def worker(args):
    import jax

    # Benchmark-only: options of the XLA deformable convolution (profile_dcn.py's).
    common.dcn_xla_options_from_environment()

    # Benchmark-only: "fused" leaves the kernel gradients' layout change to XLA
    # (fused into the optimizer's update), as before `ops.kernel_gradients`.
    if os.environ.get("BENCH_KERNEL_GRADIENTS") == "fused":
        from keras_centernet.ops import kernel_gradients

        kernel_gradients.PLATFORMS = ()

    from keras_centernet.ops.deform_conv import resolve_implementation

    dcn = ":".join([resolve_implementation([(1,)]), *(o for o in (options or "").split(",") if o)])
    common.emit("environment", line=common.environment_line(), platform=jax.devices()[0].platform)
    for case in args.cases:
        common.start(case)
        try:
            if case == "render_targets":
                batches = sorted({args.batch, max(1, args.batch // 2), max(1, args.batch // 4)}, reverse=True)
                values = measure_rendering(args.size, batches, args.quick)
            else:
                preset, dtype, *mode = case.split(":")
                values = measure_training(preset, dtype, args.size, args.batch, args.steps,
                                          args.quick, augment=mode == ["augment"])
            has_dcn = values.pop("has_dcn", True)
            common.emit(case, gpu=jax.devices()[0].device_kind,
                        dcn=dcn if has_dcn else "none", **values)
        except Exception as error:  # reported in the table, the other cases go on
            common.emit(case, gpu=jax.devices()[0].device_kind, dcn=dcn,
                        error=f"{type(error).__name__}: {str(error)[:600]}")


def merged_key(results, case, values):
    """The key of a merged case: `case`, or `case@GPU|DCN` beside a measurement from elsewhere.

    A rerun on the same GPU with the same DCN implementation replaces the
    earlier figure; one from another GPU or implementation is kept beside it.
    """
    prior = results.get(case)
    if prior is None or "@" in case:
        return case
    if (prior.get("gpu"), prior.get("dcn")) == (values.get("gpu"), values.get("dcn")):
        return case
    return f"{case}@{values.get('gpu', '?')}|{values.get('dcn', '?')}"


def merge_result(results, case, values):
    """Puts `values` into `results` under `merged_key`, keeping measurements over errors.

    An error (a case stopped or failed) never replaces a measurement; a
    measurement drops the errors of the same case on the same GPU (those of a
    run whose time budget stopped it, say).
    """
    key = merged_key(results, case, values)
    prior = results.get(key)
    if "error" in values:
        if prior is not None and "error" not in prior:
            return
    else:
        for other in [k for k, v in results.items() if "error" in v and k != key]:
            if (common.base_case(other) == common.base_case(case)
                    and results[other].get("gpu") == values.get("gpu")):
                del results[other]
    results[key] = values


def _augment_row(preset, result, plain, problems):
    """The row (a list of one, or none after an error) of one case with augmentation."""
    if "error" in result:
        problems.append(f"- `{preset}` bf16 with augmentation: {result['error']}")
        return []
    official_rate = common.OFFICIAL.get(preset, {}).get("training_img_s", {}).get("mixed_bfloat16")
    augment_ms = None
    if plain.get("fit_step_ms"):
        augment_ms = result["fit_step_ms"] - plain["fit_step_ms"]
    return [[
        preset, "bf16", result.get("gpu", "?"), str(result["batch"]),
        common.fmt(result.get("fit_step_ms"), 1),
        common.fmt(result.get("fit_img_s"), 0), common.fmt(plain.get("fit_img_s"), 0),
        common.fmt(augment_ms, 1),
        common.ratio(result.get("fit_img_s"), official_rate) if official_rate else "",
    ]]


def render(results, environment, args):
    """The markdown text of the results gathered so far.

    Each case names the GPU it ran on (`gpu`; cases merged from runs on
    different machines keep their own), shown as a column.
    """
    rendering = results.get("render_targets", {})
    rows, problems = [], []
    for preset in args.presets:
        official = common.OFFICIAL.get(preset, {})
        cases = [(dtype, key) for dtype in common.DTYPES for key in results
                 if common.base_case(key) == f"{preset}:{dtype}"]
        for dtype, key in cases:
            result = results[key]
            if "error" in result:
                problems.append(f"- `{preset}` {common.SHORT_DTYPE[dtype]}: {result['error']}")
                rows.append([preset, common.SHORT_DTYPE[dtype], result.get("gpu", "?"),
                             result.get("dcn", "?")] + ["error"] + [""] * 11)
                continue
            batch = result["batch"]
            note = ""
            if result.get("out_of_memory_at"):
                note = f" (out of memory at {', '.join(map(str, result['out_of_memory_at']))})"
            official_rate = official.get("training_img_s", {}).get(dtype)
            render_ms = rendering.get(f"render_ms_bs{batch}")
            step_ms = result.get("fit_step_ms", result["step_ms"])
            share = None if render_ms is None else 100 * render_ms / step_ms
            rows.append([
                preset,
                common.SHORT_DTYPE[dtype],
                result.get("gpu", "?"),
                result.get("dcn", "?"),
                f"{batch}{note}",
                common.fmt(result.get("compile_s"), 0),
                common.fmt(result["img_s"], 0),
                common.fmt(result.get("fit_step_ms"), 1),
                common.fmt(result.get("fit_img_s"), 0),
                common.fmt(result.get("loop_img_s"), 0),
                common.fmt(official_rate, 0) if official_rate else "",
                common.ratio(result.get("fit_img_s"), official_rate) if official_rate else "",
                common.fmt(share, 1),
                common.fmt(result.get("peak_gib"), 1),
                common.fmt(official.get("training_peak_gib"), 1) if dtype == "float32" else "",
                f"{result['loss']:.3g}",
            ])
    augment_rows = []
    merged = [c.split(":")[0] for c in results if common.base_case(c).endswith(":augment")]
    for preset in dict.fromkeys([*args.augment_presets, *merged]):
        for key in [k for k in results if common.base_case(k) == f"{preset}:mixed_bfloat16:augment"]:
            result = results[key]
            # The plain case of the same GPU and DCN implementation.
            plain = next((v for k, v in results.items()
                          if common.base_case(k) == f"{preset}:mixed_bfloat16"
                          and (v.get("gpu"), v.get("dcn")) == (result.get("gpu"), result.get("dcn"))),
                         {})
            augment_rows.extend(_augment_row(preset, result, plain, problems))
    render_rows = [
        [key.replace("render_ms_bs", ""), common.fmt(value, 3)]
        for key, value in rendering.items() if key.startswith("render_ms_bs")
    ]
    if "error" in rendering:
        problems.append(f"- `render_targets`: {rendering['error']}")
    grid = args.size // 4
    gpus = sorted({v.get("gpu", "?") for v in results.values() if isinstance(v, dict)} - {"?"})
    if len(gpus) > 1:
        environment += (f" Cases merged from runs on {', '.join(gpus)}: each row names its GPU "
                        "(the line above is the last run's); compare rows of one GPU only.")
    text = [
        "# CenterNet training step",
        "",
        environment,
        f"{args.size}x{args.size} input, {MAX_OBJECTS} objects per image, {NUM_CLASSES} classes, "
        "Adam, random weights and data, JAX backend (XLA's default matmul precision: TF32 in "
        "float32, as PyTorch's default), targets rendered inside the step. Written by "
        "`benchmarks/training_step.py`; its docstring says how each figure is taken. "
        "Official = the PyTorch training of `/work/shared/ANCHORS.md`, measured on an H100 "
        "(targets precomputed by its data loader); on another GPU (an H200 has the H100's "
        "compute and 1.4x its memory bandwidth) the ratio compares across GPUs. Goals: >= 2x official (issue 5), >= 3x (ANCHORS.md); "
        "target rendering < 5% of the step.",
        "",
        "## Training throughput",
        "",
        "`DCN` = the `deform_conv2d` implementation the step ran (`reference`: the "
        "`keras.ops` gathers with automatic gradients, the default before the XLA version; "
        "`xla`: `deform_conv_xla.py` as it was at the run, with its benchmark options if any: rows of "
        "2026-12-06 on a GPU sort the input gradient's scatter-add, the default since; the H100 "
        "`xla` rows of this table also write the zero-padded input before the gathers "
        "(`PAD_BARRIER`, the default since 2026-12-06); `none`: the network has no DCN; "
        "`?`: not recorded). "
        "`train_on_batch img/s` = batch / median time of one call; `fit` = a `fit` of "
        "repeated batches (`fit ms` per step); `loop img/s` = the compiled step run back to back; "
        "`ours/official` = `fit img/s` / official img/s; `render %` = `render_targets` alone / "
        "the `fit` step.",
        "",
        *common.table(
            ["preset", "precision", "GPU", "DCN", "batch", "compile s", "train_on_batch img/s", "fit ms",
             "fit img/s", "loop img/s", "official img/s", "ours/official", "render %",
             "peak GiB", "official peak GiB", "loss"],
            rows,
        ),
        "",
        "## With the official augmentation inside the step (accelerator mode)",
        "",
        f"Inputs are uint8 RGBA canvases of {CANVAS}x{CANVAS} holding a 640x480 image (what "
        "`augment_on=\"accelerator\"` readers yield); `BatchAugmentation` does the official "
        "random crop, flip and colour jitter on the device. `augmentation ms` = fit step with "
        "it - fit step of the plain case above (which takes 512x512 float images).",
        "",
        *common.table(
            ["preset", "precision", "GPU", "batch", "fit ms", "fit img/s", "without augmentation img/s",
             "augmentation ms", "ours/official"],
            augment_rows,
        ),
        "",
        f"## Target rendering alone ({grid}x{grid} grid, {MAX_OBJECTS} objects, {NUM_CLASSES} classes)",
        "",
        *common.table(["batch", "render_targets ms (median)"], render_rows),
        "",
    ]
    if problems:
        text += ["## Problems", "", *problems, ""]
    return "\n".join(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--dtypes", nargs="+", default=list(common.DTYPES))
    parser.add_argument("--augment-presets", nargs="*", default=["resnet18_dcn", "dla34"],
                        help="presets also measured with the official augmentation inside the "
                             "step (BatchAugmentation on 640x640 uint8 canvases), in bf16")
    parser.add_argument("--skip-plain", action="store_true",
                        help="only the rendering and augmentation cases")
    parser.add_argument("--skip-render", action="store_true",
                        help="leave out the target-rendering case")
    parser.add_argument("--render-only", action="store_true",
                        help="run no case: write the table of the --merge files")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case")
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke test: 64 px, batch 2, resnet18_dcn and dla34, 2 steps")
    parser.add_argument("--case-timeout", type=float, default=300.0,
                        help="seconds for one model in one precision, compilation included")
    parser.add_argument("--budget", type=float, default=3600.0,
                        help="seconds for the whole run; cases not started by then are listed as not run")
    parser.add_argument("--merge", nargs="+", default=[],
                        help="JSON results of earlier runs; cases measured now replace theirs")
    parser.add_argument("--output", default=None, help="markdown file to write")
    parser.add_argument("--log", default=None, help="where the workers' output goes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("cases", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch, args.steps = 64, 2, 2
        if args.presets == list(PRESETS):
            args.presets = ["resnet18_dcn", "dla34"]
    if args.worker:
        return worker(args)

    deadline = time.monotonic() + args.budget
    here = os.path.dirname(os.path.abspath(__file__))
    output = args.output or os.path.join(
        here, "results", "training_step_quick.md" if args.quick else "training_step.md"
    )
    log = args.log or os.path.splitext(output)[0] + ".log"
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--size", str(args.size),
               "--batch", str(args.batch), "--steps", str(args.steps)]
    if args.quick:
        command.append("--quick")
    cases = [] if args.skip_render else ["render_targets"]
    if not args.skip_plain:
        cases += [f"{p}:{d}" for p in args.presets for d in args.dtypes]
    cases += [f"{p}:mixed_bfloat16:augment" for p in args.augment_presets]
    if args.render_only:
        cases = []
    results = {}
    environment = "Device: (not reported)"
    for path in args.merge:
        with open(path) as f:
            earlier = json.load(f)
        environment = earlier.get("environment", environment)
        for case, values in earlier["cases"].items():
            values.setdefault("gpu", common.gpu_name(environment))
            merge_result(results, case, values)

    def on_result(result):
        nonlocal environment
        case = result.pop("case")
        if case == "environment":
            environment = result["line"]
            print(environment, flush=True)
            return
        merge_result(results, case, result)
        print(case, json.dumps(result), flush=True)
        common.write_text(output, render(results, environment, args))
        common.write_text(
            os.path.splitext(output)[0] + ".json",
            json.dumps({"environment": environment, "cases": results}, indent=1),
        )

    if cases:
        common.run_cases(command + ["--"], cases, args.case_timeout, deadline, log, on_result,
                         one_worker_per_case=True)
    else:  # --render-only: the joined results, for gpu.py and later merges
        common.write_text(
            os.path.splitext(output)[0] + ".json",
            json.dumps({"environment": environment, "cases": results}, indent=1),
        )
    text = render(results, environment, args)
    common.write_text(output, text)
    print()
    print(text)
    print(f"written to {output}")


if __name__ == "__main__":
    main()
