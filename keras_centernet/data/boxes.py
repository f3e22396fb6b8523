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
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    valid = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    valid = valid & (width > 0) & (height > 0) & (labels >= 0)
    area = tf.where(valid, width * height, -1.0)
    # Sorting by area puts the invalid boxes (area -1) last; stable keeps
    # annotation order among equal areas, so the result is deterministic.
    order = tf.argsort(area, direction="DESCENDING", stable=True)
    count = tf.minimum(tf.reduce_sum(tf.cast(valid, tf.int32)), max_objects)
    order = order[:count]
    kept_boxes = tf.gather(boxes, order)
    kept_labels = tf.gather(labels, order)
    padding = max_objects - count
    kept_boxes = tf.pad(kept_boxes, [[0, padding], [0, 0]])
    kept_labels = tf.pad(kept_labels, [[0, padding]], constant_values=-1)
    kept_boxes = tf.ensure_shape(kept_boxes, [max_objects, 4])
    kept_labels = tf.ensure_shape(kept_labels, [max_objects])
    return kept_boxes, kept_labels


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
