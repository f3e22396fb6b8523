"""Keypoint-Triplets decoding: corner pairs by class and embedding, kept when a centre keypoint lies in their central region."""

from keras import ops

from keras_centernet.layers.soft_nms import soft_nms
from keras_centernet.losses.regression import gather_at_indices

# The official test configuration (`CenterNet-52.json`, `kp.py`, `test/coco.py`).
OFFICIAL_TOP_K = 70
OFFICIAL_AE_THRESHOLD = 0.5
OFFICIAL_NUM_CANDIDATES = 1000
# Boxes of at most 150 x 150 input pixels use the central third (n = 3), larger ones the central fifth.
OFFICIAL_SMALL_AREA = 22500.0


def _peaks(heatmap):
    """Probabilities kept at exact 3x3 local maxima (the official `_nms`, kernel 3)."""
    heat = ops.sigmoid(ops.cast(heatmap, "float32"))
    peaks = ops.max_pool(heat, pool_size=3, strides=1, padding="same")
    return ops.where(ops.equal(peaks, heat), heat, 0.0)


def _top_k(heat, offset, k):
    """The top `k` of all classes and pixels: scores, labels, flat indices, x and y with offsets (map pixels)."""
    batch = ops.shape(heat)[0]
    width = heat.shape[2]
    # Class-major order, as the official `_topk` of a (B, C, H, W) map.
    flat = ops.reshape(ops.transpose(heat, (0, 3, 1, 2)), (batch, -1))
    scores, index = ops.top_k(flat, k)
    pixels = index % (heat.shape[1] * width)
    labels = ops.cast(index // (heat.shape[1] * width), "int32")
    offsets = ops.cast(gather_at_indices(offset, pixels), "float32")
    xs = ops.cast(pixels % width, "float32") + offsets[..., 0]
    ys = ops.cast(pixels // width, "float32") + offsets[..., 1]
    return scores, labels, pixels, xs, ys


def decode_triplets(
    outputs,
    max_detections=100,
    top_k=OFFICIAL_TOP_K,
    ae_threshold=OFFICIAL_AE_THRESHOLD,
    num_candidates=OFFICIAL_NUM_CANDIDATES,
    stride=4,
    small_area=OFFICIAL_SMALL_AREA,
    use_soft_nms=True,
    flipped_outputs=None,
):
    """Boxes, scores and labels of Keypoint-Triplets CenterNet's raw outputs, as the official `_decode` and test.

    1. Sigmoid and 3x3 peak extraction of the three heatmaps; the top
       `top_k` top-left corners, bottom-right corners and centres over all
       classes and pixels, placed with their offsets.
    2. Every top-left x bottom-right pair scores the mean of its two corner
       scores; a pair is rejected when the classes differ, the embeddings
       differ by more than `ae_threshold`, or the bottom-right corner lies
       left of or above the top-left one. The best `num_candidates` pairs
       are kept.
    3. The central region of a box (input pixels): its central third (`n =
       3`) when its area is at most `small_area`, its central fifth (`n =
       5`) otherwise, i.e. `[((n+1) x1 + (n-1) x2) / 2n, ((n-1) x1 + (n+1)
       x2) / 2n]` and the same in y. A box is kept only if a centre keypoint
       of its class lies strictly inside; its score becomes `(tl + br +
       ct) / 3` with the best such centre (the official `(2 * pair + ct) /
       3`). Others are rejected.
    4. Optionally Soft-NMS per class (Gaussian, `sigma = 0.5`, the official
       `exp_soft_nms`), then the top `max_detections`.

    Flip test (the official test of every image with its mirror): the
    candidates and centres of `flipped_outputs` are mirrored back (`x ->
    W - x` on the map, `x1` and `x2` swapped) and joined to those of
    `outputs` before step 3, so a centre seen in either image validates a
    pair of either; Soft-NMS then merges the duplicates.

    Rejected entries score -1 before the final top-K; the caller's score
    threshold (0 by default) then blanks them. Cost: Soft-NMS is a loop over
    the `num_candidates` pairs (twice as many with the flip), about 1.5 s
    per image for the official 1000 on a shared 2-core CPU (0.03 s
    without it).

    Args:
        outputs: dict of raw maps: `top_left_heatmap`, `bottom_right_heatmap`,
            `center_heatmap` (logits, `(B, H, W, C)`), `top_left_embedding`,
            `bottom_right_embedding` (`(B, H, W, 1)`), `top_left_offset`,
            `bottom_right_offset`, `center_offset` (`(B, H, W, 2)`).
        max_detections: int. Defaults to 100.
        top_k: int. Keypoints of each type. Defaults to 70 (official).
        ae_threshold: float. Defaults to 0.5.
        num_candidates: int. Pairs kept before the centre check. Defaults
            to 1000.
        stride: number. Input pixels per map pixel. Defaults to 4.
        small_area: float. Input-pixel area up to which `n = 3`. Defaults
            to 22500.
        use_soft_nms: bool. Defaults to True.
        flipped_outputs: dict like `outputs`, of the horizontally mirrored
            images, or `None`. Defaults to `None`.

    Returns:
        dict: `boxes` `(B, K, 4)` `xyxy` in input pixels, `scores` `(B, K)`
        (descending; -1 for rejected pairs), `labels` int32 `(B, K)`.

    Example:

    >>> detections = decode_triplets(model(images))

    Reference:
        Duan et al., "CenterNet: Keypoint Triplets for Object Detection",
        ICCV 2019, section 3.3.
    """
    config = (top_k, ae_threshold, num_candidates, stride)
    boxes, scores, labels, centres = _candidates(outputs, *config)
    if flipped_outputs is not None:
        flipped_boxes, flipped_scores, flipped_labels, flipped_centres = _candidates(flipped_outputs, *config)
        image_width = outputs["top_left_heatmap"].shape[2] * stride
        flipped_boxes = ops.stack(
            [image_width - flipped_boxes[..., 2], flipped_boxes[..., 1],
             image_width - flipped_boxes[..., 0], flipped_boxes[..., 3]], axis=-1
        )
        flipped_centres = (image_width - flipped_centres[0],) + flipped_centres[1:]
        boxes = ops.concatenate([boxes, flipped_boxes], axis=1)
        scores = ops.concatenate([scores, flipped_scores], axis=1)
        labels = ops.concatenate([labels, flipped_labels], axis=1)
        centres = tuple(ops.concatenate([a, b], axis=1) for a, b in zip(centres, flipped_centres))

    scores = _central_region_check(boxes, scores, labels, *centres, small_area)
    if use_soft_nms:
        # Rejected boxes (-1) stay below the threshold: Soft-NMS leaves them out.
        scores = soft_nms(boxes, scores, labels, method="gaussian", sigma=0.5, iou_threshold=0.5,
                          score_threshold=0.001)
    scores, order = ops.top_k(scores, min(max_detections, scores.shape[1]))
    return {
        "boxes": ops.take_along_axis(boxes, order[..., None], axis=1),
        "scores": scores,
        "labels": ops.take_along_axis(labels, order, axis=1),
    }


def _candidates(outputs, top_k, ae_threshold, num_candidates, stride):
    """The best corner pairs (boxes in input pixels, scores, labels) and the top centres `(x, y, score, label)`."""
    tl_heat = _peaks(outputs["top_left_heatmap"])
    br_heat = _peaks(outputs["bottom_right_heatmap"])
    ct_heat = _peaks(outputs["center_heatmap"])
    height, width, classes = tl_heat.shape[1], tl_heat.shape[2], tl_heat.shape[3]
    if height is None or width is None or classes is None:
        raise ValueError(f"Decoding needs static map sizes; received heatmaps of shape {tl_heat.shape}.")
    k = min(top_k, height * width * classes)
    tl_scores, tl_labels, tl_pixels, tl_xs, tl_ys = _top_k(tl_heat, outputs["top_left_offset"], k)
    br_scores, br_labels, br_pixels, br_xs, br_ys = _top_k(br_heat, outputs["bottom_right_offset"], k)
    ct_scores, ct_labels, _, ct_xs, ct_ys = _top_k(ct_heat, outputs["center_offset"], k)
    tl_tags = ops.cast(gather_at_indices(outputs["top_left_embedding"], tl_pixels), "float32")[..., 0]
    br_tags = ops.cast(gather_at_indices(outputs["bottom_right_embedding"], br_pixels), "float32")[..., 0]

    # Pairs (B, k_tl, k_br), flattened top-left-major as the official view.
    batch = ops.shape(tl_heat)[0]
    x1 = ops.broadcast_to(tl_xs[:, :, None], (batch, k, k)) * stride
    y1 = ops.broadcast_to(tl_ys[:, :, None], (batch, k, k)) * stride
    x2 = ops.broadcast_to(br_xs[:, None, :], (batch, k, k)) * stride
    y2 = ops.broadcast_to(br_ys[:, None, :], (batch, k, k)) * stride
    scores = (tl_scores[:, :, None] + br_scores[:, None, :]) / 2
    reject = (
        (tl_labels[:, :, None] != br_labels[:, None, :])
        | (ops.abs(tl_tags[:, :, None] - br_tags[:, None, :]) > ae_threshold)
        | (x2 < x1)
        | (y2 < y1)
    )
    scores = ops.reshape(ops.where(reject, -1.0, scores), (batch, -1))
    labels = ops.reshape(ops.broadcast_to(tl_labels[:, :, None], (batch, k, k)), (batch, -1))
    boxes = ops.reshape(ops.stack([x1, y1, x2, y2], axis=-1), (batch, -1, 4))
    scores, order = ops.top_k(scores, min(num_candidates, k * k))
    boxes = ops.take_along_axis(boxes, order[..., None], axis=1)
    labels = ops.take_along_axis(labels, order, axis=1)
    return boxes, scores, labels, (ct_xs * stride, ct_ys * stride, ct_scores, ct_labels)


def _central_region_check(boxes, scores, labels, ct_xs, ct_ys, ct_scores, ct_labels, small_area):
    """Scores `(tl + br + ct) / 3` with the best centre of the class inside the central region, else -1."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    area = (x2 - x1) * (y2 - y1)
    n = ops.where(area <= small_area, 3.0, 5.0)
    left = ((n + 1) * x1 + (n - 1) * x2) / (2 * n)
    right = ((n - 1) * x1 + (n + 1) * x2) / (2 * n)
    top = ((n + 1) * y1 + (n - 1) * y2) / (2 * n)
    bottom = ((n - 1) * y1 + (n + 1) * y2) / (2 * n)
    # (B, candidates, centres)
    inside = (
        (ct_xs[:, None, :] > left[..., None])
        & (ct_xs[:, None, :] < right[..., None])
        & (ct_ys[:, None, :] > top[..., None])
        & (ct_ys[:, None, :] < bottom[..., None])
        & (ct_labels[:, None, :] == labels[..., None])
    )
    # The official takes the first match of centres sorted by score: the best one.
    best_centre = ops.max(ops.where(inside, ct_scores[:, None, :], -1.0), axis=-1)
    matched = (best_centre >= 0) & (scores >= 0)
    return ops.where(matched, (2 * scores + best_centre) / 3, -1.0)
