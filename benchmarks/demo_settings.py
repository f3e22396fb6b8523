"""COCO AP of the demo's training settings, swept on the GPU machine.

The README's main job (`centernet demo`) must learn the synthetic set from
scratch in about ten CPU minutes. CPU runs are too slow to compare settings,
so this script trains the same model on the same images under the JAX
backend, many settings at once on one GPU, and scores each with pycocotools
at four points of its run. Two steps:

    # here (TensorFlow): the demo's own training canvases and validation set
    python benchmarks/demo_settings.py dump .sweep/demo.npz
    # on the GPU machine (JAX; carry the keras and pycocotools wheels)
    KERAS_BACKEND=jax python benchmarks/demo_settings.py run .sweep/demo.npz \\
        --cases base:2e-3:56:aug lr1:1e-3:56:aug --output $OUT/demo_settings.md

A case is `name:learning_rate:epochs:augmentation[:clamp[:options]]` with
augmentation `aug` (the official random crop, flip and colour, batched in
the step: what the demo does), `flip` (flip and colour only) or `none`,
clamp `straight_through` (the demo's, default) or `official`, and options a
comma-separated list that changes the model or batch from the demo's:
`width=16` (ResNet-18 planes of the first stage), `neck=64-32-32` (the
up-convolution channels), `kernels=2-2-2` (their kernel sizes), `head=32`
(head channels), `batch=16`, `images=1024` (the first N training images),
`box_head=ltrb`, `iou_loss=diou`, `heatmap_loss=quality_focal`,
`ltrb_gaussian=1` (CenterNet's options), `ema=0.99` (Adam's weight EMA with
this momentum, written into the weights at the end of `fit`), `mixed=1`
(`mixed_bfloat16`), `hourglass=32-32-48-48-64` (a one-stack
hourglass of these level widths, one block each, instead of the demo's ResNet) and with it
`family=triplets` (`CenterNetTriplets` on that hourglass, for a comparison at one budget). Otherwise every case uses the demo's preset,
128 px input, batch 32, 512 training images, a cosine schedule with 3
warm-up epochs and Adam. The figures are COCO AP and AP50 of pycocotools on
the demo's 128 held-out images, as `centernet demo` reports them; after
`fit`, the final weights are scored once more plainly and with the paper's
flip test. Each case
prints its curve as it goes, so a case cut off by the time limit still
reports the points it reached.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

BATCH = 32


def parse_case(spec):
    """`name:rate:epochs:augmentation[:clamp[:options]]` -> a dict of the case's settings."""
    name, rate, epochs, augmentation, *rest = spec.split(":")
    case = {"name": name, "rate": float(rate), "epochs": int(epochs),
            "augmentation": augmentation,
            "clamp": rest[0] if rest and rest[0] else "straight_through",
            "options": {}}
    for item in (rest[1].split(",") if len(rest) > 1 and rest[1] else []):
        key, _, value = item.partition("=")
        if key not in ("width", "neck", "kernels", "head", "batch", "images", "box_head",
                       "heatmap_loss", "iou_loss", "ltrb_gaussian", "hourglass", "family",
                       "ema", "mixed"):
            raise SystemExit(f"unknown option {key!r} in {spec}")
        case["options"][key] = value
    case["batch"] = int(case["options"].get("batch", BATCH))
    case["mixed"] = _flag(case["options"].get("mixed", "0"))
    return case


def _flag(value):
    """A case option's `1`/`0` (or `true`/`false`) as a bool."""
    return value not in ("0", "false", "False")


def build_model(case, data):
    """The demo's model, or the variant that the case's options describe.

    The case's precision (`mixed=1`: `mixed_bfloat16`, else float32) becomes
    Keras' global dtype policy first, as the model's layers take it when built.
    """
    import keras

    import keras_centernet as kc

    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if case["mixed"] else "float32")

    options = case["options"]
    extra = {}
    size = int(data["image_size"])
    if case["augmentation"] == "aug":
        extra["augmentation"] = kc.layers.BatchAugmentation(size)
    elif case["augmentation"] == "flip":
        extra["augmentation"] = kc.layers.BatchAugmentation(
            size, random_crop=False, scale=0.0, shift=0.0)
    elif case["augmentation"] != "none":
        raise SystemExit(f"unknown augmentation {case['augmentation']!r}")
    for key in ("box_head", "heatmap_loss", "iou_loss"):
        if key in options:
            extra[key] = options[key]
    if "ltrb_gaussian" in options:
        extra["ltrb_gaussian"] = _flag(options["ltrb_gaussian"])
    if "hourglass" in options:
        dims = tuple(int(d) for d in options["hourglass"].split("-"))
        backbone = kc.backbones.HourglassBackbone(
            num_stacks=1, dims=dims, num_blocks=(1,) * len(dims), stem_channels=dims[0],
            output_channels=2 * dims[0])
        common = dict(num_classes=int(data["num_classes"]), head_channels=int(options.get("head", 64)),
                      size_divisor=4 * 2 ** (len(dims) - 1), focal_clamp_gradient=case["clamp"])
        if options.get("family", "centernet") == "triplets":
            return kc.CenterNetTriplets(backbone, pool_channels=common["head_channels"] // 2,
                                        augmentation=extra.get("augmentation"), **common)
        return kc.CenterNet(backbone, **common, **extra)
    if "family" in options:
        raise SystemExit("`family` needs `hourglass=...`")
    preset = str(data["preset"])
    if not set(options) - {"batch", "images", "box_head", "heatmap_loss", "iou_loss",
                           "ltrb_gaussian", "ema", "mixed"}:
        return kc.CenterNet.from_preset(
            preset, num_classes=int(data["num_classes"]),
            focal_clamp_gradient=case["clamp"], **extra)
    if preset != "resnet18_small":
        raise SystemExit(f"model options need the resnet18_small preset, not {preset!r}")
    channels = tuple(int(c) for c in options.get("neck", "128-64-64").split("-"))
    kernels = tuple(int(k) for k in options.get("kernels", "4-4-4").split("-"))
    return kc.CenterNet(
        backbone=kc.backbones.ResNetBackbone(depth=18, width=int(options.get("width", 32))),
        neck=kc.necks.UpConvNeck(filters=channels, kernel_sizes=kernels),
        num_classes=int(data["num_classes"]), head_channels=int(options.get("head", 64)),
        focal_clamp_gradient=case["clamp"], **extra)


def dump(path, extra_args):
    """Writes the demo's training canvases, validation images and ground truth."""
    from keras_centernet import cli

    args = cli.build_parser().parse_args(["demo", *extra_args])
    args.dataset = "synthetic"
    train_ds, info = cli.make_dataset(args, training=True)
    val_ds, val_info = cli.make_dataset(args, training=False)

    def stack(dataset, keys):
        columns = {key: [] for key in ("images", *keys)}
        for images, targets in dataset:
            columns["images"].append(np.asarray(images))
            for key in keys:
                columns[key].append(np.asarray(targets[key]))
        out = {"images": np.concatenate(columns["images"])}
        for key in keys:
            parts = columns[key]
            if parts[0].ndim >= 2 and key in ("boxes", "labels"):
                width = max(p.shape[1] for p in parts)
                fill = -1 if key == "labels" else 0
                parts = [np.pad(p, [(0, 0), (0, width - p.shape[1])] + [(0, 0)] * (p.ndim - 2),
                                constant_values=fill) for p in parts]
            out[key] = np.concatenate(parts)
        return out

    train = stack(train_ds, ("boxes", "labels"))
    val = stack(val_ds, ("image_id", "transform"))
    canvases = train["images"]
    if (canvases[..., 3] == 255).all():
        canvases = canvases[..., :3]  # the images fill their canvases: no alpha to keep
    np.savez_compressed(
        path, train_images=canvases, train_boxes=train["boxes"],
        train_labels=train["labels"], val_images=val["images"].astype("uint8"),
        val_image_id=val["image_id"],
        val_transform=val["transform"], num_classes=info.num_classes, preset=args.preset,
        image_size=args.image_size,
        ground_truth=json.dumps(val_info.ground_truth),
        # Our label i is category_ids[i] of the ground truth.
        label_to_category_id=json.dumps(list(val_info.category_ids)),
    )
    print(f"{path}: {len(train['images'])} training canvases {train['images'].shape[1:]}, "
          f"{len(val['images'])} validation images, {info.num_classes} classes")


def run_case(spec, data_path):
    """Trains one case; prints its curve as a JSON line after every evaluation."""
    import keras

    from keras_centernet import training

    case = parse_case(spec)
    data = np.load(data_path)
    count = int(case["options"].get("images", len(data["train_labels"])))
    images, boxes, labels = (data[key][:count]
                             for key in ("train_images", "train_boxes", "train_labels"))
    if images.shape[-1] == 3:  # dumped without the alpha of canvases that the images fill
        images = np.concatenate([images, np.full_like(images[..., :1], 255)], axis=-1)
    used = ~(labels == -1).all(axis=0)
    boxes, labels = boxes[:, used], labels[:, used]
    if case["augmentation"] == "none":
        images = images[..., :3].astype("float32")  # the canvases hold whole images
    model = build_model(case, data)
    batch, epochs = case["batch"], case["epochs"]
    steps = len(images) // batch
    schedule = training.learning_rate_schedule(case["rate"], steps, epochs, schedule="cosine",
                                               warmup_epochs=3.0)
    ema = float(case["options"].get("ema", 0))
    model.compile(optimizer=keras.optimizers.Adam(
        schedule, use_ema=ema > 0, ema_momentum=ema or 0.99))
    marks = sorted({max(1, epochs * k // 4) for k in (1, 2, 3, 4)})
    curve = []
    start = time.perf_counter()

    class Evaluate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 not in marks:
                return
            metrics = evaluate(self.model.predict_on_batch, data)
            curve.append({"step": (epoch + 1) * steps, "AP": round(metrics["AP"], 3),
                          "AP50": round(metrics["AP50"], 3), "loss": round(float(logs["loss"]), 3),
                          **{k: round(metrics[k], 3) for k in ("APs", "APm", "APl")}})
            print(json.dumps({"case": spec, "curve": curve, "params": model.count_params(),
                              "seconds": round(time.perf_counter() - start)}), flush=True)

    model.fit(images, {"boxes": boxes, "labels": labels}, batch_size=batch, epochs=epochs,
              shuffle=True, verbose=0, callbacks=[Evaluate()])
    # After `fit` (which writes an EMA into the weights at its end): the final
    # weights plain and with the paper's flip test, as `centernet demo` can score.
    final = {}
    for flip in (False, True):
        model.configure_prediction(flip_test=flip)
        metrics = evaluate(model.predict_on_batch, data)
        suffix = "_flip" if flip else ""
        final.update({f"AP{suffix}": round(metrics["AP"], 3), f"AP50{suffix}": round(metrics["AP50"], 3)})
    print(json.dumps({"case": spec, "curve": curve, "final": final, "params": model.count_params(),
                      "seconds": round(time.perf_counter() - start)}), flush=True)


def evaluate(predict, data):
    """pycocotools metrics of `predict` (images -> detection dict) on the dumped set."""
    from keras_centernet.evaluation.coco_evaluator import COCOEvaluator
    from keras_centernet.evaluation.coco_evaluator import to_original_boxes

    evaluator = COCOEvaluator(json.loads(str(data["ground_truth"])),
                              label_to_category_id=json.loads(str(data["label_to_category_id"])))
    for start in range(0, len(data["val_images"]), 64):
        batch = slice(start, start + 64)
        detections = {k: np.asarray(v) for k, v in predict(
            data["val_images"][batch].astype("float32")).items()}
        evaluator.update(
            data["val_image_id"][batch],
            to_original_boxes(detections["boxes"], data["val_transform"][batch]),
            detections["scores"], detections["labels"], detections.get("num_detections"))
    return evaluator.result()


def run(data_path, cases, output, timeout, title=None, notes=()):
    """Runs every case as its own process on the one GPU; writes the table."""
    env = dict(os.environ)
    # Each case's share of the GPU, unless set (several `run`s at once on one GPU).
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(min(0.9 / len(cases), 0.3)))
    processes = [
        subprocess.Popen([sys.executable, __file__, "case", data_path, spec], env=env,
                         stdout=subprocess.PIPE, text=True)
        for spec in cases
    ]
    deadline = time.monotonic() + timeout
    num_images = len(np.load(data_path)["train_labels"])
    results = []
    for spec, process in zip(cases, processes):
        try:
            out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        results.append(json.loads(lines[-1]) if lines else {"case": spec, "curve": []})
    import jax
    import keras

    rows = ["| case | training images | learning rate | epochs | batch (steps) | augmentation | focal clamp | "
            "model | parameters | AP50 at 1/4, 1/2, 3/4, end of run | AP at the last point | "
            "APs, APm, APl there | loss there | after fit: AP / AP50 (EMA weights where used) | "
            "with flip test | GPU seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        case = parse_case(result["case"])
        curve = result["curve"]
        final = result.get("final")
        model = ", ".join(f"{k} {v}" for k, v in case["options"].items()
                          if k not in ("batch", "images"))  # with box_head, heatmap_loss
        images = int(case["options"].get("images", num_images))
        steps = case["epochs"] * (images // case["batch"])
        rows.append(
            f"| {case['name']} | {images} | {case['rate']:g} | {case['epochs']} | {case['batch']} ({steps}) | "
            f"{case['augmentation']} | {case['clamp']} | {model or 'resnet18_small'} | "
            f"{result.get('params', '')} | "
            + (", ".join(f"{p['AP50']:.3f} @{p['step']}" for p in curve) or "failed") + " | "
            + (f"{curve[-1]['AP']:.3f} | " + ", ".join(
                f"{curve[-1].get(k, float('nan')):.3f}" for k in ("APs", "APm", "APl"))
               + f" | {curve[-1]['loss']:.3f} | " if curve else " | | | ")
            + (f"{final['AP']:.3f} / {final['AP50']:.3f} | {final['AP_flip']:.3f} / "
               f"{final['AP50_flip']:.3f} | " if final else " | | ")
            + f"{result.get('seconds', '')} |")
    text = "\n".join([
        f"# {title or 'Demo settings'} (`benchmarks/demo_settings.py`)",
        "",
        f"Device: {jax.devices()[0].device_kind}, JAX {jax.__version__}, Keras {keras.__version__}; "
        "all cases at once on the GPU. The demo's preset, images and 128 held-out images, "
        "cosine schedule with 3 warm-up epochs; pycocotools COCO AP/AP50. "
        "A single run per case: repeats of one setting differ by about +-0.05 AP50.",
        "",
        *rows,
        "",
        *[line for note in notes for line in (note, "")],
    ])
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as file:
        file.write(text)
    print(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dump_parser = commands.add_parser("dump", help="write the demo's data (TensorFlow)")
    dump_parser.add_argument("path")
    dump_parser.add_argument("demo_args", nargs=argparse.REMAINDER,
                             help="extra `centernet demo` flags, e.g. --num-images 1024")
    run_parser = commands.add_parser("run", help="train every case (JAX, GPU)")
    run_parser.add_argument("path")
    run_parser.add_argument("--cases", nargs="+", required=True)
    run_parser.add_argument("--output", default=os.path.join(
        os.path.dirname(__file__), "results", "demo_settings.md"))
    run_parser.add_argument("--title", default=None, help="the results file's title")
    run_parser.add_argument("--note", action="append", default=[],
                            help="a paragraph written under the table (repeatable)")
    run_parser.add_argument("--timeout", type=float, default=480.0,
                            help="seconds all the cases may take; a case still running then "
                                 "reports the points it reached")
    case_parser = commands.add_parser("case", help=argparse.SUPPRESS)
    case_parser.add_argument("path")
    case_parser.add_argument("spec")
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.path, args.demo_args)
    elif args.command == "run":
        run(args.path, args.cases, args.output, args.timeout, args.title, args.note)
    else:
        run_case(args.spec, args.path)


if __name__ == "__main__":
    main()
