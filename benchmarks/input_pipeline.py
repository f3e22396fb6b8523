"""Images per second of the `tf.data` training pipeline on this machine's CPU.

Measures, at 512 px and batch 32, the full training pipeline of
`kc.data.coco_json` (read, decode, the official random-crop affine, flip and
colour augmentation, box bookkeeping, batching) on a COCO-JSON folder of
640x480 JPEGs that the benchmark writes, and of `kc.data.synthetic`; and the
stages on their own, to show where the time goes: decoding, decoding plus a
letterbox to the input size (what would stay on the CPU if the augmentation
moved to the accelerator, DESIGN.md principle 3), the augmentation of an image
already in memory, and rendering the synthetic images. The rates are compared
with what one GPU consumes in training (`/work/shared/ANCHORS.md`).

The accelerator mode (`augment_on="accelerator"`) is measured too: its CPU
side (decode, place on a 640x640 RGBA uint8 canvas, boxes, batching) for both
sets, and the cost of the batched augmentation it leaves to the accelerator
(`kc.layers.BatchAugmentation`, one batch of canvases to 512 px, compiled
with XLA by `tf.function(jit_compile=True)`), timed on this CPU: an upper
bound of what it costs a GPU.

    python benchmarks/input_pipeline.py              # writes benchmarks/results/input_pipeline.md
    python benchmarks/input_pipeline.py --batches 4  # quicker

Every stage runs as a `tf.data` pipeline with `num_parallel_calls=AUTOTUNE`
over all cores; a rate is the images of `--batches` batches after two warm-up
batches (for the cached synthetic set: after its first pass), divided by the
wall time.
"""

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras_centernet as kc  # noqa: E402
from keras_centernet.data.augment import Augmentation  # noqa: E402
from keras_centernet.data.augment import eval_preprocess  # noqa: E402
from keras_centernet.data.decode import decode_image  # noqa: E402
from keras_centernet.data.synthetic_shapes import render_image  # noqa: E402

AUTOTUNE = tf.data.AUTOTUNE

# Training images/s of one H100 at batch 32, 512 px (ANCHORS.md): the official
# PyTorch code in fp32, and our goal (3x that, JAX backend).
GPU_TRAINING_RATES = [
    ("resnet18_dcn", 431, 1290),
    ("resnet101_dcn", 176, 528),
    ("dla34", 94, 280),
    ("hourglass104", 75, 225),
]


def write_coco_folder(root, num_images, height=480, width=640, quality=90):
    """JPEGs of synthetic scenes (shapes on textured backgrounds) and their COCO JSON."""
    from PIL import Image

    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir, exist_ok=True)
    render = tf.function(lambda seed: render_image(seed, (height, width)))
    images, annotations, total_bytes = [], [], 0
    for index in range(num_images):
        example = render(tf.constant([7, index], tf.int64))
        buffer = io.BytesIO()
        Image.fromarray(example["image"].numpy()).save(buffer, "JPEG", quality=quality)
        name = f"{index:06d}.jpg"
        with open(os.path.join(images_dir, name), "wb") as file:
            file.write(buffer.getvalue())
        total_bytes += buffer.tell()
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        for box, label in zip(example["boxes"].numpy(), example["labels"].numpy()):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1,
                 "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(kc.data.SHAPE_NAMES)]
    path = os.path.join(root, "annotations.json")
    with open(path, "w") as file:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, file)
    return images_dir, path, total_bytes / num_images


def images_per_second(dataset, batches, batch_size, warmup=2):
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def stages(images_dir, annotations_json, image_size, batch_size, cached_images):
    """`(name, what it does, dataset, warm-up batches)` of every measured pipeline, endless."""
    size = (image_size, image_size)
    file_names = sorted(os.listdir(images_dir))
    paths = tf.data.Dataset.from_tensor_slices(
        [os.path.join(images_dir, name) for name in file_names]
    ).repeat()

    def decoded(path):
        return decode_image(tf.io.read_file(path))

    augmentation = Augmentation()
    in_memory = tf.constant(
        np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    )
    no_boxes = tf.zeros([0, 4])
    return [
        (
            "coco_json: decode",
            "read + decode a 640x480 JPEG",
            paths.map(decoded, num_parallel_calls=AUTOTUNE).batch(batch_size),
            2,
        ),
        (
            "coco_json: decode + letterbox",
            "read + decode + resize into a 512 canvas (no augmentation)",
            paths.map(
                lambda p: eval_preprocess(decoded(p), size)[0], num_parallel_calls=AUTOTUNE
            ).batch(batch_size),
            2,
        ),
        (
            "augmentation only",
            "affine + flip + colour of a 640x480 image in memory",
            tf.data.Dataset.counter().map(
                lambda i: augmentation(in_memory, no_boxes, size, tf.stack([i, i]))[0],
                num_parallel_calls=AUTOTUNE,
            ).batch(batch_size),
            2,
        ),
        (
            "coco_json: training pipeline",
            "kc.data.coco_json(training=True): all of the above + boxes + batching",
            kc.data.coco_json(
                images_dir, annotations_json, batch_size=batch_size, image_size=image_size,
                training=True, seed=0, repeat=True,
            ),
            2,
        ),
        (
            "coco_json: accelerator mode, CPU side",
            'kc.data.coco_json(training=True, augment_on="accelerator"): read + decode + '
            "640x640 RGBA canvas + boxes + batching",
            kc.data.coco_json(
                images_dir, annotations_json, batch_size=batch_size, image_size=image_size,
                training=True, seed=0, repeat=True, augment_on="accelerator",
            ),
            2,
        ),
        (
            "synthetic: render",
            "render one 512x512 synthetic image",
            tf.data.Dataset.counter().map(
                lambda i: render_image(tf.stack([tf.constant(0, tf.int64), i]), size)["image"],
                num_parallel_calls=AUTOTUNE,
            ).batch(batch_size),
            2,
        ),
        (
            "synthetic: training pipeline",
            "kc.data.synthetic(training=True), endless: render + augmentation + batching",
            kc.data.synthetic(image_size=image_size, batch_size=batch_size, seed=0),
            2,
        ),
        (
            "synthetic: cached training pipeline",
            f"kc.data.synthetic(num_images={cached_images}) after its first pass: "
            "augmentation + batching of the cached images",
            kc.data.synthetic(
                num_images=cached_images, image_size=image_size, batch_size=batch_size,
                seed=0, repeat=True, cache=True,
            ),
            cached_images // batch_size + 2,
        ),
        (
            "synthetic: accelerator mode, CPU side",
            'kc.data.synthetic(training=True, augment_on="accelerator"), endless: render + '
            "RGBA canvas + batching",
            kc.data.synthetic(
                image_size=image_size, batch_size=batch_size, seed=0, augment_on="accelerator"
            ),
            2,
        ),
        (
            "synthetic: cached, accelerator mode, CPU side",
            f"kc.data.synthetic(num_images={cached_images}, augment_on=\"accelerator\") after "
            "its first pass: RGBA canvas + batching of the cached images",
            kc.data.synthetic(
                num_images=cached_images, image_size=image_size, batch_size=batch_size,
                seed=0, repeat=True, cache=True, augment_on="accelerator",
            ),
            cached_images // batch_size + 2,
        ),
    ]


def device_augmentation_ms(image_size, batch_size, canvas=640, max_objects=128):
    """`[(colour on?, median ms)]` of `BatchAugmentation` on one batch of canvases, XLA, this CPU."""
    rng = np.random.default_rng(0)
    # 640x480 images on 640x640 canvases, as the COCO-JSON folder's.
    canvases = rng.integers(0, 256, (batch_size, canvas, canvas, 4), dtype=np.uint8)
    canvases[:, 480:] = 0
    canvases[:, :480, :, 3] = 255
    corners = rng.uniform(0, 480, (batch_size, max_objects, 2, 2))
    boxes = np.concatenate([corners.min(axis=2), corners.max(axis=2)], -1).astype(np.float32)
    canvases = tf.constant(canvases)
    y = {"boxes": tf.constant(boxes), "labels": tf.zeros((batch_size, max_objects), tf.int32)}
    rows = []
    for color in (True, False):
        layer = kc.layers.BatchAugmentation(image_size, color=color, seed=0)
        step = tf.function(lambda images, targets, layer=layer: layer(images, targets),
                           jit_compile=True)
        for _ in range(3):
            step(canvases, y)[0].numpy()
        times = []
        for _ in range(10):
            start = time.perf_counter()
            step(canvases, y)[0].numpy()
            times.append(1000.0 * (time.perf_counter() - start))
        rows.append((color, float(np.median(times))))
    return rows


def markdown(rows, args, file_kib, load_before, load_after, ground_truth_seconds, device_rows):
    best = max(rate for name, _, rate in rows if name == "coco_json: training pipeline")
    accelerated = max(
        rate for name, _, rate in rows if name == "coco_json: accelerator mode, CPU side"
    )
    lines = [
        "# Input pipeline benchmark (`benchmarks/input_pipeline.py`)",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"TensorFlow {tf.__version__}; {args.image_size} px, batch {args.batch_size}, "
        f"{args.batches} timed batches per row after 2 warm-up batches (the cached row: "
        "after its first pass).",
        f"**The machine is shared** with other engineers' tests: load average "
        f"{load_before:.1f} before and {load_after:.1f} after the run on "
        f"{os.cpu_count()} cores, so these figures are lower bounds of what the "
        "cores give when idle, and vary between runs.",
        "",
        f"COCO-JSON folder: {args.num_files} JPEGs of 640x480 (synthetic scenes, quality 90, "
        f"{file_kib:.0f} KiB on average; COCO's average about 160 KiB), read in a loop.",
        "",
        "| pipeline | what it does | img/s | CPU ms per image (x cores) |",
        "|---|---|---|---|",
    ]
    for name, what, rate in rows:
        lines.append(
            f"| {name} | {what} | {rate:.1f} | {1000.0 * os.cpu_count() / rate:.1f} |"
        )
    lines += [
        "",
        f"Batched augmentation of the accelerator mode (`kc.layers.BatchAugmentation`, "
        f"{args.batch_size} canvases of 640x640 RGBA uint8 holding 640x480 images, to "
        f"{args.image_size} px, 128 boxes each), XLA-compiled (`tf.function(jit_compile=True)`), "
        "timed **on this CPU** (median of 10 calls; a GPU does it far faster):",
        "",
        "| augmentation | ms per batch | ms per image |",
        "|---|---|---|",
    ]
    for color, ms in device_rows:
        what = "crop + flip + colour + boxes" if color else "crop + flip + boxes (no colour)"
        lines.append(f"| {what} | {ms:.1f} | {ms / args.batch_size:.2f} |")
    lines += [
        "",
        f"Ground truth of `kc.data.synthetic(num_images=200)` (pycocotools dict, rendered "
        f"once on first access): {ground_truth_seconds:.1f} s.",
        "",
        "## Against what one GPU consumes in training (H100, batch 32, 512 px; ANCHORS.md)",
        "",
        "| model | official PyTorch fp32 img/s | our goal img/s | CPU pipeline / official | "
        "CPU pipeline / goal |",
        "|---|---|---|---|---|",
    ]
    for model, official, goal in GPU_TRAINING_RATES:
        lines.append(
            f"| {model} | {official} | {goal} | {best / official:.2f} | {best / goal:.2f} |"
        )
    lines += [
        "",
        f"The ratios use the COCO-JSON training pipeline: {best:.0f} img/s. With the "
        f"augmentation on the accelerator the CPU side gives {accelerated:.0f} img/s: "
        + ", ".join(
            f"{model} {accelerated / official:.2f} of the official rate, "
            f"{accelerated / goal:.2f} of our goal"
            for model, official, goal in GPU_TRAINING_RATES
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--num-files", type=int, default=128)
    parser.add_argument("--cached-images", type=int, default=256)
    parser.add_argument(
        "--output",
        default=os.path.join(os.path.dirname(__file__), "results", "input_pipeline.md"),
    )
    parser.add_argument("--notes", default="", help="text appended to the results file")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as root:
        images_dir, annotations_json, file_bytes = write_coco_folder(root, args.num_files)
        rows = []
        for name, what, dataset, warmup in stages(
            images_dir, annotations_json, args.image_size, args.batch_size, args.cached_images
        ):
            rate = images_per_second(dataset, args.batches, args.batch_size, warmup)
            rows.append((name, what, rate))
            print(f"{name:34s} {rate:8.1f} img/s", flush=True)
    device_rows = device_augmentation_ms(args.image_size, args.batch_size)
    for color, ms in device_rows:
        print(f"{'BatchAugmentation, colour=' + str(color):34s} {ms:8.1f} ms/batch", flush=True)
    start = time.perf_counter()
    _ = kc.data.synthetic(num_images=200, image_size=args.image_size, seed=1,
                          training=False).info.ground_truth
    ground_truth_seconds = time.perf_counter() - start
    print(f"{'synthetic ground truth, 200 images':34s} {ground_truth_seconds:8.1f} s")
    load_after = os.getloadavg()[0]
    text = markdown(rows, args, file_bytes / 1024, load_before, load_after, ground_truth_seconds,
                    device_rows)
    if args.notes:
        text += "\n" + args.notes.strip() + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as file:
        file.write(text)
    print(text)


if __name__ == "__main__":
    main()
