"""Soft-NMS (Bodla et al. 2017) as the official CenterNet merges multi-scale detections."""

import keras
from keras import ops

SOFT_NMS_METHODS = ("linear", "gaussian", "hard")


def soft_nms(
    boxes,
    scores,
    labels,
    method="gaussian",
    sigma=0.5,
    iou_threshold=0.5,
    score_threshold=0.001,
    area_offset=1.0,
):
    """Decays the scores of boxes that overlap a higher-scoring box of their class.

    The official CenterNet runs this (its Cython `soft_nms`, `method=2`,
    `Nt=0.5`, `sigma=0.5`, `threshold=0.001`) on the detections of all test
    scales of one class, then keeps the top 100 over all classes. This is the
    same computation for a batch and every class at once: each step takes the
    highest-scoring box not yet taken, and multiplies the score of every
    remaining box of its class by `exp(-iou**2 / sigma)` (`"gaussian"`),
    `1 - iou` where `iou > iou_threshold` (`"linear"`) or 0 where
    `iou > iou_threshold` (`"hard"`, the original NMS). A box whose score falls
    below `score_threshold` is dropped from the process: it neither decays
    others nor is decayed again. As in the official code (whose caller ignores
    the returned indices), dropped boxes keep their last score rather than
    being removed, so the caller's top-k decides.

    Boxes are `xyxy`; the official overlap counts pixels inclusively, `(x2 - x1
    + 1)`, in original image pixels: `area_offset=1.0`. Use 0 for continuous
    coordinates.

    Args:
        boxes: float tensor `(B, N, 4)`, `xyxy`.
        scores: float tensor `(B, N)`. Padding entries should have score 0
            (or below `score_threshold`).
        labels: int tensor `(B, N)`; only boxes of the same label interact.
        method: `"gaussian"`, `"linear"` or `"hard"`. Defaults to
            `"gaussian"` (the official `method=2`).
        sigma: float. Width of the Gaussian decay. Defaults to 0.5.
        iou_threshold: float. Overlap above which `"linear"` and `"hard"`
            decay. Defaults to 0.5 (the official `Nt`).
        score_threshold: float. Boxes below it leave the process. Defaults
            to 0.001.
        area_offset: float. Added to widths and heights in the overlap.
            Defaults to 1.0 (the official pixel convention).

    Returns:
        The decayed scores, `(B, N)`, in the input order.

    Example:

    >>> boxes = np.array([[[0, 0, 9, 9], [0, 0, 9, 4]]], "float32")
    >>> soft_nms(boxes, np.array([[0.9, 0.8]]), np.array([[0, 0]]))
    # [[0.9, 0.8 * exp(-0.5**2 / 0.5)]] = [[0.9, 0.4852]]

    Reference:
        Bodla et al., "Soft-NMS -- Improving Object Detection With One Line
        of Code", ICCV 2017.
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"`method` must be one of {SOFT_NMS_METHODS}; received {method!r}.")
    if sigma <= 0:
        raise ValueError(f"`sigma` must be positive; received {sigma}.")
    boxes = ops.convert_to_tensor(boxes, "float32")
    scores = ops.convert_to_tensor(scores, "float32")
    labels = ops.convert_to_tensor(labels, "int32")
    if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"`boxes` must have shape (B, N, 4); received {boxes.shape}.")
    if len(scores.shape) != 2 or len(labels.shape) != 2:
        raise ValueError(
            f"`scores` and `labels` must have shape (B, N); received {scores.shape} and {labels.shape}."
        )
    num_boxes = boxes.shape[1]
    if num_boxes is None:
        num_boxes = ops.shape(boxes)[1]

    x1, y1, x2, y2 = [boxes[..., i] for i in range(4)]
    areas = (x2 - x1 + area_offset) * (y2 - y1 + area_offset)
    # Pairwise overlaps, computed once: (B, N, N).
    inter_w = ops.minimum(x2[:, :, None], x2[:, None, :]) - ops.maximum(x1[:, :, None], x1[:, None, :])
    inter_h = ops.minimum(y2[:, :, None], y2[:, None, :]) - ops.maximum(y1[:, :, None], y1[:, None, :])
    inter_w = ops.maximum(inter_w + area_offset, 0.0)
    inter_h = ops.maximum(inter_h + area_offset, 0.0)
    intersection = inter_w * inter_h
    union = areas[:, :, None] + areas[:, None, :] - intersection
    iou = ops.where(union > 0, intersection / ops.where(union > 0, union, 1.0), 0.0)
    same_class = ops.equal(labels[:, :, None], labels[:, None, :])
    if method == "gaussian":
        decay = ops.exp(-ops.square(iou) / sigma)
    elif method == "linear":
        decay = ops.where(iou > iou_threshold, 1.0 - iou, 1.0)
    else:
        decay = ops.where(iou > iou_threshold, 0.0, 1.0)
    # The official loop only visits boxes that overlap (inclusive pixels)
    # the selected one; only those can be decayed, or dropped, even when
    # their score already starts below the threshold.
    touches = ops.logical_and(same_class, ops.logical_and(inter_w > 0, inter_h > 0))
    decay = ops.where(touches, decay, 1.0)

    active = ops.ones_like(scores, dtype="bool")

    def step(_, state):
        scores, active = state
        candidates = ops.where(active, scores, -1.0)
        # top_k rather than argmax (the same first index on ties): TensorFlow's
        # argmax tests for -0.0 with a bitwise AND, which TFLite lacks.
        best = ops.top_k(candidates, 1)[1][:, 0]  # (B,)
        best_one_hot = ops.one_hot(best, num_boxes, dtype="bool")
        has_best = ops.any(active, axis=-1)
        best_decay = ops.take_along_axis(decay, best[:, None, None], axis=1)[:, 0]  # (B, N)
        best_touches = ops.take_along_axis(touches, best[:, None, None], axis=1)[:, 0]
        others = ops.logical_and(active, ops.logical_not(best_one_hot))
        apply = ops.logical_and(ops.logical_and(others, best_touches), has_best[:, None])
        new_scores = ops.where(apply, scores * best_decay, scores)
        dropped = ops.logical_and(apply, new_scores < score_threshold)
        active = ops.logical_and(others, ops.logical_not(dropped))
        return new_scores, active

    scores, _ = ops.fori_loop(0, num_boxes, step, (scores, active))
    return scores


@keras.saving.register_keras_serializable(package="keras_centernet")
class SoftNMS(keras.layers.Layer):
    """`soft_nms` as a layer: `(boxes, scores, labels)` -> decayed scores.

    Args:
        method, sigma, iou_threshold, score_threshold, area_offset: as
            `soft_nms`.

    Example:

    >>> layer = SoftNMS()
    >>> new_scores = layer(boxes, scores, labels)
    """

    def __init__(
        self,
        method="gaussian",
        sigma=0.5,
        iou_threshold=0.5,
        score_threshold=0.001,
        area_offset=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if method not in SOFT_NMS_METHODS:
            raise ValueError(f"`method` must be one of {SOFT_NMS_METHODS}; received {method!r}.")
        self.method = method
        self.sigma = sigma
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold
        self.area_offset = area_offset

    def call(self, boxes, scores, labels):
        return soft_nms(
            boxes, scores, labels,
            method=self.method, sigma=self.sigma, iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold, area_offset=self.area_offset,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "method": self.method,
                "sigma": self.sigma,
                "iou_threshold": self.iou_threshold,
                "score_threshold": self.score_threshold,
                "area_offset": self.area_offset,
            }
        )
        return config
