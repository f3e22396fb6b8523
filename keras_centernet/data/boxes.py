"""Box utilities of the input pipeline (TensorFlow ops, for use inside `tf.data`).

TensorFlow-only code: it runs inside `tf.data` maps whatever the Keras backend,
except `to_original_boxes`, which is NumPy and meant for evaluation code.

Boxes are `xyxy` in continuous pixel coordinates: pixel `(i, j)` covers
`[j, j + 1] x [i, i + 1]`, an image of width `W` spans `[0, W]` (the COCO
convention).
"""

import numpy as np
import tensorflow as tf

# NumPy only; it lives with the evaluation so that it needs no TensorFlow.
from keras_centernet.evaluation.coco_evaluator import to_original_boxes  # noqa: F401


def transform_boxes(boxes, matrix):
    """Maps `xyxy` boxes through an affine 2x3 `matrix` (no rotation).

    The four corners are mapped and their extent taken, so a mirroring matrix
    (negative scale) gives boxes with `x1 <= x2` again.

    Args:
        boxes: float32 tensor `(N, 4)`, `xyxy`.
        matrix: float32 tensor `(2, 3)`, `[[a, b, tx], [c, d, ty]]` mapping
            `(x, y)` to `(a x + b y + tx, c x + d y + ty)`.

    Returns:
        float32 tensor `(N, 4)`, `xyxy`.
    """
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    corners_x = tf.stack([x1, x2, x1, x2], axis=-1)
    corners_y = tf.stack([y1, y1, y2, y2], axis=-1)
    new_x = matrix[0, 0] * corners_x + matrix[0, 1] * corners_y + matrix[0, 2]
    new_y = matrix[1, 0] * corners_x + matrix[1, 1] * corners_y + matrix[1, 2]
    return tf.stack(
        [
            tf.reduce_min(new_x, axis=-1),
            tf.reduce_min(new_y, axis=-1),
            tf.reduce_max(new_x, axis=-1),
            tf.reduce_max(new_y, axis=-1),
        ],
        axis=-1,
    )


def clip_boxes(boxes, height, width):
    """Clips `xyxy` boxes to the image `[0, width] x [0, height]`."""
    width = tf.cast(width, boxes.dtype)
    height = tf.cast(height, boxes.dtype)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    return tf.stack(
        [
            tf.clip_by_value(x1, 0.0, width),
            tf.clip_by_value(y1, 0.0, height),
            tf.clip_by_value(x2, 0.0, width),
            tf.clip_by_value(y2, 0.0, height),
        ],
        axis=-1,
    )


def select_objects(boxes, labels, max_objects):
    """Keeps valid boxes, at most `max_objects` of them, and pads to `max_objects`.

    A box is valid when its coordinates are finite and its width and height
    are positive (after clipping, a box wholly outside the image has zero
    size). When more than `max_objects` remain, the largest by area are kept
    (the official code keeps the first 128 in annotation order; the largest
    are the ones a detector is scored on most). Kept boxes come first, in
    decreasing area; the padding has label -1 and box zeros.

    Args:
        boxes: float32 tensor `(N, 4)`, `xyxy`.
        labels: int32 tensor `(N,)`.
        max_objects: int. Size of the padded output.

    Returns:
        `(boxes (max_objects, 4) float32, labels (max_objects,) int32)`.
    """
    order = selection_order(boxes, labels, max_objects)
    kept_boxes = gather_objects(boxes, order, max_objects)
    kept_labels = gather_objects(labels, order, max_objects, padding=-1)
    return kept_boxes, kept_labels


def selection_order(boxes, labels, max_objects):
    """The indices of the objects `select_objects` keeps, in its order: `(count,)` int32.

    Gather any other per-object field with it (`gather_objects`) to keep it
    aligned with the selected boxes and labels.
    """
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    valid = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    valid = valid & (width > 0) & (height > 0) & (labels >= 0)
    area = tf.where(valid, width * height, -1.0)
    # Sorting by area puts the invalid boxes (area -1) last; stable keeps
    # annotation order among equal areas, so the result is deterministic.
    order = tf.argsort(area, direction="DESCENDING", stable=True)
    count = tf.minimum(tf.reduce_sum(tf.cast(valid, tf.int32)), max_objects)
    return order[:count]


def gather_objects(values, order, max_objects, padding=0):
    """Per-object `values` `(N, ...)` taken in `order` and padded to `(max_objects, ...)`."""
    kept = tf.gather(values, order)
    rank = len(values.shape)
    paddings = [[0, max_objects - tf.shape(order)[0]]] + [[0, 0]] * (rank - 1)
    kept = tf.pad(kept, paddings, constant_values=tf.cast(padding, values.dtype))
    return tf.ensure_shape(kept, [max_objects, *values.shape[1:]])


def transform_keypoints(keypoints, matrix, height, width, permutation=None):
    """Maps joints through the boxes' affine `matrix`; joints off the result become unlabelled.

    The keypoint counterpart of `transform_boxes` and `clip_boxes`: each
    labelled joint `(x, y, v)` (`v > 0`) goes to `matrix @ (x, y, 1)`; one
    that lands outside `[0, width) x [0, height)` is set to `(0, 0, 0)` (the
    official `multi_pose` loader drops joints off its output map), and
    unlabelled joints stay `(0, 0, 0)`, as COCO writes them. A mirroring
    `matrix` (negative x scale: a horizontal flip) also reorders the joints by
    `permutation` (`kc.targets.keypoints.flip_permutation`), so that the left
    wrist of the mirrored person is the mirror of its right wrist.

    Args:
        keypoints: float32 tensor `(N, J, 3)`, `x, y, visibility` pixels.
        matrix: float32 tensor `(2, 3)`, as `transform_boxes`.
        height, width: the result's size in pixels.
        permutation: None or a list of `J` ints: the joint order after a
            flip. None leaves the order (no left and right).

    Returns:
        float32 tensor `(N, J, 3)`.
    """
    keypoints = tf.cast(keypoints, tf.float32)
    x, y, visibility = tf.unstack(keypoints, axis=-1)
    new_x = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]
    new_y = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
    width = tf.cast(width, tf.float32)
    height = tf.cast(height, tf.float32)
    keep = (
        (visibility > 0)
        & tf.math.is_finite(new_x) & tf.math.is_finite(new_y)
        & (new_x >= 0) & (new_x < width) & (new_y >= 0) & (new_y < height)
    )
    mapped = tf.where(keep[..., None], tf.stack([new_x, new_y, visibility], axis=-1), 0.0)
    if permutation is not None:
        flipped = matrix[0, 0] < 0
        mapped = tf.where(flipped, tf.gather(mapped, permutation, axis=1), mapped)
    return mapped


def convert_boxes_format(boxes, labels, bounding_box_format, height, width):
    """Converts padded `xyxy` boxes to `bounding_box_format`, padding kept at 0.

    Uses `keras.utils.bounding_boxes.convert_format`, which switches itself to
    TensorFlow ops inside a `tf.data` graph, so it works with every backend.
    """
    if bounding_box_format == "xyxy":
        return boxes
    import keras

    converted = keras.utils.bounding_boxes.convert_format(
        boxes,
        source="xyxy",
        target=bounding_box_format,
        height=tf.cast(height, tf.float32),
        width=tf.cast(width, tf.float32),
    )
    return tf.where((labels >= 0)[:, None], tf.cast(converted, tf.float32), 0.0)
