"""From CenterNet's output maps to boxes: peak extraction and top-K (the official `ctdet_decode`)."""

import keras
from keras import ops

from keras_centernet.losses.iou import ltrb_to_boxes
from keras_centernet.losses.regression import gather_at_indices


def decode_detections(
    heatmap, size, offset, max_detections=100, stride=4, heatmap_is_probability=False,
    extra_maps=None,
):
    """Boxes, scores and labels from the heatmap, size and offset maps; no NMS.

    As the official `ctdet_decode`: sigmoid; keep exact local maxima of a
    3x3 max pool (plateaus keep every equal pixel); the top
    `max_detections` of each class, then the top `max_detections` of those;
    centre = peak pixel + offset, box = centre -+ size / 2; times `stride`
    to input pixels.

    Args:
        heatmap: float tensor `(B, H, W, C)`: logits, or probabilities when
            `heatmap_is_probability` (e.g. averaged over a flip).
        size: float tensor `(B, H, W, 2)`, `(w, h)` in map pixels.
        offset: float tensor `(B, H, W, 2)`, `(dx, dy)`.
        max_detections: int. `K`. Defaults to 100.
        stride: number. Input pixels per map pixel. Defaults to 4.
        heatmap_is_probability: bool. Defaults to False.
        extra_maps: dict of name -> float tensor `(B, H, W, D)` or `None`.
            Maps read at each detection's peak pixel and returned under
            their names, float32 `(B, K, D)` (e.g. a re-identification
            embedding). Defaults to `None`.

    Returns:
        dict: `boxes` float32 `(B, K, 4)` `xyxy` in input pixels, `scores`
        float32 `(B, K)` (descending), `labels` int32 `(B, K)`, and the
        `extra_maps` at the peaks.

    Example:

    >>> raw = model(images)
    >>> detections = decode_detections(raw["heatmap"], raw["size"], raw["offset"])

    Reference:
        Zhou et al., "Objects as Points", 2019, section 4; the official
        `ctdet_decode` in `src/lib/models/decode.py`.
    """
    scores, labels, indices, xs, ys = _peaks(heatmap, max_detections, heatmap_is_probability)
    offsets = ops.cast(gather_at_indices(offset, indices), "float32")
    sizes = ops.cast(gather_at_indices(size, indices), "float32")
    center_x = xs + offsets[..., 0]
    center_y = ys + offsets[..., 1]
    half_w = sizes[..., 0] / 2
    half_h = sizes[..., 1] / 2
    boxes = ops.stack(
        [center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], axis=-1
    )
    return {"boxes": boxes * stride, "scores": scores, "labels": labels,
            **_read_at_peaks(extra_maps, indices)}


def decode_ltrb_detections(heatmap, ltrb, max_detections=100, stride=4, heatmap_is_probability=False,
                           extra_maps=None):
    """Boxes, scores and labels from the heatmap and the LTRB distance map; no NMS.

    Peaks and top-K as `decode_detections`; the box of a peak at pixel
    `(x, y)` is `(x - left, y - top, x + right, y + bottom)` with the
    distances read there (TTFNet's decoding, with the peak pixel itself as
    the reference point: no offset), times `stride` to input pixels.

    Args:
        heatmap: float tensor `(B, H, W, C)`: logits, or probabilities when
            `heatmap_is_probability`.
        ltrb: float tensor `(B, H, W, 4)`, distances `(left, top, right,
            bottom)` to the box sides in map pixels.
        max_detections: int. `K`. Defaults to 100.
        stride: number. Input pixels per map pixel. Defaults to 4.
        heatmap_is_probability: bool. Defaults to False.
        extra_maps: dict of name -> float tensor `(B, H, W, D)` or `None`.
            Maps read at each detection's peak pixel and returned under
            their names, float32 `(B, K, D)` (e.g. a re-identification
            embedding). Defaults to `None`.

    Returns:
        dict: `boxes` float32 `(B, K, 4)` `xyxy` in input pixels, `scores`
        float32 `(B, K)` (descending), `labels` int32 `(B, K)`, and the
        `extra_maps` at the peaks.

    Example:

    >>> raw = model(images)  # a model with `box_head="ltrb"`
    >>> detections = decode_ltrb_detections(raw["heatmap"], raw["ltrb"])

    Reference:
        Liu et al., "Training-Time-Friendly Network for Real-Time Object
        Detection", AAAI 2020, section 3.4.
    """
    scores, labels, indices, xs, ys = _peaks(heatmap, max_detections, heatmap_is_probability)
    boxes = ltrb_to_boxes(gather_at_indices(ltrb, indices), xs, ys)
    return {"boxes": boxes * stride, "scores": scores, "labels": labels,
            **_read_at_peaks(extra_maps, indices)}


def _expand_to(keep, value):
    for _ in range(len(value.shape) - 2):
        keep = ops.expand_dims(keep, -1)
    return keep


def _read_at_peaks(extra_maps, indices):
    return {name: ops.cast(gather_at_indices(value, indices), "float32")
            for name, value in (extra_maps or {}).items()}


def _peaks(heatmap, max_detections, heatmap_is_probability):
    """The official peak extraction and two-stage top-K.

    Returns `(scores, labels, flat indices, xs, ys)`, `(B, K)` each: the
    peak's pixel column and row as float32.
    """
    heatmap = ops.cast(heatmap, "float32")
    heat = heatmap if heatmap_is_probability else ops.sigmoid(heatmap)
    peaks = ops.max_pool(heat, pool_size=3, strides=1, padding="same")
    heat = ops.where(ops.equal(peaks, heat), heat, 0.0)

    shape = ops.shape(heat)
    batch, height, width, classes = shape[0], heat.shape[1], heat.shape[2], heat.shape[3]
    if height is None or width is None or classes is None:
        height, width, classes = shape[1], shape[2], shape[3]
    per_class_k = max_detections
    if isinstance(height, int) and isinstance(width, int):
        per_class_k = min(max_detections, height * width)
    # Per class first, then over all classes (the official two-stage top-K).
    by_class = ops.reshape(ops.transpose(heat, (0, 3, 1, 2)), (batch, classes, -1))
    class_scores, class_indices = ops.top_k(by_class, per_class_k)
    class_scores = ops.reshape(class_scores, (batch, -1))
    class_indices = ops.reshape(class_indices, (batch, -1))
    scores, candidate = ops.top_k(class_scores, min(max_detections, per_class_k * classes)
                                  if isinstance(classes, int) else max_detections)
    labels = ops.cast(candidate // per_class_k, "int32")
    indices = ops.take_along_axis(class_indices, candidate, axis=1)
    xs = ops.cast(indices % width, "float32")
    ys = ops.cast(indices // width, "float32")
    return scores, labels, indices, xs, ys


def apply_score_threshold(detections, score_threshold):
    """Counts detections above `score_threshold` and blanks the rest.

    Detections are sorted by score: the first `num_detections` are kept;
    the others get box 0, score 0 and label -1 (the padding convention of
    `keras.visualization` and of the training targets), and any further
    per-detection value (e.g. `embeddings` `(B, K, D)`) 0. Shapes stay fixed.

    Args:
        detections: dict `boxes` `(B, K, 4)`, `scores` `(B, K)` (descending),
            `labels` `(B, K)`, as `decode_detections` returns.
        score_threshold: float. Scores at most this are blanked. 0.0 keeps
            all `K` (the official evaluation takes the top 100 unfiltered).

    Returns:
        dict: `boxes`, `scores`, `labels` as given but blanked below the
        threshold, and `num_detections` int32 `(B,)`.

    Example:

    >>> detections = apply_score_threshold(decode_detections(heat, size, offset), 0.3)
    """
    scores = detections["scores"]
    keep = scores > score_threshold
    num_detections = ops.sum(ops.cast(keep, "int32"), axis=-1)
    extra = {
        name: ops.where(_expand_to(keep, value), value, 0.0)
        for name, value in detections.items() if name not in ("boxes", "scores", "labels")
    }
    return {
        "boxes": ops.where(keep[..., None], detections["boxes"], 0.0),
        "scores": ops.where(keep, scores, 0.0),
        "labels": ops.where(keep, detections["labels"], -1),
        "num_detections": num_detections,
        **extra,
    }


@keras.saving.register_keras_serializable(package="keras_centernet")
class CenterNetDecoder(keras.layers.Layer):
    """Decodes CenterNet's raw outputs into DESIGN.md's detection dict.

    Args:
        max_detections: int. Detections per image, `K`. Defaults to 100.
        score_threshold: float. Detections scoring at most this are blanked
            (box 0, score 0, label -1) and not counted in `num_detections`.
            Defaults to 0.0 (the paper evaluates the top 100 unfiltered).
        stride: number. Input pixels per map pixel. Defaults to 4.

    Call arguments:
        raw: dict with `heatmap` (logits) and either `size` and `offset`
            maps or an `ltrb` map (`decode_ltrb_detections`).

    Returns:
        dict: `boxes` `(B, K, 4)` `xyxy` in input pixels, `scores` `(B, K)`,
        `labels` int32 `(B, K)`, `num_detections` int32 `(B,)`.

    Example:

    >>> decoder = CenterNetDecoder(max_detections=100, score_threshold=0.3)
    >>> detections = decoder(model(images))
    """

    def __init__(self, max_detections=100, score_threshold=0.0, stride=4, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(max_detections, int) or max_detections < 1:
            raise ValueError(f"`max_detections` must be a positive int; received {max_detections!r}.")
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.stride = stride

    def call(self, raw):
        if "ltrb" in raw:
            detections = decode_ltrb_detections(
                raw["heatmap"], raw["ltrb"], max_detections=self.max_detections, stride=self.stride
            )
            return apply_score_threshold(detections, self.score_threshold)
        detections = decode_detections(
            raw["heatmap"], raw["size"], raw["offset"],
            max_detections=self.max_detections, stride=self.stride,
        )
        return apply_score_threshold(detections, self.score_threshold)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_detections": self.max_detections,
                "score_threshold": self.score_threshold,
                "stride": self.stride,
            }
        )
        return config
