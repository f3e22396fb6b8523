"""Detection datasets of TensorFlow Datasets: COCO 2017 and PASCAL VOC 2007/2012.

TensorFlow-only code, confined to `keras_centernet.data`: it reads the real
`tensorflow_datasets` builders (prepared with `tfds.builder(name).
download_and_prepare()` or `tfds.load`) and feeds the same pipeline as the
other readers, so its datasets go to `model.fit` on every Keras backend.

TFDS stores boxes as relative `[ymin, xmin, ymax, xmax]`; they are turned into
pixels of the decoded image. Images are kept encoded until after shuffling
(`SkipDecoding`), then decoded in parallel like any file.

- `coco/2017`: labels are TFDS's, which follow the category ids in increasing
  order (the official label order); `category_ids` are COCO's ids (1 to 90
  with gaps), image ids are COCO's. Crowd annotations are objects, as in the
  official code, unless `include_crowd=False`.
- `voc/2007`, `voc/2012`: the 20 VOC classes, category ids `label + 1`, image
  ids `index + 1` in the split's order. Objects marked difficult are left out
  of training targets unless `include_difficult=True`; in the ground truth
  they are crowd regions, which pycocotools ignores as VOC ignores difficult
  objects.
- A record whose image does not decode is skipped with a warning naming its
  `image/filename` and a count at the end of each pass, as in `coco_json`,
  and left out of the ground truth.
"""

import tensorflow as tf

from keras_centernet.data.decode import decode_image
from keras_centernet.data.pipeline import DatasetInfo
from keras_centernet.data.pipeline import Source
from keras_centernet.data.pipeline import attach_info
from keras_centernet.data.pipeline import build_dataset
from keras_centernet.data.pipeline import normalize_image_size
from keras_centernet.data.pipeline import validate_common

# The 80 COCO categories in increasing id order: the official `class_name`
# and `_valid_ids` of `src/lib/datasets/dataset/coco.py`.
COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
VOC_CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
SUPPORTED = ("coco/2017", "voc/2007", "voc/2012")
_SHUFFLE_BUFFER = 1024


def _class_names(builder, default):
    names = list(builder.info.features["objects"]["label"].names)
    # A builder whose metadata was never prepared names its classes "0", "1", ...
    if len(names) == len(default) and not all(name.isdigit() for name in names):
        return names
    return list(default)


def _pixel_boxes(relative_yxyx, height, width):
    """TFDS relative `[ymin, xmin, ymax, xmax]` -> `xyxy` pixels."""
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(tf.reshape(relative_yxyx, [-1, 4]), axis=-1)
    return tf.stack([xmin * width, ymin * height, xmax * width, ymax * height], axis=-1)


def _object_mask(objects, is_coco, include_crowd, include_difficult):
    labels = objects["label"]
    keep = tf.ones_like(labels, tf.bool)
    if is_coco and not include_crowd:
        keep = tf.logical_not(objects["is_crowd"])
    if not is_coco and not include_difficult:
        keep = tf.logical_not(objects["is_difficult"])
    return keep


def _image_shape(encoded):
    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, 2), b"\xff\xd8")
    return tf.cond(
        is_jpeg,
        lambda: tf.io.extract_jpeg_shape(encoded)[:2],
        lambda: tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))[:2],
    )


def _ground_truth(builder, split, is_coco, class_names, category_ids, data_dir):
    """The pycocotools dict of a TFDS split, read without decoding pixels."""
    import tensorflow_datasets as tfds

    examples = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    ).enumerate()

    def summarize(index, example):
        shape = _image_shape(example["image"])
        objects = example["objects"]
        crowd = objects["is_crowd"] if is_coco else objects["is_difficult"]
        image_id = example["image/id"] if is_coco else index + 1
        return {
            "image_id": tf.cast(image_id, tf.int64),
            "file_name": example["image/filename"],
            "shape": shape,
            "boxes": _pixel_boxes(objects["bbox"], shape[0], shape[1]),
            "labels": objects["label"],
            "crowd": crowd,
        }

    images, annotations = [], []
    # A record whose image cannot be read is left out, as the datasets skip it.
    summaries = examples.map(
        summarize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).ignore_errors()
    for summary in summaries.as_numpy_iterator():
        image_id = int(summary["image_id"])
        height, width = (int(v) for v in summary["shape"])
        images.append(
            {"id": image_id, "file_name": summary["file_name"].decode(),
             "height": height, "width": width}
        )
        for box, label, crowd in zip(summary["boxes"], summary["labels"], summary["crowd"]):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id,
                 "category_id": category_ids[int(label)], "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "area": (x2 - x1) * (y2 - y1), "iscrowd": int(bool(crowd))}
            )
    categories = [{"id": i, "name": n} for i, n in zip(category_ids, class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def tfds_dataset(
    name,
    split="train",
    batch_size=8,
    training=True,
    image_size=512,
    max_objects=128,
    data_dir=None,
    download=False,
    include_crowd=True,
    include_difficult=False,
    seed=None,
    augmentation=None,
    bounding_box_format="xyxy",
    eval_resize=True,
    size_divisor=32,
    repeat=False,
    augment_on="cpu",
    canvas_size=None,
):
    """A detection dataset of TensorFlow Datasets (`coco/2017`, `voc/2007`, `voc/2012`).

    Same batches as `kc.data.coco_json` (training or evaluation structure,
    see `keras_centernet.data`), read from a TFDS builder.

    Args:
        name: str. `"coco/2017"`, `"voc/2007"` or `"voc/2012"`.
        split: str. A TFDS split (`"train"`, `"validation"`, `"test"`,
            `"train+validation"`, slices like `"train[:10%]"`). Defaults to
            `"train"`.
        batch_size: int. Defaults to 8.
        training: bool. Shuffled, augmented batches (True) or evaluation
            batches in order with metadata (False). Defaults to True.
        image_size: int or `(height, width)`. Defaults to 512.
        max_objects: int. Objects per image after padding. Defaults to 128.
        data_dir: str or None. TFDS data folder. Defaults to None (TFDS's).
        download: bool. Download and prepare the dataset if needed (COCO is
            about 40 GB). Defaults to False.
        include_crowd: bool. COCO crowd annotations as objects (official).
            Defaults to True.
        include_difficult: bool. VOC difficult objects as objects. Defaults
            to False.
        seed: int or None. Seeds file order, shuffling and augmentation.
            Defaults to None.
        augmentation: `Augmentation` or None (the official default).
            Defaults to None.
        bounding_box_format: str. Defaults to `"xyxy"`.
        eval_resize: bool. See `kc.data.coco_json`. Defaults to True.
        size_divisor: int. See `kc.data.coco_json`. Defaults to 32.
        repeat: bool. Repeat passes endlessly (training). Defaults to False.
        augment_on: `"cpu"` or `"accelerator"`. Where the training
            augmentation runs. `"accelerator"`: the CPU only decodes and puts
            each image on a fixed canvas; batches are `(canvases uint8 (B,
            h, w, 4) RGBA, {"boxes", "labels"} on the canvas)` for a model
            with `augmentation=kc.layers.BatchAugmentation(image_size)`,
            which augments them in its training step (see
            `keras_centernet.data`). Evaluation is the same in both modes.
            Defaults to `"cpu"`.
        canvas_size: int, `(height, width)` or None. The canvas of
            `augment_on="accelerator"`. Defaults to None: `max(image_size, 640)` per side: COCO and VOC images fit unscaled, so the crop is exactly the official one; larger images are resized to fit (then the crop border and the integer crop centres are in canvas pixels).

    Returns:
        A `tf.data.Dataset` with `.info` (`DatasetInfo`; its `ground_truth`
        is built from the split on first access), `.class_names`,
        `.category_ids` and `.num_classes`.

    Example:

    ```python
    train = kc.data.tfds_dataset("voc/2007", split="train+validation", batch_size=16)
    val = kc.data.tfds_dataset("voc/2007", split="test", training=False)
    ```
    """
    import tensorflow_datasets as tfds

    if name not in SUPPORTED:
        raise ValueError(f"`name` must be one of {SUPPORTED}; received {name!r}.")
    image_size = normalize_image_size(image_size)
    validate_common(batch_size, max_objects, bounding_box_format)
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    is_coco = name.startswith("coco")
    if is_coco:
        class_names = _class_names(builder, COCO_CLASS_NAMES)
        category_ids = list(COCO_CATEGORY_IDS)
    else:
        class_names = _class_names(builder, VOC_CLASS_NAMES)
        category_ids = list(range(1, len(class_names) + 1))
    try:
        num_examples = builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        num_examples = None

    def examples_of(shuffle):
        examples = builder.as_dataset(
            split=split,
            shuffle_files=shuffle,
            read_config=tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=True),
            decoders={"image": tfds.decode.SkipDecoding()},
        ).enumerate()
        if shuffle:
            # Still encoded here, so the buffer is small; a new order on
            # every iteration, reproducible from `seed`.
            examples = examples.shuffle(_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        return examples

    training_examples = examples_of(True) if training else None
    ordered_examples = None if training else examples_of(False)

    def elements(pass_seed, shuffle):
        return training_examples if shuffle else ordered_examples

    def load(element):
        index, example = element
        image = decode_image(example["image"], apply_orientation=False)
        shape = tf.shape(image)
        objects = example["objects"]
        keep = _object_mask(objects, is_coco, include_crowd, include_difficult)
        boxes = _pixel_boxes(objects["bbox"], shape[0], shape[1])
        image_id = example["image/id"] if is_coco else index + 1
        return {
            "index": index,
            "image": image,
            "boxes": tf.boolean_mask(boxes, keep),
            "labels": tf.cast(tf.boolean_mask(objects["label"], keep), tf.int32),
            "image_id": image_id,
        }

    # A record whose image does not decode is skipped with a warning, as in
    # the COCO-JSON reader.
    source = Source(
        num_examples, load, name=lambda element: element[1]["image/filename"], can_fail=True,
        elements=elements,
    )
    dataset = build_dataset(
        source,
        training=training,
        batch_size=batch_size,
        image_size=image_size,
        max_objects=max_objects,
        augmentation=augmentation,
        seed=seed,
        bounding_box_format=bounding_box_format,
        eval_resize=eval_resize,
        size_divisor=size_divisor,
        repeat=repeat,
        augment_on=augment_on,
        canvas_size=canvas_size,
    )
    info = DatasetInfo(
        class_names,
        category_ids,
        num_examples=num_examples,
        ground_truth=lambda: _ground_truth(
            builder, split, is_coco, class_names, category_ids, data_dir
        ),
        source=f"tfds:{name}[{split}]",
    )
    return attach_info(dataset, info)
