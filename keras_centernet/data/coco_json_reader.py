"""A detection dataset from any COCO-format folder: images and one annotations JSON.

TensorFlow-only code, confined to `keras_centernet.data`: images are read and
decoded with TF ops inside `tf.data`, and the dataset feeds `model.fit` on
every Keras backend.

The format of COCO itself, LVIS-style subsets and the COCO exports of
Roboflow, CVAT or Label Studio: `images` (`id`, `file_name`, optionally
`width`, `height`), `annotations` (`image_id`, `category_id`, `bbox` as
`[x, y, width, height]` in pixels, optionally `iscrowd`) and `categories`
(`id`, `name`).

What happens to imperfect input:
- The annotations file is checked when the dataset is made: a missing file,
  invalid JSON, or a missing or mistyped field raises at once, naming the
  file and the field (e.g. `annotations[12].bbox`).
- Annotations with a non-finite, zero or negative width or height, with a
  category id that is not among the categories used, or with an image id not
  in `images`, are dropped with one warning per kind that counts them.
- Boxes partly outside the image are clipped to it; boxes wholly outside it
  are dropped (after decoding, against the real image size).
- Images that cannot be read (missing file, truncated or corrupt bytes) are
  skipped while iterating, with one warning naming the file and a count at
  the end of each pass; nothing stops mid-epoch.
- Grayscale, RGBA, 16-bit PNG and CMYK JPEG images are converted to RGB
  8-bit; EXIF orientation is applied (see `decode.py`).
- More than `max_objects` objects in an image: the largest are kept.
- `iscrowd` annotations are training objects like the others, as in the
  official code (its `getAnnIds` does not filter them); pass
  `include_crowd=False` to leave them out. The ground truth used for COCO
  evaluation keeps them, and pycocotools treats them as crowds.

COCO person keypoints (`person_keypoints_*.json`, `coco_json(...,
keypoints=True)`): each annotation also has `keypoints` `[x1, y1, v1, ...]`,
one triple per joint of its category's `keypoints` list (17 for COCO), and
the joints travel with the boxes through the augmentation (see `coco_json`).
A `keypoints` field that is missing, not numbers, not a multiple of 3 long,
of another length than the category's joint list, or with a visibility other
than 0, 1, 2 raises at once, naming the file, the field and the annotation id.
"""

import json
import math
import os
import warnings

import numpy as np
import tensorflow as tf

from keras_centernet.data.decode import decode_image
from keras_centernet.data.pipeline import DatasetInfo
from keras_centernet.data.pipeline import Source
from keras_centernet.data.pipeline import attach_info
from keras_centernet.data.pipeline import build_dataset
from keras_centernet.data.pipeline import normalize_image_size
from keras_centernet.data.pipeline import validate_common
from keras_centernet.targets.keypoints import COCO_FLIP_PAIRS
from keras_centernet.targets.keypoints import COCO_KEYPOINT_NAMES


class CocoAnnotations:
    """The parsed, validated annotations of one COCO JSON file.

    Attributes:
        path: str, the JSON file.
        file_names: list of str, per image, relative to the images folder.
        image_ids: int64 array `(num_images,)`.
        boxes: float32 array `(num_boxes, 4)`, `xyxy` pixels, all images.
        labels: int32 array `(num_boxes,)`, contiguous labels.
        row_splits: int64 array `(num_images + 1,)`: image `i` owns
            `boxes[row_splits[i]:row_splits[i + 1]]`.
        class_names: list of str, per label.
        category_ids: list of int, per label.
        keypoints: None, or float32 array `(num_boxes, J, 3)`: each box's
            joints `(x, y, visibility)` in pixels, unlabelled joints zeros
            (read with `keypoints=True`).
        keypoint_names: None, or list of `J` str: the categories' `keypoints`.
        skeleton: None, or list of 1-based joint pairs: the category's
            `skeleton` (empty when the file has none).
    """

    def __init__(self, path, file_names, image_ids, boxes, labels, row_splits,
                 class_names, category_ids, keypoints=None, keypoint_names=None, skeleton=None):
        self.path = path
        self.file_names = file_names
        self.image_ids = image_ids
        self.boxes = boxes
        self.labels = labels
        self.row_splits = row_splits
        self.class_names = class_names
        self.category_ids = category_ids
        self.keypoints = keypoints
        self.keypoint_names = keypoint_names
        self.skeleton = skeleton

    @property
    def num_images(self):
        return len(self.file_names)


def _malformed(path, field, problem):
    return ValueError(f"Malformed COCO annotations file {path}: `{field}` {problem}")


def _require(entry, key, types, path, field, type_name):
    if not isinstance(entry, dict):
        raise _malformed(path, field, f"must be an object; found {type(entry).__name__}.")
    if key not in entry:
        raise _malformed(path, f"{field}.{key}", "is missing.")
    value = entry[key]
    if not isinstance(value, types) or isinstance(value, bool):
        raise _malformed(
            path, f"{field}.{key}", f"must be {type_name}; found {value!r}."
        )
    return value


def _load_json(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO annotations file not found: {path}")
    try:
        with open(path, "rb") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Malformed COCO annotations file {path}: not valid JSON ({error.msg} at line "
            f"{error.lineno}, column {error.colno})."
        ) from None
    except UnicodeDecodeError as error:
        raise ValueError(f"Malformed COCO annotations file {path}: not UTF-8 text ({error}).") \
            from None


def _warn_dropped(path, count, what, examples):
    if count:
        shown = ", ".join(str(e) for e in examples[:5])
        warnings.warn(
            f"{path}: dropped {count} annotation(s) {what} (first: {shown}).", stacklevel=3
        )


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _category_joints(category, path, field):
    """The `keypoints` names and `skeleton` of one category of a keypoints file."""
    if "keypoints" not in category:
        raise _malformed(
            path, f"{field}.keypoints",
            f"is missing: with `keypoints=True` every category used needs its joint names "
            f"(category {category.get('name')!r}; pass `categories=` to use only the ones "
            "with keypoints, e.g. ['person']).",
        )
    names = category["keypoints"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _malformed(path, f"{field}.keypoints", f"must be a non-empty list of joint names; "
                         f"found {names!r}.")
    skeleton = category.get("skeleton", [])
    if not isinstance(skeleton, list) or not all(
        isinstance(edge, list) and len(edge) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= len(names) for v in edge
        )
        for edge in skeleton
    ):
        raise _malformed(path, f"{field}.skeleton", f"must be a list of [joint, joint] pairs, "
                         f"1-based, of at most {len(names)}; found {skeleton!r}.")
    return names, skeleton


def _annotation_joints(annotation, path, field, num_joints, category_name):
    """One annotation's joints as a `(J, 3)` array, unlabelled joints zeros; raises if malformed."""
    who = f"of annotation id {annotation.get('id', '?')!r}"
    where = f"{field}.keypoints"
    if "keypoints" not in annotation:
        raise _malformed(path, where, f"{who} is missing (a keypoints file gives every "
                         "annotation `keypoints` [x1, y1, v1, ...]).")
    values = annotation["keypoints"]
    if not isinstance(values, list) or not all(_is_number(v) for v in values):
        shown = values if not isinstance(values, list) else values[:6]
        raise _malformed(path, where, f"{who} must be a list of numbers [x1, y1, v1, ...]; "
                         f"found {shown!r}.")
    if len(values) % 3:
        raise _malformed(path, where, f"{who} has {len(values)} numbers, not a multiple of 3 "
                         "(x, y, visibility per joint).")
    if len(values) != 3 * num_joints:
        raise _malformed(
            path, where,
            f"{who} has {len(values) // 3} joints ({len(values)} numbers); its category "
            f"{category_name!r} lists {num_joints} in `keypoints`, so it must hold "
            f"{3 * num_joints}.",
        )
    joints = np.asarray(values, np.float64).reshape(num_joints, 3)
    if not np.all(np.isfinite(joints)):
        raise _malformed(path, where, f"{who} holds a non-finite value.")
    if not np.all(np.isin(joints[:, 2], (0, 1, 2))):
        raise _malformed(path, where, f"{who} has visibilities {joints[:, 2].tolist()}; COCO's "
                         "are 0 (unlabelled), 1 (labelled, hidden) and 2 (visible).")
    # COCO writes unlabelled joints as (0, 0, 0); make sure of it.
    return joints * (joints[:, 2:] > 0)


def keypoint_flip_pairs(names):
    """Left/right joint pairs from joint names: `COCO_FLIP_PAIRS` for COCO's 17.

    Other joint lists are paired by name: a name containing `left` with the
    same name with `right` in its place.

    Example:

    >>> keypoint_flip_pairs(["nose", "left_eye", "right_eye"])
    ((1, 2),)
    """
    names = list(names)
    if tuple(names) == COCO_KEYPOINT_NAMES:
        return COCO_FLIP_PAIRS
    position = {name: j for j, name in enumerate(names)}
    pairs = []
    for j, name in enumerate(names):
        if "left" in name:
            partner = position.get(name.replace("left", "right", 1))
            if partner is not None and partner != j:
                pairs.append((j, partner))
    return tuple(pairs)


def read_coco_annotations(annotations_json, categories=None, include_crowd=True,
                          drop_empty=False, keypoints=False):
    """Reads and validates a COCO JSON file.

    Args:
        annotations_json: str, path of the JSON file.
        categories: None, or a list of category ids (ints) or names (strs)
            to use, in label order. None uses every category of the file,
            sorted by id (the official label order for COCO).
        include_crowd: bool. Whether `iscrowd` annotations are objects.
        drop_empty: bool. Whether to leave out images without objects.
        keypoints: bool. Also read each object's joints (COCO person
            keypoints): every category used must list the same number of
            `keypoints`, every annotation of them must have `keypoints`.

    Returns:
        `CocoAnnotations`.

    Example:

    >>> annotations = read_coco_annotations("coco/annotations/instances_val2017.json")
    >>> len(annotations.class_names), annotations.category_ids[:3]
    (80, [1, 2, 3])
    """
    path = os.fspath(annotations_json)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise _malformed(path, "<top level>", f"must be an object; found {type(data).__name__}.")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise _malformed(path, key, "is missing.")
        if not isinstance(data[key], list):
            raise _malformed(path, key, f"must be a list; found {type(data[key]).__name__}.")

    names_by_id, index_by_id = {}, {}
    for i, category in enumerate(data["categories"]):
        category_id = _require(category, "id", int, path, f"categories[{i}]", "an integer")
        name = _require(category, "name", str, path, f"categories[{i}]", "a string")
        if category_id in names_by_id:
            raise _malformed(path, f"categories[{i}].id", f"repeats category id {category_id}.")
        names_by_id[category_id] = name
        index_by_id[category_id] = i
    if categories is None:
        category_ids = sorted(names_by_id)
    else:
        ids_by_name = {name: category_id for category_id, name in names_by_id.items()}
        category_ids = []
        for wanted in categories:
            if isinstance(wanted, str):
                if wanted not in ids_by_name:
                    raise ValueError(f"Category name {wanted!r} is not in {path}.")
                category_ids.append(ids_by_name[wanted])
            elif wanted in names_by_id:
                category_ids.append(int(wanted))
            else:
                raise ValueError(f"Category id {wanted!r} is not in {path}.")
        if len(set(category_ids)) != len(category_ids):
            raise ValueError(f"`categories` repeats a category: {categories!r}.")
    if not category_ids:
        raise _malformed(path, "categories", "is empty.")
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    keypoint_names = skeleton = None
    if keypoints:
        for category_id in category_ids:
            i = index_by_id[category_id]
            names, edges = _category_joints(data["categories"][i], path, f"categories[{i}]")
            if keypoint_names is None:
                keypoint_names, skeleton = names, edges
            elif len(names) != len(keypoint_names):
                raise _malformed(
                    path, f"categories[{i}].keypoints",
                    f"lists {len(names)} joints; the other categories used list "
                    f"{len(keypoint_names)} (one dataset has one joint count).",
                )
        num_joints = len(keypoint_names)

    file_names, image_ids, position = [], [], {}
    for i, image in enumerate(data["images"]):
        image_id = _require(image, "id", int, path, f"images[{i}]", "an integer")
        file_name = _require(image, "file_name", str, path, f"images[{i}]", "a string")
        if image_id in position:
            raise _malformed(path, f"images[{i}].id", f"repeats image id {image_id}.")
        position[image_id] = i
        file_names.append(file_name)
        image_ids.append(image_id)

    per_image = [[] for _ in file_names]
    joints_per_image = [[] for _ in file_names]
    bad_boxes, unknown_categories, unknown_images = [], [], []
    for i, annotation in enumerate(data["annotations"]):
        field = f"annotations[{i}]"
        image_id = _require(annotation, "image_id", int, path, field, "an integer")
        category_id = _require(annotation, "category_id", int, path, field, "an integer")
        bbox = _require(annotation, "bbox", list, path, field, "a list [x, y, width, height]")
        if len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox
        ):
            raise _malformed(path, f"{field}.bbox", f"must be 4 numbers; found {bbox!r}.")
        if keypoints and category_id in label_of:
            joints = _annotation_joints(
                annotation, path, field, num_joints, names_by_id[category_id]
            )
        if annotation.get("iscrowd", 0) and not include_crowd:
            continue
        x, y, width, height = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, width, height)) or width <= 0 or height <= 0:
            bad_boxes.append(f"{field} bbox={bbox}")
            continue
        if image_id not in position:
            unknown_images.append(f"{field} image_id={image_id}")
            continue
        if category_id not in label_of:
            if categories is None:
                unknown_categories.append(f"{field} category_id={category_id}")
            continue
        per_image[position[image_id]].append(
            (x, y, x + width, y + height, label_of[category_id])
        )
        if keypoints:
            joints_per_image[position[image_id]].append(joints)
    _warn_dropped(path, len(bad_boxes), "with a non-finite, zero or negative size", bad_boxes)
    _warn_dropped(path, len(unknown_images), "of an image id not in `images`", unknown_images)
    _warn_dropped(
        path, len(unknown_categories), "of a category id not in `categories`", unknown_categories
    )

    keep = [i for i, objects in enumerate(per_image) if objects or not drop_empty]
    counts = [len(per_image[i]) for i in keep]
    rows = [row for i in keep for row in per_image[i]]
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    joint_table = None
    if keypoints:
        joint_table = np.asarray(
            [joints for i in keep for joints in joints_per_image[i]], np.float32
        ).reshape(-1, num_joints, 3)
    return CocoAnnotations(
        path=path,
        file_names=[file_names[i] for i in keep],
        image_ids=np.asarray([image_ids[i] for i in keep], dtype=np.int64),
        boxes=table[:, :4].astype(np.float32),
        labels=table[:, 4].astype(np.int32),
        row_splits=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        class_names=[names_by_id[i] for i in category_ids],
        category_ids=category_ids,
        keypoints=joint_table,
        keypoint_names=keypoint_names,
        skeleton=skeleton,
    )


def _ground_truth(path, categories, category_ids, keypoints=False):
    """The annotations file as pycocotools reads it, reduced to the categories used.

    With `categories` given, the other categories and their annotations are
    left out, so COCO's mean over categories covers the ones trained on.
    With `keypoints`, an annotation without `num_keypoints` (which
    pycocotools' keypoint evaluation reads) gets its count of labelled joints.
    """
    data = _load_json(path)
    if categories is not None:
        used = set(category_ids)
        data["categories"] = [c for c in data["categories"] if c["id"] in used]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] in used]
    if keypoints:
        for annotation in data["annotations"]:
            if "keypoints" in annotation and "num_keypoints" not in annotation:
                annotation["num_keypoints"] = int(
                    sum(1 for v in annotation["keypoints"][2::3] if v > 0)
                )
    return data


def coco_json(
    images_dir,
    annotations_json,
    batch_size=8,
    training=True,
    image_size=512,
    max_objects=128,
    drop_empty=False,
    include_crowd=None,
    categories=None,
    seed=None,
    augmentation=None,
    bounding_box_format="xyxy",
    eval_resize=True,
    size_divisor=32,
    apply_exif_orientation=True,
    repeat=False,
    augment_on="cpu",
    canvas_size=None,
    keypoints=False,
    flip_pairs=None,
):
    """A detection dataset from a COCO-format folder, optionally with people's joints.

    Yields `(images, {"boxes", "labels"})` batches (training) or the
    evaluation structure of `keras_centernet.data` (see its docstring).
    Category ids are mapped to contiguous labels `0 .. C-1` in increasing id
    order (or the order of `categories`); the mapping and the class names are
    on the returned dataset: `dataset.class_names`, `dataset.category_ids`
    (label -> category id), `dataset.info.ground_truth` (the JSON itself,
    reduced to `categories` when they are given, loaded on first access,
    for pycocotools).

    With `keypoints=True` (a COCO person-keypoints file such as
    `person_keypoints_train2017.json`), batches also carry
    `targets["keypoints"]`: float32 `(B, M, J, 3)`, each object's joints
    `(x, y, visibility)` in input pixels, in the order of `boxes` and
    `labels`, the padding zeros, `J` from the category's `keypoints` list
    (17 for COCO): what `kc.CenterNetPose` trains on and the contract of
    `kc.data.synthetic_pose`. The joints move with the boxes, through the
    same affine map: the random crop and scale warp and the flip of the
    training augmentation, the resize or padding of evaluation. A flip also
    swaps left and right joints (`flip_pairs`). A labelled joint that lands
    outside the input image becomes `(0, 0, 0)` (the official `multi_pose`
    loader drops joints off its output map); unlabelled joints (`v = 0`)
    are `(0, 0, 0)`. People without labelled joints (`num_keypoints` 0) are
    objects like the others (`CenterNetPose` then puts them on the heatmap
    without size loss, as officially). Crowd annotations are left out of
    training by default (`include_crowd=None`); `dataset.info.ground_truth`
    is the file itself, joints, `num_keypoints`, crowds and the category's
    `keypoints` and `skeleton` kept, so `kc.evaluation.coco_keypoint_evaluate
    (model, dataset)` scores OKS on the evaluation dataset. The official
    `multi_pose` training also leaves out images without annotations: pass
    `drop_empty=True` for that. Keypoints need `augment_on="cpu"`. TFDS has
    no COCO keypoints builder (its `coco` configs are 2014, 2017 and
    2017_panoptic), so `kc.data.tfds_dataset` does not read joints: use this
    reader.

    Args:
        images_dir: str. Folder that `file_name`s are relative to.
        annotations_json: str. The COCO annotations file.
        batch_size: int. Defaults to 8.
        training: bool. Shuffled, augmented batches (True) or evaluation
            batches in file order with metadata (False). Defaults to True.
        image_size: int or `(height, width)`. Input size for training and for
            the evaluation resize. Defaults to 512.
        max_objects: int. Objects per image after padding; the largest are
            kept when there are more. Defaults to 128.
        drop_empty: bool. Leave out images without objects. The official
            code keeps them (they teach the background). Defaults to False.
        include_crowd: bool or None. Whether `iscrowd` annotations are
            training objects. Defaults to None: True for boxes (as the
            official `ctdet`), False with `keypoints=True` (pose training
            uses the annotations with `iscrowd` 0; crowd regions have no
            joints).
        categories: None or list of category ids or names: the categories
            used, in label order; annotations of the others are ignored.
            Defaults to None (all, sorted by id).
        seed: int or None. Seeds the order and the augmentation. Defaults to
            None.
        augmentation: `Augmentation` or None (the official default). Used in
            training. Defaults to None.
        bounding_box_format: str. Format of the yielded boxes (any format of
            `keras.utils.bounding_boxes.convert_format`). Defaults to `"xyxy"`.
        eval_resize: bool. In evaluation, resize the longer side to
            `image_size` around the centre (True, the official `fix_res`), or
            keep the scale and pad to a multiple of `size_divisor` (False,
            the official `keep_res`; batches are padded to their largest
            image). Defaults to True.
        size_divisor: int. See `eval_resize`. Defaults to 32 (use 128 for
            the hourglass networks).
        apply_exif_orientation: bool. Turn EXIF-rotated JPEGs upright.
            Defaults to True.
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
        keypoints: bool. Read each person's joints (a COCO keypoints file)
            and yield them as `targets["keypoints"]` (see above). With
            `augment_on="accelerator"` it raises a `ValueError`: the
            in-step `BatchAugmentation` maps boxes, not joints. Defaults to
            False.
        flip_pairs: None or pairs of 0-based joint indices that a flip
            swaps. Defaults to None: `COCO_FLIP_PAIRS` for COCO's 17 joints,
            else the joints named `left...` and `right...` (see
            `keypoint_flip_pairs`).

    Returns:
        A `tf.data.Dataset` with `.info` (`DatasetInfo`), `.class_names`,
        `.category_ids` and `.num_classes`.

    Example:

    ```python
    ds = kc.data.coco_json("coco/val2017", "coco/annotations/instances_val2017.json",
                           batch_size=8, training=True, seed=0)
    model.fit(ds, epochs=140)
    ds.class_names[:3]  # ['person', 'bicycle', 'car']
    ```

    People and their joints, for `kc.CenterNetPose`:

    ```python
    ds = kc.data.coco_json("coco/train2017", "coco/annotations/person_keypoints_train2017.json",
                           batch_size=32, image_size=512, max_objects=32, keypoints=True,
                           repeat=True, seed=0)
    model = kc.CenterNetPose.from_preset("dla34", flip_probability=0.0)  # the reader flips
    model.compile(optimizer="adam")
    model.fit(ds, epochs=140, steps_per_epoch=1000)
    val = kc.data.coco_json("coco/val2017", "coco/annotations/person_keypoints_val2017.json",
                            training=False, image_size=512, keypoints=True)
    kc.evaluation.coco_keypoint_evaluate(model, val)["AP"]
    ```
    """
    image_size = normalize_image_size(image_size)
    validate_common(batch_size, max_objects, bounding_box_format)
    keypoints = bool(keypoints)
    if keypoints and training and augment_on == "accelerator":
        raise ValueError(
            "`keypoints=True` needs the CPU augmentation: `augment_on='accelerator'` hands the "
            "crop and flip to `kc.layers.BatchAugmentation`, which maps boxes only, not joints. "
            "Use `augment_on='cpu'` (the default); `CenterNetPose` takes no `augmentation=` "
            "either (its own `flip_probability` mirrors joints and swaps left and right)."
        )
    if flip_pairs is not None and not keypoints:
        raise ValueError("`flip_pairs` is for `keypoints=True`.")
    if include_crowd is None:
        include_crowd = not keypoints
    images_dir = os.fspath(images_dir)
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"Images folder not found: {images_dir}")
    annotations = read_coco_annotations(
        annotations_json, categories=categories, include_crowd=include_crowd,
        drop_empty=drop_empty, keypoints=keypoints,
    )
    if annotations.num_images == 0:
        raise ValueError(f"{annotations.path} lists no images (after `drop_empty`).")

    paths = tf.constant([os.path.join(images_dir, name) for name in annotations.file_names])
    names = tf.constant(annotations.file_names)
    image_ids = tf.constant(annotations.image_ids)
    all_boxes = tf.constant(annotations.boxes)
    all_labels = tf.constant(annotations.labels)
    row_splits = tf.constant(annotations.row_splits)
    num_joints = None
    if keypoints:
        all_keypoints = tf.constant(annotations.keypoints)
        num_joints = len(annotations.keypoint_names)
        if flip_pairs is None:
            flip_pairs = keypoint_flip_pairs(annotations.keypoint_names)

    def load(index):
        contents = tf.io.read_file(paths[index])
        image = decode_image(contents, apply_orientation=apply_exif_orientation)
        start, end = row_splits[index], row_splits[index + 1]
        example = {
            "image": image,
            "boxes": all_boxes[start:end],
            "labels": all_labels[start:end],
            "image_id": image_ids[index],
        }
        if keypoints:
            example["keypoints"] = all_keypoints[start:end]
        return example

    source = Source(
        annotations.num_images, load, name=lambda index: names[index], can_fail=True,
        num_joints=num_joints, flip_pairs=flip_pairs if keypoints else (),
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
        annotations.class_names,
        annotations.category_ids,
        num_examples=annotations.num_images,
        ground_truth=lambda: _ground_truth(
            annotations.path, categories, annotations.category_ids, keypoints
        ),
        source=annotations.path,
    )
    return attach_info(dataset, info)
