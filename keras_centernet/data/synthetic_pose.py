"""A synthetic multi-person pose set: stick figures with the 17 COCO joints (no download).

TensorFlow-only at its end, as the rest of `keras_centernet.data`: images are
drawn with NumPy (a few stick figures of up to 128-pixel images are cheap),
deterministically from `(seed, image index)`, and served by a
`tf.data.Dataset` that feeds `model.fit` on every Keras backend.

Each image has a smooth random background with grain and 1 to 3 people that
do not overlap. A person is a stick figure in one colour: the 18 COCO limbs
as thick strokes between its joints (arms and legs at random angles), a head
disc around the nose, the eyes and ears as dark dots on it. Its box is the
extent of its strokes; every joint inside the image is labelled visible (2),
the others unlabelled (0, coordinates 0), as COCO.
"""

import math

import numpy as np

from keras_centernet.targets.keypoints import COCO_KEYPOINT_NAMES
from keras_centernet.targets.keypoints import COCO_SKELETON

# Joints of a person of height 1 facing the camera (its left on the image's
# right), the hips' centre at the origin, y down. Arms and legs are set per person.
_HEAD = {0: (0.0, -0.40), 1: (0.025, -0.425), 2: (-0.025, -0.425), 3: (0.055, -0.41), 4: (-0.055, -0.41)}
_SHOULDERS = {5: (0.11, -0.28), 6: (-0.11, -0.28)}
_HIPS = {11: (0.07, 0.02), 12: (-0.07, 0.02)}
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.15, 0.14, 0.25, 0.24
_STROKE = 0.03  # half-width of a limb, in person heights
_HEAD_RADIUS = 0.065


def _person_joints(rng, height, center_x, center_y):
    """17 joints `(x, y)` in pixels of one random stick figure."""
    joints = np.zeros((17, 2))
    for table in (_HEAD, _SHOULDERS, _HIPS):
        for j, xy in table.items():
            joints[j] = xy
    for side, sign in ((0, 1.0), (1, -1.0)):
        # Angles from straight down, outwards positive for this side.
        shoulder = joints[5 + side]
        upper = math.radians(rng.uniform(-20, 110))
        fore = upper + math.radians(rng.uniform(-60, 60))
        elbow = shoulder + _UPPER_ARM * np.array([sign * math.sin(upper), math.cos(upper)])
        wrist = elbow + _FOREARM * np.array([sign * math.sin(fore), math.cos(fore)])
        joints[7 + side], joints[9 + side] = elbow, wrist
        hip = joints[11 + side]
        thigh = math.radians(rng.uniform(-10, 35))
        shin = thigh + math.radians(rng.uniform(-30, 10))
        knee = hip + _THIGH * np.array([sign * math.sin(thigh), math.cos(thigh)])
        ankle = knee + _SHIN * np.array([sign * math.sin(shin), math.cos(shin)])
        joints[13 + side], joints[15 + side] = knee, ankle
    return joints * height + np.array([center_x, center_y])


def _segment_distance(px, py, a, b):
    """Distance of pixel centres `(H, W)` to the segments `a -> b` `(S, 2)`: `(S, H, W)`."""
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    dx, dy = (b[:, 0] - a[:, 0])[:, None, None], (b[:, 1] - a[:, 1])[:, None, None]
    length2 = np.maximum(dx * dx + dy * dy, 1e-9)
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / length2, 0.0, 1.0)
    return np.hypot(px - ax - t * dx, py - ay - t * dy)


def render_synthetic_pose(index, image_size=128, seed=0, people_per_image=(1, 3),
                          person_height=(0.45, 0.9)):
    """Image `index` of the set and its people, in NumPy.

    Args:
        index: int. The image's index (with `seed`, all its randomness).
        image_size: int or `(height, width)`. Defaults to 128.
        seed: int. Defaults to 0.
        people_per_image: `(min, max)`. Defaults to (1, 3).
        person_height: `(min, max)` person heights as fractions of the image
            height. Defaults to (0.45, 0.9).

    Returns:
        `(image, boxes, keypoints)`: uint8 `(H, W, 3)`; float32 `(N, 4)`
        `xyxy` pixels; float32 `(N, 17, 3)` `(x, y, visibility)`.

    Example:

    >>> image, boxes, keypoints = render_synthetic_pose(0, image_size=96)
    """
    height, width = (image_size, image_size) if np.isscalar(image_size) else image_size
    rng = np.random.default_rng([int(seed), int(index)])
    py, px = np.mgrid[0:height, 0:width] + 0.5
    base = rng.uniform(60, 200, 3)
    tilt = rng.uniform(-40, 40, (2, 3))
    image = (
        base
        + tilt[0] * (px / width - 0.5)[..., None]
        + tilt[1] * (py / height - 0.5)[..., None]
        + rng.normal(0, 6, (height, width, 3))
    )
    count = int(rng.integers(people_per_image[0], people_per_image[1] + 1))
    boxes, keypoints = [], []
    for _ in range(20 * count):
        if len(boxes) == count:
            break
        size = rng.uniform(*person_height) * height
        joints = _person_joints(rng, size, rng.uniform(0.1, 0.9) * width, rng.uniform(0.25, 0.75) * height)
        stroke = max(_STROKE * size, 1.5)
        head = max(_HEAD_RADIUS * size, 2.5)
        head_center = joints[0] + np.array([0.0, -0.015 * size])
        x1 = max(min(joints[:, 0].min() - stroke, head_center[0] - head), 0.0)
        y1 = max(min(joints[:, 1].min() - stroke, head_center[1] - head), 0.0)
        x2 = min(max(joints[:, 0].max() + stroke, head_center[0] + head), float(width))
        y2 = min(max(joints[:, 1].max() + stroke, head_center[1] + head), float(height))
        if x2 - x1 < 4 or y2 - y1 < 8 or any(
            x1 < b[2] + 2 and b[0] < x2 + 2 and y1 < b[3] + 2 and b[1] < y2 + 2 for b in boxes
        ):
            continue
        color = rng.uniform(0, 255, 3)
        if np.abs(color - base).max() < 60:
            color = 255 - base
        edges = np.array(COCO_SKELETON)
        limbs = _segment_distance(px, py, joints[edges[:, 0]], joints[edges[:, 1]]).min(axis=0)
        figure = (limbs <= stroke) | (np.hypot(px - head_center[0], py - head_center[1]) <= head)
        image[figure] = color
        dots = _segment_distance(px, py, joints[1:5], joints[1:5]).min(axis=0) <= max(0.012 * size, 0.8)
        image[dots] = color * 0.25
        inside = (joints[:, 0] >= 0) & (joints[:, 0] < width) & (joints[:, 1] >= 0) & (joints[:, 1] < height)
        labelled = np.concatenate([joints, np.full((17, 1), 2.0)], axis=1) * inside[:, None]
        boxes.append((x1, y1, x2, y2))
        keypoints.append(labelled)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    keypoints = np.array(keypoints, np.float32).reshape(-1, 17, 3)
    # Largest first, as the readers of `keras_centernet.data` order objects.
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
    return image, boxes[order], keypoints[order]


def pose_ground_truth(boxes, keypoints, image_size):
    """The pycocotools-style ground truth (COCO person keypoints) of rendered images.

    Args:
        boxes: list (one per image) of float `(N, 4)` `xyxy`.
        keypoints: list of float `(N, 17, 3)`.
        image_size: `(height, width)`.

    Returns:
        dict with `images` (ids `index + 1`), `annotations` (`bbox` `xywh`,
        `area` of the box, `keypoints` flat, `num_keypoints`) and the COCO
        person category (id 1, its keypoint names and skeleton).
    """
    from keras_centernet.data.synthetic_shapes import coco_ground_truth

    objects_per_image = (
        [
            {
                "box": box,
                "category_id": 1,
                "area": (box[2] - box[0]) * (box[3] - box[1]),
                "fields": {
                    "keypoints": [float(v) for v in np.asarray(joints).reshape(-1)],
                    "num_keypoints": int(np.sum(np.asarray(joints)[:, 2] > 0)),
                },
            }
            for box, joints in zip(image_boxes, image_keypoints)
        ]
        for image_boxes, image_keypoints in zip(boxes, keypoints)
    )
    categories = [{
        "id": 1, "name": "person", "supercategory": "person",
        "keypoints": list(COCO_KEYPOINT_NAMES),
        "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON],
    }]
    height, width = image_size
    return coco_ground_truth(objects_per_image, (int(height), int(width)), categories)


def synthetic_pose(
    num_images=64,
    image_size=128,
    batch_size=8,
    seed=0,
    training=True,
    max_objects=32,
    people_per_image=(1, 3),
    person_height=(0.45, 0.9),
    repeat=False,
):
    """The synthetic stick-figure pose set as a `tf.data.Dataset`.

    Batches `(images, {"boxes": (B, M, 4), "labels": (B, M), "keypoints":
    (B, M, 17, 3)})`: images float32 RGB 0-255, boxes `xyxy` and joints
    `(x, y, visibility)` in input pixels, padded to `M = max_objects` with
    label -1 (and zero boxes and joints). Training batches are shuffled
    (seeded) and drop the last incomplete batch; evaluation batches keep the
    order, every image once, and add `targets["image_id"]` (int64, `index +
    1`), `targets["original_size"]` and `targets["transform"]` (the identity:
    images are made at the input size). Valid people come first, largest
    first. Flip augmentation is the model's (`CenterNetPose(flip_probability=...)`),
    which swaps left and right joints.

    The dataset carries `dataset.info` (`keras_centernet.data.DatasetInfo`:
    class `person`, category id 1, `ground_truth` the pycocotools dict of
    `pose_ground_truth`).

    Args:
        num_images: int. Images in one pass. Defaults to 64.
        image_size: int or `(height, width)`. Defaults to 128.
        batch_size: int. Defaults to 8.
        seed: int. Seeds the images and the shuffle. Defaults to 0.
        training: bool. Defaults to True.
        max_objects: int. Defaults to 32 (the official COCO keypoints value).
        people_per_image: `(min, max)`. Defaults to (1, 3).
        person_height: `(min, max)` fractions of the image height.
            Defaults to (0.45, 0.9).
        repeat: bool. Repeat passes endlessly. Defaults to False.

    Returns:
        `tf.data.Dataset`.

    Example:

    >>> ds = synthetic_pose(num_images=32, image_size=96, batch_size=4)
    >>> model.fit(ds, epochs=10)
    """
    import tensorflow as tf

    from keras_centernet.data.pipeline import DatasetInfo
    from keras_centernet.data.pipeline import attach_info
    from keras_centernet.data.pipeline import normalize_image_size
    from keras_centernet.data.pipeline import validate_common

    height, width = normalize_image_size(image_size)
    validate_common(batch_size, max_objects, "xyxy")
    if not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"`num_images` must be a positive int; received {num_images!r}.")
    low, high = people_per_image
    if not 1 <= low <= high or high > max_objects:
        raise ValueError(
            f"`people_per_image` must be (min, max) with 1 <= min <= max <= max_objects; "
            f"received {people_per_image!r}."
        )
    images = np.zeros((num_images, height, width, 3), np.uint8)
    boxes = np.zeros((num_images, max_objects, 4), np.float32)
    labels = np.full((num_images, max_objects), -1, np.int32)
    keypoints = np.zeros((num_images, max_objects, 17, 3), np.float32)
    all_boxes, all_keypoints = [], []
    for index in range(num_images):
        image, image_boxes, image_keypoints = render_synthetic_pose(
            index, (height, width), seed, people_per_image, person_height
        )
        images[index] = image
        count = len(image_boxes)
        boxes[index, :count] = image_boxes
        labels[index, :count] = 0
        keypoints[index, :count] = image_keypoints
        all_boxes.append(image_boxes)
        all_keypoints.append(image_keypoints)
    targets = {"boxes": boxes, "labels": labels, "keypoints": keypoints}
    if not training:
        # The evaluation structure of `keras_centernet.data`: images as rendered.
        targets["image_id"] = np.arange(1, num_images + 1, dtype=np.int64)
        targets["original_size"] = np.tile(np.array([[height, width]], np.int32), (num_images, 1))
        targets["transform"] = np.tile(np.eye(2, 3, dtype=np.float32)[None], (num_images, 1, 1))
    dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    dataset = dataset.map(lambda image, y: (tf.cast(image, tf.float32), y))
    if training:
        dataset = dataset.shuffle(num_images, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
    info = DatasetInfo(
        ["person"], [1], num_examples=num_images,
        ground_truth=pose_ground_truth(all_boxes, all_keypoints, (height, width)),
        source="synthetic_pose",
    )
    return attach_info(dataset, info)
