"""The `centernet` command.

    centernet demo       the README's main job: train on the built-in synthetic
                         set, evaluate COCO AP, draw detections (no download)
    centernet train      train a preset on synthetic, COCO-JSON or tfds data
    centernet evaluate   COCO AP of a saved model (flip / multi-scale testing)
    centernet predict    detections on image files, drawn and as JSON
    centernet convert    an official checkpoint (.pth or .npz) -> .keras
    centernet export     a model -> SavedModel, TFLite (fp32/fp16/int8) or ONNX

`centernet <command> --help` lists each command's options.
"""

import argparse
import json
import logging
import os
import sys
import time

logger = logging.getLogger("keras_centernet")

OFFICIAL_TEST_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
# `centernet demo` trains for this many seconds of steps (the whole run took 62 s more on
# the 2-core development host: data, compilation, evaluation with and without the flip
# test, export; 9.5 minutes in all), at most for DEMO_MAX_EPOCHS epochs (a fast machine).
DEMO_TIME_BUDGET = 510.0
DEMO_MAX_EPOCHS = 160
# The synthetic images `centernet demo` trains and evaluates on (`kc.data.synthetic`
# arguments; benchmarks/export.py scores exports of the demo model on them).
DEMO_SYNTHETIC = {"class_colors": True, "object_size": (48, 360), "objects_per_image": (1, 6)}


def _set_backend(backend, argv):
    """Restarts the command under `backend` when Keras already runs another one.

    Importing `keras_centernet` imports Keras, which fixes its backend, so
    `--backend` takes effect by running the command again with
    `KERAS_BACKEND` set.
    """
    import keras

    if backend and keras.backend.backend() != backend:
        environment = dict(os.environ, KERAS_BACKEND=backend)
        os.execve(sys.executable, [sys.executable, "-m", "keras_centernet.cli", *argv], environment)


def _parse_floats(text):
    return tuple(float(v) for v in text.split(",") if v.strip())


def _parse_ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def _parse_pair(text, kind, flag):
    """`"a,b"` -> `(a, b)` with 0 < a <= b, or a UsageError naming the flag."""
    try:
        low, high = (kind(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} takes two numbers min,max; received {text!r}.") from None
    if not 0 < low <= high:
        raise UsageError(f"{flag} needs 0 < min <= max; received {text!r}.")
    return low, high


# --- data --------------------------------------------------------------------


def add_data_arguments(parser, training):
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=["synthetic", "coco-json", "tfds"], default="synthetic",
                       help="synthetic (built in, no download), a COCO-format folder, or a "
                            "tensorflow-datasets builder (default: synthetic)")
    group.add_argument("--images", help="coco-json: folder of the images")
    group.add_argument("--annotations", help="coco-json: the annotations .json file")
    group.add_argument("--val-images", help="coco-json: validation images folder")
    group.add_argument("--val-annotations", help="coco-json: validation annotations")
    group.add_argument("--tfds-name", default="coco/2017",
                       help="tfds: coco/2017, voc/2007 or voc/2012 (default coco/2017)")
    group.add_argument("--data-dir", default=None, help="tfds: data directory")
    group.add_argument("--train-split", default="train")
    group.add_argument("--val-split", default="validation")
    group.add_argument("--num-images", type=int, default=2000,
                       help="synthetic: training images (default 2000)")
    group.add_argument("--num-val-images", type=int, default=200,
                       help="synthetic: validation images (default 200)")
    group.add_argument("--num-classes", type=int, default=None,
                       help="synthetic: number of shape classes, 1-5 (default 5)")
    group.add_argument("--class-colors", action="store_true",
                       help="synthetic: each class in its own colour (an easier set)")
    group.add_argument("--object-size", default="8,200",
                       help="synthetic: min,max shape size in pixels at 512 px, scaled with "
                            "the image (default 8,200)")
    group.add_argument("--objects-per-image", default="1,10",
                       help="synthetic: min,max shapes per image (default 1,10)")
    group.add_argument("--image-size", type=int, default=512,
                       help="input size, a multiple of 32 (128 for hourglasses); default 512")
    group.add_argument("--batch-size", type=int, default=32 if training else 8)
    if training:
        group.add_argument("--augment-on", choices=["cpu", "accelerator"], default="cpu",
                           help="where the official training augmentation runs: in the tf.data "
                                "pipeline (cpu), or batched inside the training step on the "
                                "GPU (accelerator: the CPU only decodes and pads to a canvas; "
                                "use it when the CPU cannot feed the GPU); default cpu")


def make_dataset(args, training, split=None):
    """The dataset the arguments name; returns `(dataset, info)`."""
    import keras_centernet as kc

    size = args.image_size
    # Only training batches differ by where the augmentation runs.
    placement = {"augment_on": getattr(args, "augment_on", "cpu")} if training else {}
    if args.dataset == "synthetic":
        kwargs = dict(placement)
        if args.num_classes:
            kwargs["num_classes"] = args.num_classes
        kwargs["object_size"] = _parse_pair(args.object_size, float, "--object-size")
        kwargs["objects_per_image"] = _parse_pair(args.objects_per_image, int, "--objects-per-image")
        dataset = kc.data.synthetic(
            num_images=args.num_images if training else args.num_val_images,
            image_size=size, batch_size=args.batch_size, training=training,
            # Validation images are other images than the training ones.
            seed=0 if training else 1, class_colors=args.class_colors, **kwargs,
        )
    elif args.dataset == "coco-json":
        images = args.images if training else (args.val_images or args.images)
        annotations = args.annotations if training else (args.val_annotations or args.annotations)
        if not images or not annotations:
            raise UsageError("--dataset coco-json needs --images and --annotations.")
        if not os.path.isdir(images):
            raise UsageError(f"The images folder {images} does not exist.")
        if not os.path.isfile(annotations):
            raise UsageError(f"The annotations file {annotations} does not exist.")
        dataset = kc.data.coco_json(images, annotations, image_size=size,
                                    batch_size=args.batch_size, training=training, **placement)
    else:
        dataset = kc.data.tfds_dataset(
            args.tfds_name, split=split or (args.train_split if training else args.val_split),
            image_size=size, batch_size=args.batch_size, training=training,
            data_dir=args.data_dir, **placement,
        )
    return dataset, dataset.info


# --- commands ------------------------------------------------------------------


def _configure_precision(args):
    import keras

    if getattr(args, "mixed_precision", False):
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")


def train(args):
    """Builds (or resumes) a model, fits it, and evaluates it; returns the model and metrics."""
    import keras

    import keras_centernet as kc
    from keras_centernet import training

    model_class = _model_class(args)  # an unknown preset fails before any data loads
    if args.time_budget < 0:
        raise UsageError(f"--time-budget must be >= 0 seconds; received {args.time_budget:g}.")
    output_dir = args.output_dir or os.path.join("runs", args.preset)
    if not args.resume and os.path.exists(os.path.join(output_dir, "backup")):
        raise UsageError(
            f"{output_dir} holds an interrupted run: pass --resume to continue it, "
            f"or another --output-dir."
        )
    _configure_precision(args)
    train_ds, info = make_dataset(args, training=True)
    val_ds, val_info = make_dataset(args, training=False)
    steps = args.steps_per_epoch or _steps(info, args.batch_size)
    if steps is None:
        raise UsageError("The training set has no known size: pass --steps-per-epoch.")

    rate = args.learning_rate or training.default_learning_rate(args.preset, args.batch_size)
    with training.data_parallel_scope(args.devices, args.batch_size):
        extra = _head_options(args, model_class)
        if args.augment_on == "accelerator":
            extra["augmentation"] = kc.layers.BatchAugmentation(args.image_size)
        model = model_class.from_preset(
            args.preset, num_classes=info.num_classes,
            focal_clamp_gradient=args.focal_clamp_gradient, **extra,
        )
        if args.weights:
            model.load_weights(args.weights)
        epochs = _epochs(args, model, train_ds, steps, output_dir)
        schedule = training.learning_rate_schedule(
            rate, steps, epochs, schedule=args.schedule,
            step_epochs=_parse_ints(args.lr_steps) if args.lr_steps else None,
            warmup_epochs=args.warmup_epochs,
        )
        model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=args.jit_compile)
    evaluation = (
        kc.evaluation.COCOEvaluationCallback(val_ds, every_n_epochs=args.eval_every, info=val_info)
        if args.eval_every else None
    )
    callbacks = training.training_callbacks(
        output_dir,
        monitor="val_AP" if evaluation is not None else "loss",
        mode="max" if evaluation is not None else "min",
        evaluation=evaluation,
        tensorboard=_has_tensorboard(),
    )
    with open(os.path.join(output_dir, "classes.json"), "w") as file:
        json.dump({"class_names": info.class_names, "category_ids": info.category_ids}, file)
    logger.info("Training %s on %s: %d classes, %d px, batch %d, %d steps/epoch, %d epochs, lr %.3g",
                args.preset, info.source or args.dataset, info.num_classes, args.image_size,
                args.batch_size, steps, epochs, rate)
    history = model.fit(train_ds.repeat(), epochs=epochs, steps_per_epoch=steps,
                        callbacks=callbacks, verbose=args.verbose, shuffle=False)
    metrics = kc.evaluation.coco_evaluate(model, val_ds, info=val_info, verbose=min(args.verbose, 1))
    logger.info("COCO metrics: %s", _format_metrics(metrics))
    return model, history, metrics, output_dir


def _epochs(args, model, train_ds, steps, output_dir):
    """`--epochs`, or with `--time-budget` the most epochs (up to `--epochs`) that fit it.

    The step time is measured on one training batch (`training.seconds_per_step`),
    and the choice is written to `time_budget.json`, so that a resumed run
    (`--resume` with a backup) keeps the length, and with it the learning-rate
    schedule, that it started with.
    """
    from keras_centernet import training

    if not args.time_budget:
        return args.epochs
    record = os.path.join(output_dir, "time_budget.json")
    if args.resume and os.path.exists(os.path.join(output_dir, "backup")) and os.path.exists(record):
        with open(record) as file:
            epochs = int(json.load(file)["epochs"])
        logger.info("Resuming a run of %d epochs (chosen for its time budget, %s)", epochs, record)
        return epochs
    images, targets = next(iter(train_ds))
    seconds = training.seconds_per_step(model, images, targets, jit_compile=args.jit_compile)
    epochs = training.epochs_for_time_budget(args.time_budget, seconds, steps, args.epochs)
    logger.info("A training step takes %.3f s here: %d epochs of %d steps fit the time budget of "
                "%.0f s (at most %d epochs)", seconds, epochs, steps, args.time_budget, args.epochs)
    os.makedirs(output_dir, exist_ok=True)
    with open(record, "w") as file:
        json.dump({"epochs": epochs, "seconds_per_step": seconds, "steps_per_epoch": steps,
                   "time_budget": args.time_budget, "max_epochs": args.epochs}, file, indent=2)
    return epochs


def _head_options(args, model_class):
    """CenterNet's `box_head`, `iou_loss` and `heatmap_loss` given on the command line."""
    import keras_centernet as kc

    options = {key: getattr(args, key, None) for key in ("box_head", "iou_loss", "heatmap_loss")}
    options = {key: value for key, value in options.items() if value is not None}
    if options and model_class is not kc.CenterNet:
        flags = ", ".join("--" + key.replace("_", "-") for key in options)
        raise UsageError(f"{flags}: options of --model centernet, not {args.preset!r}.")
    return options


def _model_class(args):
    """The detector family of `--model` (default: the one `--preset` belongs to)."""
    import keras_centernet as kc
    from keras_centernet.models import centernet_triplets

    triplet_presets = sorted(centernet_triplets.PRESETS)
    model = getattr(args, "model", None)
    if model is None:
        model = "triplets" if args.preset in centernet_triplets.PRESETS else "centernet"
    if model == "triplets":
        if args.preset not in centernet_triplets.PRESETS:
            raise UsageError(
                f"--model triplets takes one of the presets {triplet_presets}; "
                f"received {args.preset!r}.")
        if getattr(args, "augment_on", "cpu") == "accelerator":
            raise UsageError(
                "--model triplets has no augmentation inside its step: pass --augment-on cpu.")
        return kc.CenterNetTriplets
    if args.preset in centernet_triplets.PRESETS:
        raise UsageError(f"{args.preset!r} is a Keypoint-Triplets preset: pass --model triplets.")
    kc.models.presets.get_preset(args.preset)
    return kc.CenterNet


def _has_tensorboard():
    """TensorBoard logs need TensorFlow's summary ops and the tensorboard package."""
    try:
        import tensorboard  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError:
        logger.warning("TensorBoard logs are off: tensorflow and tensorboard are not both installed.")
        return False
    return True


def _steps(info, batch_size):
    if not info.num_examples:
        return None
    return max(1, info.num_examples // batch_size)


def _format_metrics(metrics):
    return ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())


def run_train(args):
    train(args)
    return 0


def _load_model(path):
    import keras

    import keras_centernet  # noqa: F401  (registers the custom objects)

    if not os.path.isfile(path):
        raise UsageError(f"No model file at {path}.")
    return keras.saving.load_model(path)


def run_evaluate(args):
    import keras_centernet as kc

    model = _load_model(args.model)
    model.configure_prediction(flip_test=args.flip, test_scales=_parse_floats(args.scales))
    dataset, info = make_dataset(args, training=False)
    metrics = kc.evaluation.coco_evaluate(model, dataset, info=info, verbose=args.verbose)
    print(json.dumps(metrics, indent=2))
    if args.output:
        with open(args.output, "w") as file:
            json.dump(metrics, file, indent=2)
    return 0


def run_predict(args):
    import numpy as np

    from keras_centernet import visualization
    from keras_centernet.data import to_original_boxes

    model = _load_model(args.model)
    model.configure_prediction(flip_test=args.flip, test_scales=_parse_floats(args.scales))
    class_names = _class_names(args)
    os.makedirs(args.output_dir, exist_ok=True)
    results = []
    failed = []
    for path in args.images:
        try:
            original, image, transform = _load_for_model(path, args.image_size, model.size_divisor)
        except UsageError as error:
            # One bad file is reported and skipped; the others are still predicted.
            print(f"centernet predict: error: {error}", file=sys.stderr)
            failed.append(path)
            continue
        detections = model.predict_on_batch(image[None])
        detections = {k: np.asarray(v)[0] for k, v in detections.items()}
        count = int(detections["num_detections"])
        boxes = to_original_boxes(detections["boxes"][:count], transform)
        picture = visualization.draw_detections(
            original, boxes, detections["scores"][:count], detections["labels"][:count],
            class_names=class_names, score_threshold=args.score_threshold,
        )
        name = os.path.splitext(os.path.basename(path))[0]
        visualization.save_image(os.path.join(args.output_dir, name + ".png"), picture)
        keep = detections["scores"][:count] >= args.score_threshold
        results.append({
            "image": path,
            "detections": [
                {"box_xyxy": [round(float(v), 2) for v in box], "score": float(score),
                 "label": int(label),
                 "class_name": class_names[int(label)] if class_names else str(int(label))}
                for box, score, label in zip(boxes[keep], detections["scores"][:count][keep],
                                             detections["labels"][:count][keep])
            ],
        })
        logger.info("%s: %d detections >= %.2f", path, int(keep.sum()), args.score_threshold)
    with open(os.path.join(args.output_dir, "detections.json"), "w") as file:
        json.dump(results, file, indent=1)
    if failed:
        logger.info("%d of %d images could not be read: %s", len(failed), len(args.images),
                    ", ".join(failed))
        return 2
    return 0


def _class_names(args):
    if args.classes:
        with open(args.classes) as file:
            return json.load(file)["class_names"]
    candidate = os.path.join(os.path.dirname(os.path.abspath(args.model)), "classes.json")
    if os.path.exists(candidate):
        with open(candidate) as file:
            return json.load(file)["class_names"]
    return None


def _load_for_model(path, image_size, size_divisor):
    """An image file -> its RGB pixels, the model's input and the map from the first to the second.

    The evaluation preprocessing of `keras_centernet.data` (decoding with the
    EXIF orientation, then the official `fix_res` transform: the longer side
    fills `image_size`, rounded up to the divisor, centred), so `predict` sees
    what `evaluate` sees.
    """
    import tensorflow as tf

    from keras_centernet.data import decode_image
    from keras_centernet.data import eval_preprocess

    if not os.path.isfile(path):
        raise UsageError(f"No image file at {path}.")
    with open(path, "rb") as file:
        contents = file.read()
    try:
        original = decode_image(tf.constant(contents))
    except tf.errors.OpError as error:
        message = (error.message or type(error).__name__).strip().splitlines()[0]
        raise UsageError(f"Cannot decode the image {path}: {message}") from None
    size = -(-image_size // size_divisor) * size_divisor
    image, transform = eval_preprocess(original, (size, size))
    return original.numpy(), image.numpy(), transform.numpy()


def run_demo(args):
    """The README's main job: train on the synthetic set, evaluate, draw detections."""
    import keras
    import numpy as np

    import keras_centernet as kc
    from keras_centernet import visualization

    start = time.perf_counter()
    args.dataset = "synthetic"
    model, _, metrics, output_dir = train(args)
    val_ds, info = make_dataset(args, training=False)
    # The paper's flip test as well: one more pass over the held-out images.
    model.configure_prediction(flip_test=True)
    metrics["flip_test"] = kc.evaluation.coco_evaluate(model, val_ds, info=info,
                                                       verbose=min(args.verbose, 1))
    model.configure_prediction(flip_test=False)
    logger.info("Trained and evaluated in %.0f s: COCO AP %.3f, AP50 %.3f (with the flip test: "
                "AP %.3f, AP50 %.3f)", time.perf_counter() - start,
                metrics.get("AP", float("nan")), metrics.get("AP50", float("nan")),
                metrics["flip_test"].get("AP", float("nan")),
                metrics["flip_test"].get("AP50", float("nan")))
    images, _ = next(iter(val_ds))
    images = np.asarray(images)[:8]
    detections = model.predict_on_batch(images)
    detections = {k: np.asarray(v) for k, v in detections.items()}
    pictures = [
        visualization.draw_detections(
            images[i], detections["boxes"][i], detections["scores"][i], detections["labels"][i],
            class_names=info.class_names, score_threshold=0.3,
        )
        for i in range(len(images))
    ]
    picture_path = os.path.join(output_dir, "detections.png")
    visualization.save_image(picture_path, visualization.image_grid(pictures))
    model_path = os.path.join(output_dir, "model.keras")
    model.save(model_path)
    metrics_path = os.path.join(output_dir, "coco_metrics.json")
    with open(metrics_path, "w") as file:
        json.dump(metrics, file, indent=2)
    written = [model_path, picture_path, metrics_path]
    # The deployable artifact: a SavedModel with decoding inside, RGB pixels in. Export
    # traces the model with TensorFlow, so under another backend it is left to
    # `centernet export` of the saved model.
    if keras.backend.backend() == "tensorflow":
        written.append(_export_module().export_model(
            model, os.path.join(output_dir, "saved_model"), format="saved_model",
            input_size=(args.image_size, args.image_size),
        ))
    else:
        logger.warning("No SavedModel: export traces the model with TensorFlow, and the backend is "
                       "%r. Run `centernet --backend tensorflow export %s` for one.",
                       keras.backend.backend(), model_path)
    logger.info("Wrote %s", ", ".join(written))
    return 0


def run_convert(args):
    import keras_centernet as kc

    model = kc.convert.from_official_checkpoint(
        args.checkpoint, preset=args.preset, num_classes=args.num_classes,
    )
    output = args.output or os.path.join(
        "saved_models", args.preset, os.path.splitext(os.path.basename(args.checkpoint))[0] + ".keras"
    )
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    model.save(output)
    logger.info("Wrote %s (%s, %d classes)", output, args.preset, model.num_classes)
    return 0


# --- parser ----------------------------------------------------------------------


def add_training_arguments(parser, preset, epochs, eval_every):
    group = parser.add_argument_group("training")
    group.add_argument("--preset", default=preset, help=f"architecture (default {preset})")
    group.add_argument("--model", choices=["centernet", "triplets"], default=None,
                       help="detector family: centernet (Objects as Points) or triplets "
                            "(Keypoint-Triplets CenterNet, presets triplets_hourglass52/104); "
                            "default: the family of --preset")
    group.add_argument("--weights", default=None, help="initial weights (.weights.h5)")
    group.add_argument("--epochs", type=int, default=epochs,
                       help=f"length of the run; with --time-budget, the most epochs it may "
                            f"choose (default {epochs})")
    group.add_argument("--time-budget", type=float, default=0.0,
                       help="seconds of training: the step time is measured on one batch and "
                            "the run takes as many epochs as fit, up to --epochs (0: off; "
                            "default %(default)s)")
    group.add_argument("--steps-per-epoch", type=int, default=None,
                       help="default: one pass over the training set")
    group.add_argument("--learning-rate", type=float, default=None,
                       help="Adam rate (default: the official 5e-4 per 128 images, "
                            "2.5e-4 per 24 for hourglasses, scaled to the batch)")
    group.add_argument("--schedule", choices=["step", "cosine", "constant"], default="step",
                       help="official step decay (x0.1 at 90/140 and 120/140 of the run), "
                            "cosine, or constant")
    group.add_argument("--lr-steps", default=None, help="epochs of the step decay, e.g. 90,120")
    group.add_argument("--warmup-epochs", type=float, default=0.0, help="cosine warm-up")
    group.add_argument("--mixed-precision", action="store_true", help="bfloat16 mixed precision")
    group.add_argument("--devices", type=int, default=None,
                       help="data-parallel training on this many devices (GPUs, else CPUs): "
                            "keras.distribution.DataParallel under JAX, "
                            "tf.distribute.MirroredStrategy under TensorFlow; the batch is "
                            "split between them (default: one device)")
    group.add_argument("--focal-clamp-gradient", choices=["official", "straight_through"],
                       default="official",
                       help="official: the focal loss clamp stops gradients (as the paper's code); "
                            "straight_through: same loss, gradients kept (helps from scratch)")
    group.add_argument("--box-head", choices=["size", "ltrb"], default=None,
                       help="size: the paper's size and offset heads; ltrb: distances to the "
                            "four sides with an IoU loss (default: the preset's)")
    group.add_argument("--iou-loss", choices=["giou", "diou", "ciou"], default=None,
                       help="the loss of --box-head ltrb (default: the preset's, else giou)")
    group.add_argument("--heatmap-loss", choices=["focal", "quality_focal"], default=None,
                       help="focal: the paper's; quality_focal: Generalized Focal Loss with the "
                            "Gaussian as the soft label (default: focal)")
    group.add_argument("--no-jit", dest="jit_compile", action="store_false",
                       help="disable XLA compilation of the training step")
    group.set_defaults(jit_compile="auto")
    group.add_argument("--eval-every", type=int, default=eval_every,
                       help="COCO evaluation every N epochs (0: only at the end)")
    group.add_argument("--output-dir", default=None,
                       help="checkpoints best.keras/last.keras, backup/, logs/, metrics.csv "
                            "(default runs/<preset>)")
    group.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --output-dir at its epoch")
    group.add_argument("--verbose", type=int, default=1, help="0 silent, 1 progress bar, 2 a line per epoch")


def add_test_time_arguments(parser):
    parser.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    parser.add_argument("--scales", default="1",
                        help="test scales, e.g. 0.5,0.75,1,1.25,1.5 (the paper's multi-scale)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="centernet",
        description="CenterNet (Objects as Points) in Keras 3.",
    )
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"], default=None,
                        help="Keras backend (default: $KERAS_BACKEND or tensorflow)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--verbose", dest="traceback", action="store_true",
                        help="show the traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command")

    demo = commands.add_parser(
        "demo", help="the main job: train on the built-in synthetic set, evaluate, draw")
    add_data_arguments(demo, training=True)
    add_training_arguments(demo, preset="resnet18_small", epochs=DEMO_MAX_EPOCHS, eval_every=0)
    # As many steps of batch 16 as fit DEMO_TIME_BUDGET seconds of this host's CPU
    # (the step is timed first): AP50 grows with the steps (1280 steps: 0.51,
    # 2560: 0.67-0.71 on the GPU sweep of benchmarks/results/demo_settings.md),
    # and hosts differ up to 1.8x in step time (demo_cpu.md), so a fixed length
    # either wastes a fast host or runs far past ten minutes on a slow one. On the
    # 2-core development host (2026-12-05): 0.251 s a step, 1984 steps, AP50 0.607
    # (0.634 with the flip test), 9.5 minutes in all.
    # 1024 images: longer runs learn more from more images (2560 steps: 0.71
    # against 0.67 with 512). Batch 16 is the most CPU-efficient setting
    # measured: half the CPU time of a batch-32 step, and 1280 of its steps
    # reach 0.51 where 640 of batch 32 reach 0.30-0.38.
    # The small preset at 128 px (smaller models and inputs learn slower per CPU
    # second), the easy synthetic set (class colours, larger and fewer shapes), a
    # warmed-up cosine schedule at 1e-3 (2e-3, 4e-3, 5e-4 and 3e-4 learn slower),
    # the official augmentation batched inside the step (the two cores train
    # instead of augmenting; without the random crop 512 images over-fit within
    # 900 steps), and the straight-through focal clamp (from scratch the official
    # clamp leaves some centres without gradient: AP50 0.21 against 0.49).
    demo.set_defaults(func=run_demo, image_size=128, batch_size=16, num_images=1024,
                      time_budget=DEMO_TIME_BUDGET,
                      num_val_images=128, schedule="cosine", learning_rate=1e-3,
                      warmup_epochs=3.0, augment_on="accelerator",
                      class_colors=DEMO_SYNTHETIC["class_colors"],
                      object_size="%g,%g" % DEMO_SYNTHETIC["object_size"],
                      objects_per_image="%d,%d" % DEMO_SYNTHETIC["objects_per_image"],
                      focal_clamp_gradient="straight_through",
                      output_dir=os.path.join("saved_models", "demo"), resume=True, verbose=2)

    train_parser = commands.add_parser("train", help="train a detector")
    add_data_arguments(train_parser, training=True)
    add_training_arguments(train_parser, preset="resnet18_dcn", epochs=140, eval_every=5)
    train_parser.set_defaults(func=run_train)

    evaluate = commands.add_parser("evaluate", help="COCO AP of a saved model")
    evaluate.add_argument("model", help="a .keras file")
    add_data_arguments(evaluate, training=False)
    add_test_time_arguments(evaluate)
    evaluate.add_argument("--output", default=None, help="write the metrics to this .json")
    evaluate.add_argument("--verbose", type=int, default=1)
    evaluate.set_defaults(func=run_evaluate)

    predict = commands.add_parser("predict", help="detect objects in image files")
    predict.add_argument("model", help="a .keras file")
    predict.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    predict.add_argument("--image-size", type=int, default=512)
    predict.add_argument("--score-threshold", type=float, default=0.3)
    predict.add_argument("--classes", default=None,
                         help="classes.json of the training run (default: next to the model)")
    predict.add_argument("--output-dir", default="predictions")
    add_test_time_arguments(predict)
    predict.set_defaults(func=run_predict)

    convert = commands.add_parser(
        "convert", help="convert an official CenterNet checkpoint (.pth or .npz) to .keras")
    convert.add_argument("checkpoint", help="official checkpoint, e.g. ctdet_coco_dla_2x.pth")
    convert.add_argument("--preset", required=True, help="matching architecture, e.g. dla34")
    convert.add_argument("--num-classes", type=int, default=None,
                         help="default: read from the checkpoint's heatmap head")
    convert.add_argument("--output", default=None,
                         help="output .keras file (default saved_models/<preset>/<name>.keras)")
    convert.set_defaults(func=run_convert)

    export = commands.add_parser(
        "export", help="export a model for serving or mobile (SavedModel, TFLite, ONNX)")
    _export_module().add_cli_arguments(export)
    export.set_defaults(func=run_export)
    return parser


def _export_module():
    from keras_centernet import export

    return export


def run_export(args):
    path = _export_module().run_cli(args)
    logger.info("Wrote %s", path)
    return 0


class UsageError(Exception):
    """A problem with the command's input: reported in one line, exit code 2."""


# Errors that name a problem with the user's input (a path, a name, a file's
# contents) rather than a defect: `main` prints them in one line.
_INPUT_ERRORS = (UsageError, ValueError, KeyError, FileNotFoundError, NotADirectoryError,
                 IsADirectoryError, PermissionError, ImportError)


def _input_errors():
    """`_INPUT_ERRORS` plus the errors of optional libraries that name bad input."""
    errors = list(_INPUT_ERRORS)
    if "tensorflow_datasets" in sys.modules:
        from tensorflow_datasets.core import registered

        errors.append(registered.DatasetNotFoundError)
    return tuple(errors)


def _one_line(error):
    """The first line of an error's message (KeyError's quotes removed)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(lines) == 1:
        return lines[0]
    # A listing (one "- what: [items]" line per kind of problem): its heads.
    heads = "; ".join(line.lstrip("- ").split(": [")[0][:120] for line in lines[1:])
    return f"{lines[0]} {heads} (`centernet --verbose ...` lists them all)"


def main(argv=None):
    """Runs a `centernet` command; returns its exit code.

    Bad input (a missing path, an unknown preset or dataset, a checkpoint of
    another architecture, an image that does not decode) is reported in one
    line on stderr with exit code 2; `centernet --verbose <command>` shows the
    traceback instead.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.version:
        from keras_centernet.version import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _set_backend(args.backend, argv)
    if args.traceback:
        return args.func(args)
    try:
        return args.func(args)
    except Exception as error:  # noqa: BLE001 - filtered just below
        if not isinstance(error, _input_errors()):
            raise
        print(f"centernet {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
