"""The `tf.data` pipeline shared by every reader: load, skip bad images, augment, batch.

TensorFlow-only code, confined to `keras_centernet.data`; the datasets it builds
feed `model.fit` on every Keras backend.

A reader supplies a `Source`: how many examples, and a function from an index
to one decoded example `{"image": uint8 (H, W, 3), "boxes": float32 (N, 4)
xyxy in the image's pixels, "labels": int32 (N,), "image_id": int64}`, and
for a source of people with joints `"keypoints": float32 (N, J, 3)` `(x, y,
visibility)` in the image's pixels. The pipeline then:

1. orders the indices (a fresh seeded permutation every pass when training);
2. loads each example in parallel; an example whose loading fails (a missing
   file, bytes that do not decode) is skipped with one warning naming it, and
   at the end of each pass one warning counts the skipped examples;
3. clips the boxes to the image, augments (training) or preprocesses
   (evaluation) with TF image ops in a parallel `map`, transforms and clips the
   boxes (and joints) with the image, keeps at most `max_objects` (the
   largest) and pads;
4. batches and prefetches.

Randomness is stateless, seeded per example by `(pass seed, example index)`,
so a seeded dataset gives the same batches on every run, whatever the
parallelism, and new augmentations on each pass over it. The pass seeds come
from `tf.data.Dataset.random(seed)`, which TensorFlow combines with its global
seed: runs agree when that is the same too (`keras.utils.set_random_seed`
sets it).
"""

import sys

import numpy as np
import tensorflow as tf

from keras_centernet.data.augment import Augmentation
from keras_centernet.data.augment import eval_preprocess
from keras_centernet.data.augment import place_on_canvas
from keras_centernet.data.boxes import clip_boxes
from keras_centernet.data.boxes import convert_boxes_format
from keras_centernet.data.boxes import gather_objects
from keras_centernet.data.boxes import selection_order
from keras_centernet.data.boxes import transform_boxes
from keras_centernet.data.boxes import transform_keypoints
from keras_centernet.targets.keypoints import flip_permutation

AUTOTUNE = tf.data.AUTOTUNE

AUGMENT_ON = ("cpu", "accelerator")
# The longest image side of COCO (640) and VOC (500): canvases of this size
# hold their images unscaled, so the augmentation on the accelerator crops
# exactly the official input.
DEFAULT_CANVAS_SIDE = 640


class Source:
    """What a reader gives the pipeline.

    Args:
        num_examples: int or None. None for an endless source.
        load: function `element -> dict` of one example: `image` uint8
            `(H, W, 3)`, `boxes` float32 `(N, 4)` xyxy, `labels` int32
            `(N,)`, `image_id` int64 scalar, and `index` int64 scalar (which
            seeds its augmentation) unless the element is the index itself.
            It may raise (TensorFlow errors) for a bad example when
            `can_fail`.
        name: function `element -> string tensor` naming the example in
            warnings (its file). Needed when `can_fail`.
        can_fail: bool. Whether loading may fail, so that failures are caught.
        at_input_size: bool. Whether images are made at the input size
            already (then evaluation leaves them as they are).
        elements: None, or a function `(pass_seed, shuffle) -> Dataset` of
            the elements of one pass. None: the indices `0 .. num_examples-1`
            (a seeded permutation when shuffling), or an endless counter.
        num_joints: None, or int `J`: `load` also gives `keypoints` float32
            `(N, J, 3)`, `(x, y, visibility)` in the image's pixels, which
            the pipeline maps with the boxes (`transform_keypoints`) and
            yields as `targets["keypoints"]` `(M, J, 3)`.
        flip_pairs: pairs of joint indices that a horizontal flip swaps
            (left and right). Defaults to none.
    """

    def __init__(self, num_examples, load, name=None, can_fail=False, at_input_size=False,
                 elements=None, num_joints=None, flip_pairs=()):
        if can_fail and name is None:
            raise ValueError("A source that can fail needs a `name` function for its warnings.")
        if num_joints is not None and (not isinstance(num_joints, (int, np.integer)) or num_joints < 1):
            raise ValueError(f"`num_joints` must be None or a positive int; received {num_joints!r}.")
        self.num_examples = num_examples
        self.load = load
        self.name = name
        self.can_fail = can_fail
        self.at_input_size = at_input_size
        self.elements = elements
        self.num_joints = None if num_joints is None else int(num_joints)
        self.flip_pairs = tuple(tuple(int(v) for v in pair) for pair in flip_pairs)
        if self.num_joints is not None:
            # Validates the pairs against the joints.
            self.flip_permutation = flip_permutation(self.num_joints, self.flip_pairs)
        elif self.flip_pairs:
            raise ValueError("`flip_pairs` need `num_joints`.")


class DatasetInfo:
    """What travels with a dataset: class names, category ids and ground truth.

    Every reader returns a `tf.data.Dataset` carrying one of these as
    `dataset.info` (and its `class_names`, `category_ids` and `num_classes`
    as attributes of the dataset too). The attributes belong to that dataset
    object: `dataset.take(10)` or `dataset.map(...)` return new datasets
    without them, so keep `info = dataset.info` before transforming.

    Args:
        class_names: list of str, indexed by label.
        category_ids: list of int, the ground truth's category id of each
            label (for COCO results files).
        num_examples: int or None. Images in one pass (before skipping bad
            ones); None for an endless dataset.
        ground_truth: a pycocotools-style dict (`images`, `annotations`,
            `categories`), or a function without arguments returning one
            (evaluated once, on first access), or None.
        source: str. Where the data comes from, for messages.

    Example:

    >>> info = DatasetInfo(["cat", "dog"], [17, 18])
    >>> info.num_classes, info.label_to_category_id, info.category_id_to_label[18]
    (2, {0: 17, 1: 18}, 1)
    """

    def __init__(self, class_names, category_ids, num_examples=None, ground_truth=None,
                 source=""):
        self.class_names = [str(name) for name in class_names]
        self.category_ids = [int(i) for i in category_ids]
        if len(self.class_names) != len(self.category_ids):
            raise ValueError(
                f"{len(self.class_names)} class names for {len(self.category_ids)} category ids."
            )
        self.num_examples = num_examples
        self._ground_truth = ground_truth
        self.source = source

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def label_to_category_id(self):
        """dict label -> category id."""
        return dict(enumerate(self.category_ids))

    @property
    def category_id_to_label(self):
        """dict category id -> label."""
        return {category: label for label, category in enumerate(self.category_ids)}

    @property
    def ground_truth(self):
        """The pycocotools-style ground-truth dict (built on first access)."""
        if callable(self._ground_truth):
            self._ground_truth = self._ground_truth()
        if self._ground_truth is None:
            raise ValueError(f"No COCO ground truth for this dataset ({self.source}).")
        return self._ground_truth

    def __repr__(self):
        return (
            f"DatasetInfo(source={self.source!r}, num_classes={self.num_classes}, "
            f"num_examples={self.num_examples}, class_names={self.class_names!r})"
        )


def attach_info(dataset, info):
    """Sets `info` and its `class_names`, `category_ids`, `num_classes` on `dataset`.

    `object.__setattr__` keeps the values as they are: a dataset is trackable
    and would wrap plain lists in tracking containers.
    """
    object.__setattr__(dataset, "info", info)
    object.__setattr__(dataset, "class_names", list(info.class_names))
    object.__setattr__(dataset, "category_ids", list(info.category_ids))
    object.__setattr__(dataset, "num_classes", info.num_classes)
    return dataset


def normalize_image_size(image_size):
    """`int` or `(height, width)` -> `(height, width)`, validated."""
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    try:
        height, width = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"`image_size` must be an int or (height, width); received {image_size!r}."
        ) from None
    if height < 1 or width < 1:
        raise ValueError(f"`image_size` must be positive; received {image_size!r}.")
    return height, width


def resolve_canvas_size(augment_on, canvas_size, image_size, at_input_size=False):
    """Validates `augment_on` and gives the canvas `(height, width)` of the accelerator mode.

    `canvas_size=None`: the input size for images made at it (the synthetic
    set), else at least `DEFAULT_CANVAS_SIDE` on each side (COCO and VOC
    images fit unscaled). None in the `"cpu"` mode.
    """
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"`augment_on` must be one of {AUGMENT_ON}; received {augment_on!r}.")
    if augment_on == "cpu":
        return None
    if canvas_size is not None:
        return normalize_image_size(canvas_size)
    if at_input_size:
        return tuple(image_size)
    return tuple(max(side, DEFAULT_CANVAS_SIDE) for side in image_size)


def validate_common(batch_size, max_objects, bounding_box_format):
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    if not isinstance(max_objects, (int, np.integer)) or max_objects < 1:
        raise ValueError(f"`max_objects` must be a positive int; received {max_objects!r}.")
    formats = (
        "xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw",
        "rel_xyxy", "rel_yxyx", "rel_xywh", "rel_center_xywh",
    )
    if bounding_box_format not in formats:
        raise ValueError(
            f"`bounding_box_format` must be one of {formats}; received {bounding_box_format!r}."
        )


def _single(element):
    """`Dataset.map` splits tuple elements into arguments: join them again."""
    return element[0] if len(element) == 1 else element


def _failed_example(index, name, num_joints=None):
    example = {
        "ok": tf.constant(False),
        "end": tf.constant(False),
        "name": name,
        "index": index,
        "image": tf.zeros([0, 0, 3], tf.uint8),
        "boxes": tf.zeros([0, 4], tf.float32),
        "labels": tf.zeros([0], tf.int32),
        "image_id": tf.constant(-1, tf.int64),
    }
    if num_joints is not None:
        example["keypoints"] = tf.zeros([0, num_joints, 3], tf.float32)
    return example


def _loaded_example(source, element):
    example = source.load(element)
    loaded = {
        "ok": tf.constant(True),
        "end": tf.constant(False),
        "name": source.name(element) if source.name is not None else tf.constant(""),
        "index": tf.cast(example.get("index", element), tf.int64),
        "image": tf.ensure_shape(example["image"], [None, None, 3]),
        "boxes": tf.ensure_shape(tf.cast(example["boxes"], tf.float32), [None, 4]),
        "labels": tf.ensure_shape(tf.cast(example["labels"], tf.int32), [None]),
        "image_id": tf.cast(example["image_id"], tf.int64),
    }
    if source.num_joints is not None:
        loaded["keypoints"] = tf.ensure_shape(
            tf.cast(example["keypoints"], tf.float32), [None, source.num_joints, 3]
        )
    return loaded


def _load_skipping_failures(source, element):
    """A dataset of one example: the loaded one, or a failure marker naming it."""
    loaded = tf.data.Dataset.from_tensors(element).map(
        lambda *e: _loaded_example(source, _single(e))
    ).ignore_errors()
    failed = tf.data.Dataset.from_tensors(
        _failed_example(tf.constant(-1, tf.int64), source.name(element), source.num_joints)
    )
    return loaded.concatenate(failed).take(1)


def _report(skipped, example):
    """Counts failures, warning once per bad example and once at the end of a pass."""
    failed = tf.logical_and(tf.logical_not(example["ok"]), tf.logical_not(example["end"]))

    def warn_failed():
        tf.print(
            "WARNING keras_centernet.data: skipped an image that could not be read:",
            example["name"],
            output_stream=sys.stderr,
        )
        return skipped + 1

    skipped = tf.cond(failed, warn_failed, lambda: skipped)

    def warn_total():
        tf.print(
            "WARNING keras_centernet.data: skipped",
            skipped,
            "unreadable image(s) in this pass over the dataset.",
            output_stream=sys.stderr,
        )
        return tf.constant(0, tf.int64)

    new_state = tf.cond(example["end"] & (skipped > 0), warn_total, lambda: skipped)
    new_state = tf.where(example["end"], tf.constant(0, tf.int64), new_state)
    return new_state, example


def build_dataset(
    source,
    *,
    training,
    batch_size,
    image_size,
    max_objects=128,
    augmentation=None,
    seed=None,
    bounding_box_format="xyxy",
    eval_resize=True,
    size_divisor=32,
    shuffle=True,
    repeat=False,
    augment_on="cpu",
    canvas_size=None,
):
    """Builds the batched dataset of a `Source`.

    Args:
        source: `Source`.
        training: bool. Augmented, shuffled batches of `(images, {"boxes",
            "labels"})` (and `"keypoints"` `(B, M, J, 3)` for a source with
            `num_joints`), or evaluation batches with metadata (see the
            package docstring).
        batch_size: int.
        image_size: `(height, width)` of the input images.
        max_objects: int. Objects per image after padding.
        augmentation: `Augmentation` or None (the official default). Used
            when `training`.
        seed: int or None. Seeds the order and the augmentation.
        bounding_box_format: str. Format of the yielded boxes.
        eval_resize: bool. In evaluation, resize the longer side to
            `image_size` (True), or keep the original scale and pad to a
            multiple of `size_divisor` (False: then a batch is padded to its
            largest image).
        size_divisor: int. See `eval_resize`.
        shuffle: bool. Shuffle the order each pass when training.
        repeat: bool. Repeat passes endlessly (training only).
        augment_on: `"cpu"` or `"accelerator"`. Where the training
            augmentation runs: here, or in the model
            (`kc.layers.BatchAugmentation`); then training batches are
            uint8 RGBA canvases of `canvas_size` with boxes on them (see
            `place_on_canvas`). Evaluation is the same in both.
        canvas_size: `(height, width)` or None. See `resolve_canvas_size`.

    Returns:
        A `tf.data.Dataset`.
    """
    canvas_size = resolve_canvas_size(augment_on, canvas_size, image_size, source.at_input_size)
    on_accelerator = training and canvas_size is not None
    if on_accelerator and augmentation is not None:
        raise ValueError(
            "With `augment_on='accelerator'` the augmentation is the model's: pass "
            "`CenterNet(augmentation=kc.layers.BatchAugmentation(...))`, not `augmentation=`."
        )
    if on_accelerator and source.num_joints is not None:
        raise ValueError(
            "Keypoints need the CPU augmentation: `augment_on='accelerator'` hands the crop "
            "and flip to `kc.layers.BatchAugmentation`, which maps boxes only, not joints. "
            "Use `augment_on='cpu'` (the default); `CenterNetPose` takes no `augmentation=` "
            "either (its own `flip_probability` mirrors joints and swaps left and right)."
        )
    with_keypoints = source.num_joints is not None
    permutation = source.flip_permutation if with_keypoints and source.flip_pairs else None
    if augmentation is None:
        augmentation = Augmentation()
    output_size = tuple(image_size)
    num_examples = source.num_examples
    deterministic = seed is not None

    def finish(example, pass_seed):
        image = example["image"]
        shape = tf.shape(image)
        boxes = clip_boxes(example["boxes"], shape[0], shape[1])
        labels = example["labels"]
        if on_accelerator:
            image, matrix = place_on_canvas(image, canvas_size)
            boxes = transform_boxes(boxes, matrix)
        elif training:
            seed_pair = tf.stack([pass_seed, tf.cast(example["index"], tf.int64)])
            image, boxes, matrix = augmentation(image, boxes, output_size, seed_pair)
        else:
            if source.at_input_size:
                image = tf.ensure_shape(tf.cast(image, tf.float32), [*output_size, 3])
                matrix = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
            else:
                image, matrix = eval_preprocess(
                    image, output_size if eval_resize else None, size_divisor
                )
            boxes = transform_boxes(boxes, matrix)
        out_shape = tf.shape(image)
        out_height, out_width = out_shape[0], out_shape[1]
        boxes = clip_boxes(boxes, out_height, out_width)
        order = selection_order(boxes, labels, max_objects)
        boxes = gather_objects(boxes, order, max_objects)
        labels = gather_objects(labels, order, max_objects, padding=-1)
        boxes = convert_boxes_format(boxes, labels, bounding_box_format, out_height, out_width)
        targets = {"boxes": boxes, "labels": labels}
        if with_keypoints:
            # The boxes' matrix (a flip mirrors it: left and right swap too).
            keypoints = transform_keypoints(
                example["keypoints"], matrix, out_height, out_width, permutation
            )
            targets["keypoints"] = gather_objects(keypoints, order, max_objects)
        if not training:
            targets["image_id"] = example["image_id"]
            targets["original_size"] = shape[:2]
            targets["transform"] = matrix
        return image, targets

    def one_pass(pass_seed, indices):
        if source.can_fail:
            examples = indices.interleave(
                lambda *element: _load_skipping_failures(source, _single(element)),
                cycle_length=AUTOTUNE,
                num_parallel_calls=AUTOTUNE,
                deterministic=deterministic or not training,
            )
            end_marker = _failed_example(
                tf.constant(-1, tf.int64), tf.constant(""), source.num_joints
            )
            end_marker["end"] = tf.constant(True)
            examples = examples.concatenate(tf.data.Dataset.from_tensors(end_marker))
            examples = examples.scan(tf.constant(0, tf.int64), _report)
            examples = examples.filter(lambda example: example["ok"])
        else:
            examples = indices.map(
                lambda *element: _loaded_example(source, _single(element)),
                num_parallel_calls=AUTOTUNE,
                deterministic=deterministic or not training,
            )
        return examples.map(
            lambda example: finish(example, pass_seed),
            num_parallel_calls=AUTOTUNE,
            deterministic=deterministic or not training,
        )

    def indices_of_pass(pass_seed):
        if source.elements is not None:
            return source.elements(pass_seed, training and shuffle)
        if num_examples is None:
            return tf.data.Dataset.counter()
        order = tf.range(num_examples, dtype=tf.int64)
        if training and shuffle:
            keys = tf.random.stateless_uniform([num_examples], tf.stack([pass_seed, -1]))
            order = tf.gather(order, tf.argsort(keys))
        return tf.data.Dataset.from_tensor_slices(order)

    if training:
        # One seed per pass; new seeds on every iteration of the dataset (each
        # Keras epoch), reproducible from `seed`.
        pass_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        endless = num_examples is None and source.elements is None
        pass_seeds = pass_seeds.take(-1 if repeat and not endless else 1)
        dataset = pass_seeds.flat_map(lambda s: one_pass(s, indices_of_pass(s)))
        dataset = dataset.batch(batch_size, drop_remainder=True)
    else:
        pass_seed = tf.constant(0, tf.int64)
        dataset = one_pass(pass_seed, indices_of_pass(pass_seed))
        if eval_resize or source.at_input_size:
            dataset = dataset.batch(batch_size)
        else:
            dataset = dataset.padded_batch(batch_size)
    if num_examples is not None and not source.can_fail and not (training and repeat):
        # The batch count is exact when no example can be skipped: Keras then
        # knows the epoch's length (progress bar, no "ran out of data" warning).
        batches = num_examples // batch_size if training else -(-num_examples // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.prefetch(AUTOTUNE)
