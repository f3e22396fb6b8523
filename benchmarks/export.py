"""File size, CPU latency and detection quality of every export format.

For each preset (default `resnet18_dcn`, `dla34`, `hourglass104`), at 512 px:
the Keras model and its exports by `kc.export.export_model` (SavedModel,
TFLite float32 / float16 / int8, ONNX run by ONNX Runtime), each measured for

- the export's wall time and the artifact's size on disk (Keras: `.keras`);
- latency: median wall time of one batch-1 image, decoding included, on 2
  threads (TensorFlow intra-op threads, `tf.lite.Interpreter(num_threads=2)`,
  ONNX Runtime `intra_op_num_threads=2`), after warm-up calls;
- on `--num-images` images of `kc.data.synthetic` (evaluation mode):
  the COCO AP (pycocotools, `kc.evaluation.coco_evaluate`) and the agreement
  with Keras' detections: the share of Keras' top-10 detections per image that
  the artifact reproduces (same label, box within 1 px) and the largest
  rank-by-rank score difference. With random weights (no `--model`) the AP is
  about 0 and only the agreement means something; the heads' outputs are then
  scaled so the maps vary as a trained model's do (heatmap logits by 1.5,
  sizes by 2 map pixels), as in tests/export: random dla34 heads give scores
  equal to 1e-4, which any detection order would match.

    python benchmarks/export.py                          # writes benchmarks/results/export.md
    python benchmarks/export.py --presets resnet18_dcn   # one preset
    python benchmarks/export.py --model trained.keras    # a trained model (AP meaningful)
    python benchmarks/export.py --presets resnet18_small --model saved_models/demo80/model.keras \
        --size 128 --num-images 128 --demo-data \
        --output benchmarks/results/export_trained.md   # the demo's model on its held-out images

With `--model`, int8 is calibrated on other images of the same synthetic
distribution (seed 0, the demo's training seed) than those evaluated.

Cases run in worker processes with a time limit each (`benchmarks/common.py`),
and the table is rewritten after every case. Artifacts go to
`saved_models/<preset>/` (ignored by git).
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import common  # noqa: E402

ARTIFACTS = ("keras", "saved_model", "tflite_float32", "tflite_float16", "tflite_int8", "onnx")
EXPORT_ARGS = {
    "saved_model": ("saved_model", None),
    "tflite_float32": ("tflite", None),
    "tflite_float16": ("tflite", "float16"),
    "tflite_int8": ("tflite", "int8"),
    "onnx": ("onnx", None),
}
THREADS = 2


def _size_bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


class Runner:
    """`predict_on_batch(images)` -> detection dict of NumPy arrays, for one artifact."""

    def __init__(self, artifact, path, model=None):
        import numpy as np
        import tensorflow as tf

        self.np = np
        if artifact == "keras":
            self.fn = lambda x: {k: np.asarray(v) for k, v in model.predict_on_batch(x).items()}
        elif artifact == "saved_model":
            loaded = tf.saved_model.load(path)
            serve = loaded.signatures["serving_default"]
            self.keep = loaded
            self.fn = lambda x: {k: v.numpy() for k, v in serve(images=tf.constant(x)).items()}
        elif artifact.startswith("tflite"):
            interpreter = tf.lite.Interpreter(model_path=path, num_threads=THREADS)
            runner = interpreter.get_signature_runner("serving_default")
            self.fn = lambda x: self._per_image(runner, x)
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = THREADS
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            names = [o.name for o in session.get_outputs()]
            self.fn = lambda x: dict(zip(names, session.run(None, {"images": np.asarray(x, np.float32)})))

    def _per_image(self, runner, images):
        outputs = [runner(images=self.np.asarray(image[None], self.np.float32)) for image in images]
        return {k: self.np.concatenate([o[k] for o in outputs]) for k in outputs[0]}

    def predict_on_batch(self, images):
        return self.fn(self.np.asarray(images))


def agreement(actual, expected, top=10, box_atol=1.0):
    """Share of `expected`'s top detections found in `actual`, and the largest rank-wise score gap."""
    import numpy as np

    found = total = 0
    for b in range(len(expected["scores"])):
        for i in range(top):
            total += 1
            same = (actual["labels"][b] == expected["labels"][b][i]) & (
                np.abs(actual["boxes"][b] - expected["boxes"][b][i]).max(axis=-1) <= box_atol
            )
            found += bool(same.any())
    gap = np.abs(np.sort(actual["scores"], axis=1) - np.sort(expected["scores"], axis=1)).max()
    return found / total, float(gap)


def strengthen_heads(model, images):
    """Heatmap logits varying by 1.5 around -2.19, sizes by 2 around 4, offsets by 0.3 around 0.5."""
    import numpy as np

    raw = {k: np.asarray(v) for k, v in model(images, training=False).items()}
    heads = model.stack_heads(model.num_stacks - 1)
    for name, (std, mean) in {"heatmap": (1.5, -2.19), "size": (2.0, 4.0), "offset": (0.3, 0.5)}.items():
        conv = heads[name].output_conv
        spread = (raw[name] - np.asarray(conv.bias)).std()
        conv.kernel.assign(np.asarray(conv.kernel) * (std / spread))
        conv.bias.assign(np.full(conv.bias.shape, mean, np.float32))


def worker(cases, args):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    import numpy as np

    import keras_centernet as kc
    from keras_centernet.cli import DEMO_SYNTHETIC

    models, references = {}, {}
    for case in cases:
        common.start(case)
        preset, artifact = case.split("/")
        if preset not in models:
            if args.model:
                model = keras.saving.load_model(args.model)
            else:
                keras.utils.set_random_seed(0)
                model = kc.CenterNet.from_preset(preset, num_classes=5)
            model.preset = preset
            models[preset] = model
        model = models[preset]
        size = (args.size, args.size)
        # `centernet demo`'s held-out images (its defaults, seed 1) or the default set.
        shapes = DEMO_SYNTHETIC if args.demo_data else {}
        dataset = kc.data.synthetic(num_images=args.num_images, image_size=size, batch_size=1,
                                    training=False, seed=1 if args.demo_data else args.seed, **shapes)
        calibration = None
        if args.model:  # the trained model's image distribution, other images
            calibration = kc.data.synthetic(num_images=args.calibration_images, image_size=size,
                                            batch_size=1, training=False, seed=0, **shapes)
        if not args.model and not args.raw_heads and not getattr(model, "strengthened", False):
            strengthen_heads(model, next(iter(dataset))[0].numpy())
            model.strengthened = True
        folder = os.path.join("saved_models", preset)
        started = time.perf_counter()
        if artifact == "keras":
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, "model.keras")
            model.save(path)
        else:
            format, quantization = EXPORT_ARGS[artifact]
            target = os.path.join(folder, "saved_model") if format == "saved_model" else folder
            path = kc.export.export_model(model, target, format=format, input_size=size,
                                          quantization=quantization, representative_dataset=calibration,
                                          num_calibration_images=args.calibration_images)
        export_s = time.perf_counter() - started
        runner = Runner(artifact, path, model)
        image = next(iter(dataset))[0].numpy()
        latency = common.median_ms(lambda: runner.predict_on_batch(image), sync=lambda out: out,
                                   warmup=2, repeats=args.repeats, min_seconds=0,
                                   max_repeats=args.repeats)
        detections = [runner.predict_on_batch(batch[0].numpy()) for batch in dataset]
        if artifact == "keras":
            references[preset] = detections
        found, gap = 1.0, 0.0
        if preset in references and artifact != "keras":
            pairs = [agreement(a, e) for a, e in zip(detections, references[preset])]
            found = float(np.mean([p[0] for p in pairs]))
            gap = max(p[1] for p in pairs)
        metrics = kc.evaluation.coco_evaluate(runner, dataset, verbose=0)
        common.emit(case, export_s=export_s, size_mb=_size_bytes(path) / 2**20, latency_ms=latency,
                    ap=metrics["AP"], ap50=metrics["AP50"], found=found, score_gap=gap,
                    ops=sorted(set(kc.export.tflite_op_names(path))) if artifact.startswith("tflite") else None)


def write_table(results, args, path):
    from keras_centernet.cli import DEMO_SYNTHETIC

    presets = list(dict.fromkeys([*args.presets, "resnet18_dcn", "dla34", "hourglass104"]))

    def order(case):
        preset, artifact = case.split("/")
        return (presets.index(preset) if preset in presets else len(presets), preset,
                ARTIFACTS.index(artifact))

    rows = []
    for case, r in sorted(results.items(), key=lambda item: order(item[0])):
        preset, artifact = case.split("/")
        if "error" in r:
            rows.append([preset, artifact] + ["n/a"] * 8 + [r["error"]])
            continue
        flex = [op for op in (r.get("ops") or []) if op.startswith("Flex")]
        note = ("built-in ops only" if not flex else f"Flex: {flex}") if r.get("ops") else ""
        rows.append([
            preset, artifact, common.fmt(r["size_mb"]), common.fmt(r["latency_ms"], 0),
            common.fmt(r["export_s"], 0), common.fmt(r["ap"], 3), common.fmt(r["ap50"], 3),
            common.fmt(100 * r["found"], 0), f"{r['score_gap']:.1e}",
            "trained" if args.model else ("raw" if r.get("raw_heads") else "scaled"), note,
        ])
    weights = f"trained model `{args.model}`" if args.model else "random weights (AP ~ 0: read the agreement)"
    lines = [
        "# Export formats: size, CPU latency, agreement with Keras",
        "",
        f"`python benchmarks/export.py` at {args.size} px, batch 1, {THREADS} threads, {weights}; "
        f"{args.num_images} synthetic images (`kc.data.synthetic`, evaluation mode, "
        f"{'the held-out images of `centernet demo`: seed 1, ' + str(DEMO_SYNTHETIC) if args.demo_data else f'seed {args.seed}'}); "
        f"latency: median of {args.repeats} calls after 2 warm-ups, decoding included.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        "often shared with other jobs: latencies are rough (they vary by 2x between runs) and "
        "the export times more so.",
        "",
    ]
    lines += common.table(
        ["preset", "artifact", "size MiB", "latency ms", "export s", "AP", "AP50",
         "Keras top-10 found %", "max score gap", "heads", "ops"],
        rows,
    )
    lines += [
        "",
        "`Keras top-10 found %`: of Keras' 10 best detections per image, the share the artifact "
        "also returns (same label, box within 1 px). `max score gap`: the largest difference of "
        "the sorted scores (rank by rank). Keras' size is the `.keras` file. `heads`: `trained`, "
        "or for random weights `scaled` (outputs scaled to vary as a trained model's, see the "
        "docstring) or `raw` (as initialised: near-constant maps, so the agreement columns say "
        "little).",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    if not args.model:
        lines += [
            "Reading it: float32 TFLite, ONNX and the SavedModel give Keras' detections (scores within "
            "4e-6); float16 moves scores by 1e-3 to 1e-2. int8 files are 4x smaller, but int8 does not "
            "keep the random models' detections: their features vary across an image by a "
            "small fraction of their range, below int8's step, and the scaled heads amplify the rounding "
            "(in tests/export a hand-set model with real signal keeps every object in int8, IoU >= 0.8). "
            "The AP of random weights is 0 for every artifact; pass `--model trained.keras` for a "
            "meaningful AP column. Rows with `raw` heads come from an earlier run, before the heads were "
            "scaled; there hourglass104's ONNX conversion was killed (memory of the shared machine, the "
            "worker holding the model and its other artifacts) and was not retried.",
            "",
        ]
    common.write_text(path, "\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["resnet18_dcn", "dla34", "hourglass104"])
    parser.add_argument("--artifacts", nargs="+", default=list(ARTIFACTS), choices=ARTIFACTS)
    parser.add_argument("--model", default=None, help="a trained .keras model (one preset name then)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11, help="seed of the evaluated synthetic images")
    parser.add_argument("--demo-data", action="store_true",
                        help="evaluate on the held-out synthetic images of `centernet demo`")
    parser.add_argument("--note", default=None, help="a paragraph added under the table")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calibration-images", type=int, default=16, help="int8 calibration images")
    parser.add_argument("--raw-heads", action="store_true",
                        help="random weights as initialised (no scaling of the heads)")
    parser.add_argument("--case-timeout", type=float, default=1200)
    parser.add_argument("--budget-minutes", type=float, default=60)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "export.md"))
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the table from the stored results, run nothing")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("cases", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.cases, args)
        return
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    cases = [f"{preset}/{artifact}" for preset in args.presets for artifact in args.artifacts]
    results = {case: {"error": "not run yet"} for case in cases}
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--size", str(args.size),
               "--num-images", str(args.num_images), "--repeats", str(args.repeats),
               "--calibration-images", str(args.calibration_images), "--seed", str(args.seed)]
    if args.demo_data:
        command += ["--demo-data"]
    if args.model:
        command += ["--model", args.model]
    if args.raw_heads:
        command += ["--raw-heads"]
    # Earlier runs' results of other cases stay in the table.
    store = os.path.join("runs", "benchmark_export.json")
    previous = {}
    if os.path.exists(store):
        with open(store) as file:
            previous = json.load(file)
    results = {**{c: r for c, r in previous.items() if c not in results}, **results}
    if args.table_only:
        write_table(previous, args, args.output)
        return

    def on_result(result):
        result["raw_heads"] = bool(args.raw_heads) and not args.model
        results[result["case"]] = result
        write_table(results, args, args.output)
        common.write_text(store, json.dumps(results, indent=1))
        print(json.dumps(result), flush=True)

    write_table(results, args, args.output)
    common.run_cases(command, cases, args.case_timeout,
                     time.monotonic() + 60 * args.budget_minutes,
                     os.path.join("runs", "benchmark_export.log"), on_result)


if __name__ == "__main__":
    main()
