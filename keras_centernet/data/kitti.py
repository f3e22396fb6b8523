"""KITTI 3D object detection: a `tf.data` reader of the standard layout and a results writer.

TensorFlow-only code, confined to `keras_centernet.data` (DESIGN.md,
principle 1). The label and calibration text files are parsed once, in
Python, when the dataset is made (a few kB an image), so that a malformed
file fails at once with its path and line; images are decoded and resized
in the `tf.data` map.

The layout is KITTI's:

```
root/training/image_2/000000.png   root/training/label_2/000000.txt   root/training/calib/000000.txt
root/testing/image_2/...           root/testing/calib/...             (no labels)
```
"""

import os

import numpy as np
import tensorflow as tf

from keras_centernet.data.augment import warp_affine
from keras_centernet.data.decode import decode_image
from keras_centernet.data.pipeline import DatasetInfo
from keras_centernet.data.pipeline import attach_info

# The official 3D classes, in the official label order (`kitti.py`'s `class_name`).
KITTI_CLASSES = ("Pedestrian", "Car", "Cyclist")
# Every type of KITTI's devkit; types outside `KITTI_CLASSES` are dropped, as the
# official loader drops or ignores them (it draws Van, Truck, Person_sitting and
# DontCare as ignore regions of near-zero loss weight, which is not reproduced here).
KITTI_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare")
# Category ids of the official COCO-format KITTI annotations
# (`tools/kitti/convert_kitti_to_coco.py`: `cat_ids = {cat: i + 1}` in this
# order), so result files and COCO-style evaluation agree with theirs.
KITTI_CATEGORY_IDS = {
    name: i + 1 for i, name in enumerate(
        ("Pedestrian", "Car", "Cyclist", "Van", "Truck", "Person_sitting", "Tram", "Misc", "DontCare")
    )
}
# The official input size for KITTI (`opts.py`: 384 x 1280).
KITTI_INPUT_SIZE = (384, 1280)


def _fail(path, line_number, problem):
    where = f"{path}, line {line_number}" if line_number else path
    raise ValueError(f"Malformed KITTI file {where}: {problem}")


def read_kitti_labels(path, with_score=False):
    """Objects of one KITTI label (or results) file.

    A line is `type truncated occluded alpha x1 y1 x2 y2 h w l x y z
    rotation_y` (15 fields; a results line has a 16th, the score). Blank
    lines are skipped.

    Args:
        path: str. The `.txt` file.
        with_score: bool. Read (and require) the 16th field. Defaults to False.

    Returns:
        list of dicts with `type` (str), `truncated`, `occluded`, `alpha`,
        `bbox` (4 floats, `xyxy` pixels), `dimensions` (`h, w, l`),
        `location` (`x, y, z`), `rotation_y` and, `with_score`, `score`.

    Example:

    >>> objects = read_kitti_labels("kitti/training/label_2/000000.txt")
    >>> objects[0]["type"], objects[0]["dimensions"]
    ('Pedestrian', [1.89, 0.48, 1.2])
    """
    expected = 16 if with_score else 15
    objects = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in (expected, 16) or (with_score and len(fields) != 16):
                _fail(path, number, f"expected {expected} fields (type truncated occluded alpha "
                      f"x1 y1 x2 y2 h w l x y z rotation_y{' score' if with_score else ''}); "
                      f"found {len(fields)} in {line.strip()!r}.")
            try:
                values = [float(v) for v in fields[1:]]
            except ValueError:
                _fail(path, number, f"fields after the type must be numbers; found {line.strip()!r}.")
            if not all(np.isfinite(values)):
                _fail(path, number, f"non-finite value in {line.strip()!r}.")
            entry = {
                "type": fields[0],
                "truncated": values[0],
                "occluded": int(values[1]),
                "alpha": values[2],
                "bbox": values[3:7],
                "dimensions": values[7:10],
                "location": values[10:13],
                "rotation_y": values[13],
            }
            if with_score:
                entry["score"] = values[14]
            objects.append(entry)
    return objects


def read_kitti_calibration(path, camera="P2"):
    """The 3x4 projection matrix of one camera from a KITTI calibration file.

    Args:
        path: str. The `calib/*.txt` file (lines `P0: ...` to `Tr_imu_to_velo: ...`).
        camera: str. Defaults to `"P2"` (the left colour camera of `image_2`).

    Returns:
        float32 array `(3, 4)`.

    Example:

    >>> read_kitti_calibration("kitti/training/calib/000000.txt")[0, 0]
    707.0493
    """
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            key, _, rest = line.partition(":")
            if key.strip() != camera:
                continue
            try:
                values = [float(v) for v in rest.split()]
            except ValueError:
                _fail(path, number, f"`{camera}` must hold 12 numbers; found {rest.strip()!r}.")
            if len(values) != 12:
                _fail(path, number, f"`{camera}` must hold 12 numbers; found {len(values)}.")
            return np.asarray(values, "float32").reshape(3, 4)
    _fail(path, None, f"no `{camera}:` line.")


def _example_ids(image_dir, image_ids):
    if image_ids is not None:
        return [str(i) for i in image_ids]
    if not os.path.isdir(image_dir):
        raise ValueError(f"KITTI images folder {image_dir} does not exist.")
    return sorted(os.path.splitext(name)[0] for name in os.listdir(image_dir) if name.endswith(".png"))


def _objects_array(objects, class_names, max_objects):
    """Padded per-image arrays of the objects whose type is one of `class_names`."""
    kept = [o for o in objects if o["type"] in class_names][:max_objects]
    arrays = {
        "boxes": np.zeros((max_objects, 4), "float32"),
        "labels": np.full((max_objects,), -1, "int32"),
        "depth": np.zeros((max_objects,), "float32"),
        "dimensions": np.zeros((max_objects, 3), "float32"),
        "alpha": np.zeros((max_objects,), "float32"),
        "rotation_y": np.zeros((max_objects,), "float32"),
        "locations": np.zeros((max_objects, 3), "float32"),
    }
    for k, entry in enumerate(kept):
        arrays["boxes"][k] = entry["bbox"]
        arrays["labels"][k] = class_names.index(entry["type"])
        arrays["depth"][k] = entry["location"][2]
        arrays["dimensions"][k] = entry["dimensions"]
        arrays["alpha"][k] = entry["alpha"]
        arrays["rotation_y"][k] = entry["rotation_y"]
        arrays["locations"][k] = entry["location"]
    return arrays


def kitti(
    root,
    split="training",
    image_size=KITTI_INPUT_SIZE,
    batch_size=8,
    training=True,
    max_objects=50,
    image_ids=None,
    class_names=KITTI_CLASSES,
    seed=0,
):
    """Batches of KITTI images and their 3D objects for `CenterNet3D`.

    Each image is scaled by `input width / image width` and centred on the
    `image_size` canvas (the official `get_affine_transform` with the image
    centre and width; KITTI's 1242 x 375 becomes 1280 x 386, cut to 384);
    the 2D boxes and the calibration move with it, so decoding in input
    pixels gives camera-frame locations directly. Objects whose type is not
    one of `class_names` are dropped. The official random scale and shift
    (`aug_ddd`) is not applied.

    Batches are `(images, targets)`: `images` float32 `(B, H, W, 3)` RGB
    0-255; `targets` with `boxes` `(B, M, 4)` `xyxy` input pixels (clipped
    to the image), `labels` int32 `(B, M)` (-1 padding), `depth` `(B, M)`
    (location `z`), `dimensions` `(B, M, 3)` `(h, w, l)`, `alpha`,
    `rotation_y` `(B, M)`, `locations` `(B, M, 3)`, `calibration` `(B, 3,
    4)` (P2 for input pixels), `image_id` int64 `(B,)` (the file number),
    `original_size` int32 `(B, 2)` and `transform` `(B, 2, 3)` (original to
    input pixels, as the other readers' evaluation batches), `M =
    max_objects`.

    Args:
        root: str. The folder holding `training/` and `testing/`.
        split: str. The subfolder: `"training"` or `"testing"` (no labels:
            every object slot is padding). Defaults to `"training"`.
        image_size: `(height, width)`. Defaults to `(384, 1280)` (official).
        batch_size: int. Defaults to 8.
        training: bool. Shuffle (seeded, anew each pass) and drop the last
            incomplete batch; otherwise file order, every image once.
            Defaults to True.
        max_objects: int. Object slots per image. Defaults to 50 (official).
        image_ids: list of str or None. File stems to read (e.g. the lines of
            an `ImageSets/val.txt`). Defaults to every `image_2/*.png`.
        class_names: tuple of str. KITTI types kept, in label order. Defaults
            to `KITTI_CLASSES` (Pedestrian, Car, Cyclist).
        seed: int. Shuffle seed. Defaults to 0.

    Returns:
        `tf.data.Dataset` with `info` (a `DatasetInfo`), `class_names`,
        `category_ids`, `num_classes` attributes.

    Example:

    >>> ds = kc.data.kitti("data/kitti", split="training", batch_size=4)
    >>> model = kc.CenterNet3D.from_preset("dla34")
    >>> model.compile(optimizer="adam"); model.fit(ds, epochs=70)
    """
    class_names = tuple(class_names)
    unknown = [name for name in class_names if name not in KITTI_TYPES]
    if not class_names or unknown:
        raise ValueError(f"`class_names` must be KITTI types {KITTI_TYPES}; received {class_names!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    if not isinstance(max_objects, int) or max_objects < 1:
        raise ValueError(f"`max_objects` must be a positive int; received {max_objects!r}.")
    height, width = (int(v) for v in image_size)
    folder = os.path.join(root, split)
    image_dir = os.path.join(folder, "image_2")
    label_dir = os.path.join(folder, "label_2")
    calib_dir = os.path.join(folder, "calib")
    has_labels = os.path.isdir(label_dir)
    ids = _example_ids(image_dir, image_ids)
    if not ids:
        raise ValueError(f"No KITTI images (*.png) in {image_dir}.")

    columns = {name: [] for name in ("boxes", "labels", "depth", "dimensions", "alpha",
                                     "rotation_y", "locations")}
    calibrations, numbers, paths = [], [], []
    for stem in ids:
        path = os.path.join(image_dir, stem + ".png")
        if not os.path.exists(path):
            raise ValueError(f"KITTI image {path} does not exist.")
        calib_path = os.path.join(calib_dir, stem + ".txt")
        if not os.path.exists(calib_path):
            raise ValueError(f"KITTI calibration {calib_path} does not exist (needed for {path}).")
        calibrations.append(read_kitti_calibration(calib_path))
        objects = []
        if has_labels:
            label_path = os.path.join(label_dir, stem + ".txt")
            if not os.path.exists(label_path):
                raise ValueError(f"KITTI labels {label_path} do not exist (needed for {path}).")
            objects = read_kitti_labels(label_path)
        for name, value in _objects_array(objects, class_names, max_objects).items():
            columns[name].append(value)
        try:
            numbers.append(int(stem))
        except ValueError:
            raise ValueError(f"KITTI file names are numbers (000123.png); found {path}.") from None
        paths.append(path)

    tensors = {name: np.stack(values) for name, values in columns.items()}
    tensors["calibration"] = np.stack(calibrations)
    tensors["image_id"] = np.asarray(numbers, "int64")
    tensors["path"] = np.asarray(paths)

    def load(example):
        image = decode_image(tf.io.read_file(example["path"]), apply_orientation=False)
        shape = tf.shape(image)
        image_height = tf.cast(shape[0], tf.float32)
        image_width = tf.cast(shape[1], tf.float32)
        scale = width / image_width
        shift_x = width / 2 - scale * image_width / 2
        shift_y = height / 2 - scale * image_height / 2
        matrix = tf.stack([tf.stack([scale, 0.0, shift_x]), tf.stack([0.0, scale, shift_y])])
        pixels = warp_affine(image, matrix, (height, width))
        valid = example["labels"] >= 0
        boxes = example["boxes"] * scale + tf.stack([shift_x, shift_y, shift_x, shift_y])
        boxes = tf.clip_by_value(boxes, 0.0, [width, height, width, height])
        boxes = tf.where(valid[:, None], boxes, 0.0)
        # The camera seen through the resize: P' = [[s, 0, tx], [0, s, ty], [0, 0, 1]] @ P.
        image_matrix = tf.concat([matrix, tf.constant([[0.0, 0.0, 1.0]])], axis=0)
        targets = {name: example[name] for name in columns}
        targets.update(
            {
                "boxes": boxes,
                "calibration": image_matrix @ example["calibration"],
                "image_id": example["image_id"],
                "original_size": tf.stack([shape[0], shape[1]]),
                "transform": matrix,
            }
        )
        return pixels, targets

    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    if training:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
    info = DatasetInfo(
        list(class_names), [KITTI_CATEGORY_IDS[name] for name in class_names],
        num_examples=len(paths), source=folder,
    )
    return attach_info(dataset, info)


def write_kitti_results(directory, detections, image_ids, transform=None, class_names=KITTI_CLASSES):
    """Writes 3D detections as KITTI results files, one `%06d.txt` per image.

    Each line is `type 0.00 0 alpha x1 y1 x2 y2 h w l x y z rotation_y
    score`, two decimals (the official `save_results`); truncation and
    occlusion are not predicted. Detections with label -1 (blanked) are
    skipped; an image without detections gets an empty file (KITTI's
    evaluation needs one per image).

    Args:
        directory: str. Created if missing.
        detections: dict of arrays as `CenterNet3D.predict` returns: `boxes`
            `(B, K, 4)`, `scores`, `labels`, `alpha`, `dimensions`,
            `locations`, `rotation_y`.
        image_ids: ints `(B,)`, the file numbers.
        transform: float array `(B, 2, 3)` or None. The reader's original to
            input pixels map: boxes are mapped back to original pixels.
            Defaults to None (boxes already in original pixels).
        class_names: tuple of str, indexed by label. Defaults to `KITTI_CLASSES`.

    Returns:
        list of str, the files written.

    Example:

    >>> dets = model.predict(ds)
    >>> write_kitti_results("results/data", dets, image_ids, transform)
    """
    required = ("boxes", "scores", "labels", "alpha", "dimensions", "locations", "rotation_y")
    missing = [name for name in required if name not in detections]
    if missing:
        raise ValueError(f"`detections` lacks {missing}; it needs {list(required)}.")
    values = {name: np.asarray(detections[name]) for name in required}
    image_ids = np.asarray(image_ids).reshape(-1)
    batch = values["boxes"].shape[0]
    if len(image_ids) != batch:
        raise ValueError(f"{len(image_ids)} image ids for {batch} images of detections.")
    boxes = values["boxes"].astype("float64")
    if transform is not None:
        transform = np.asarray(transform, "float64")
        if transform.shape != (batch, 2, 3):
            raise ValueError(f"`transform` must have shape ({batch}, 2, 3); received {transform.shape}.")
        scale = transform[:, None, [0, 1, 0, 1], [0, 1, 0, 1]]
        shift = transform[:, None, [0, 1, 0, 1], 2]
        boxes = (boxes - shift) / scale
    os.makedirs(directory, exist_ok=True)
    written = []
    for i in range(batch):
        path = os.path.join(directory, f"{int(image_ids[i]):06d}.txt")
        lines = []
        for k in range(values["labels"].shape[1]):
            label = int(values["labels"][i, k])
            if label < 0:
                continue
            if label >= len(class_names):
                raise ValueError(f"Label {label} has no name in `class_names` {class_names!r}.")
            numbers = (
                [values["alpha"][i, k]] + list(boxes[i, k]) + list(values["dimensions"][i, k])
                + list(values["locations"][i, k]) + [values["rotation_y"][i, k], values["scores"][i, k]]
            )
            lines.append(f"{class_names[label]} 0.00 0 " + " ".join(f"{float(v):.2f}" for v in numbers))
        with open(path, "w") as handle:
            handle.write("".join(line + "\n" for line in lines))
        written.append(path)
    return written
