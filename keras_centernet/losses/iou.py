"""IoU losses of boxes regressed as distances to their four sides (LTRB), at centres or TTFNet-weighted.

Keras core has no box-regression loss (keras-cv's `GIoULoss` and
`CIoULoss` froze with keras-cv); `keras.utils.bounding_boxes.compute_ciou`
is a similarity, not a loss, and adds epsilons to the heights. The three
losses here are elementwise `1 - GIoU / DIoU / CIoU` of `xyxy` boxes
(`tests/losses/test_iou.py` checks CIoU against `compute_ciou`).
"""

import math

from keras import ops

from keras_centernet.losses.regression import gather_at_indices
from keras_centernet.targets.gaussian import ttfnet_radii

IOU_LOSSES = ("giou", "diou", "ciou")
BOX_TARGETS = ("center", "gaussian")

_EPSILON = 1e-7


def box_iou_loss(boxes_true, boxes_pred, mode="giou"):
    """Elementwise `1 - GIoU`, `1 - DIoU` or `1 - CIoU` of two sets of `xyxy` boxes.

    With `I`, `U` the intersection and union areas and `C` the smallest
    box enclosing both: GIoU `= I/U - (area(C) - U) / area(C)`; DIoU
    `= I/U - rho^2 / c^2` (`rho` the distance of the centres, `c` the
    diagonal of `C`); CIoU `= DIoU - a v`, `v = 4 / pi^2 (atan(w_t/h_t) -
    atan(w_p/h_p))^2`, `a = v / (1 - I/U + v)` (`a` without gradient, as
    the paper's implementation).

    Args:
        boxes_true: float tensor `(..., 4)`, `xyxy`.
        boxes_pred: float tensor `(..., 4)`, `xyxy`, broadcastable.
        mode: `"giou"`, `"diou"` or `"ciou"`. Defaults to `"giou"`.

    Returns:
        float32 tensor `(...)`, in `[0, 2]` (GIoU) or `[0, 3)`.

    Example:

    >>> float(box_iou_loss(np.array([0., 0, 2, 2]), np.array([1., 1, 3, 3])))  # 1 - (1/7 - 2/9)
    1.0793...

    Reference:
        Rezatofighi et al., "Generalized Intersection over Union", CVPR
        2019; Zheng et al., "Distance-IoU Loss", AAAI 2020.
    """
    if mode not in IOU_LOSSES:
        raise ValueError(f"`mode` must be one of {IOU_LOSSES}; received {mode!r}.")
    t = ops.cast(boxes_true, "float32")
    p = ops.cast(boxes_pred, "float32")
    width_t, height_t = t[..., 2] - t[..., 0], t[..., 3] - t[..., 1]
    width_p, height_p = p[..., 2] - p[..., 0], p[..., 3] - p[..., 1]
    inter_w = ops.maximum(ops.minimum(t[..., 2], p[..., 2]) - ops.maximum(t[..., 0], p[..., 0]), 0.0)
    inter_h = ops.maximum(ops.minimum(t[..., 3], p[..., 3]) - ops.maximum(t[..., 1], p[..., 1]), 0.0)
    intersection = inter_w * inter_h
    union = width_t * height_t + width_p * height_p - intersection
    iou = intersection / (union + _EPSILON)
    enclosing_w = ops.maximum(t[..., 2], p[..., 2]) - ops.minimum(t[..., 0], p[..., 0])
    enclosing_h = ops.maximum(t[..., 3], p[..., 3]) - ops.minimum(t[..., 1], p[..., 1])
    if mode == "giou":
        enclosing = enclosing_w * enclosing_h
        return 1.0 - (iou - (enclosing - union) / (enclosing + _EPSILON))
    diagonal = ops.square(enclosing_w) + ops.square(enclosing_h)
    centre_distance = (
        ops.square((t[..., 0] + t[..., 2] - p[..., 0] - p[..., 2]) / 2)
        + ops.square((t[..., 1] + t[..., 3] - p[..., 1] - p[..., 3]) / 2)
    )
    diou = iou - centre_distance / (diagonal + _EPSILON)
    if mode == "diou":
        return 1.0 - diou
    v = (4 / math.pi**2) * ops.square(
        ops.arctan(width_t / (height_t + _EPSILON)) - ops.arctan(width_p / (height_p + _EPSILON))
    )
    alpha = ops.stop_gradient(v / (1.0 - iou + v + _EPSILON))
    return 1.0 - (diou - alpha * v)


def ltrb_to_boxes(ltrb, xs, ys):
    """`xyxy` boxes from distances `(left, top, right, bottom)` to the points `(xs, ys)`."""
    ltrb = ops.cast(ltrb, "float32")
    return ops.stack(
        [xs - ltrb[..., 0], ys - ltrb[..., 1], xs + ltrb[..., 2], ys + ltrb[..., 3]], axis=-1
    )


def ltrb_center_loss(ltrb_map, indices, mask, boxes, mode="giou"):
    """IoU loss of LTRB boxes read at object centres, the mean over objects.

    The prediction of object `k` is the box of distances `ltrb_map` at its
    centre cell `(x, y)` (flat index `y * W + x`), in map pixels, against
    its `xyxy` box.

    Args:
        ltrb_map: float tensor `(B, H, W, 4)`, non-negative distances.
        indices: int tensor `(B, M)`, the centre cells (`render_targets`).
        mask: float tensor `(B, M)`, 1 for objects.
        boxes: float tensor `(B, M, 4)`, `xyxy` in map pixels.
        mode: `"giou"`, `"diou"` or `"ciou"`. Defaults to `"giou"`.

    Returns:
        Scalar float32 tensor.

    Example:

    >>> loss = ltrb_center_loss(raw["box_2d"], targets["indices"], targets["mask"], boxes / 4)
    """
    width = ltrb_map.shape[2] if ltrb_map.shape[2] is not None else ops.shape(ltrb_map)[2]
    indices = ops.cast(indices, "int32")
    xs = ops.cast(indices % width, "float32")
    ys = ops.cast(indices // width, "float32")
    predicted = ltrb_to_boxes(gather_at_indices(ltrb_map, indices), xs, ys)
    mask = ops.cast(mask, "float32")
    loss = box_iou_loss(boxes, predicted, mode) * mask
    return ops.sum(loss) / (ops.sum(mask) + 1e-4)


def gaussian_box_weights(boxes, mask, output_size, pixel_area=16.0):
    """TTFNet's regression targets: every cell in an object's Gaussian regresses its box.

    Per object, an elliptical Gaussian (TTFNet's radii, alpha 0.54) at its
    centre cell; a cell inside several Gaussians regresses the smallest box
    (TTFNet draws boxes largest first, so the smaller overwrite). The weight
    of a cell is `G(cell) log(area) / sum(G)`, the object's Gaussian
    normalised over its window times the log of its area in input pixels,
    so that every object weighs `log(area)` in total.

    Cost: per-object maps `(B, M, H * W)` float32, as `render_targets`.

    Args:
        boxes: float tensor `(B, M, 4)`, `xyxy` in map pixels, clipped to
            the map.
        mask: float tensor `(B, M)`, 1 for objects.
        output_size: `(H, W)` of the map.
        pixel_area: float. Input pixels per map pixel (stride squared).
            Defaults to 16.

    Returns:
        `(boxes, weights)`: `(B, H * W, 4)` target box of every cell and
        `(B, H * W)` weights (0 outside every Gaussian).

    Reference:
        Liu et al., "Training-Time-Friendly Network for Real-Time Object
        Detection", AAAI 2020, section 3.3.
    """
    height, width = (int(v) for v in output_size)
    boxes = ops.cast(boxes, "float32")
    mask = ops.cast(mask, "float32")
    box_w = boxes[..., 2] - boxes[..., 0]
    box_h = boxes[..., 3] - boxes[..., 1]
    center_x = ops.floor((boxes[..., 0] + boxes[..., 2]) / 2)
    center_y = ops.floor((boxes[..., 1] + boxes[..., 3]) / 2)
    radius_y, radius_x = ttfnet_radii(box_h, box_w)
    radius_y = ops.cast(radius_y, "float32")
    radius_x = ops.cast(radius_x, "float32")
    sigma_y = (2 * radius_y + 1) / 6
    sigma_x = (2 * radius_x + 1) / 6
    dy = ops.arange(height, dtype="float32")[None, None, :] - center_y[..., None]
    dx = ops.arange(width, dtype="float32")[None, None, :] - center_x[..., None]
    gauss_y = ops.where(
        ops.abs(dy) <= radius_y[..., None], ops.exp(-ops.square(dy) / (2 * ops.square(sigma_y[..., None]))), 0.0
    )
    gauss_x = ops.where(
        ops.abs(dx) <= radius_x[..., None], ops.exp(-ops.square(dx) / (2 * ops.square(sigma_x[..., None]))), 0.0
    )
    gauss = (gauss_y[..., :, None] * gauss_x[..., None, :]) * mask[..., None, None]
    gauss = ops.reshape(gauss, (ops.shape(boxes)[0], ops.shape(boxes)[1], height * width))  # (B, M, HW)
    area = box_w * box_h
    # The smallest object whose Gaussian covers a cell owns it.
    claim = ops.where(gauss > 0, -area[..., None], -float("inf"))
    owner = ops.argmax(claim, axis=1)  # (B, HW)
    covered = ops.cast(ops.max(gauss, axis=1) > 0, "float32")
    normalised = gauss / (ops.sum(gauss, axis=-1, keepdims=True) + _EPSILON)
    normalised = normalised * ops.log(ops.maximum(area * pixel_area, 1.0))[..., None]
    weights = ops.take_along_axis(normalised, owner[:, None, :], axis=1)[:, 0] * covered
    cell_boxes = ops.take_along_axis(boxes, owner[..., None], axis=1)
    return cell_boxes, weights


def ltrb_gaussian_loss(ltrb_map, boxes, mask, mode="giou", pixel_area=16.0):
    """TTFNet's weighted IoU loss: every cell of each object's Gaussian, weighted (`gaussian_box_weights`).

    `sum(w * loss) / sum(w)` over the batch's cells, the prediction of a
    cell `(x, y)` being the box of its distances.

    Args:
        ltrb_map: float tensor `(B, H, W, 4)`, non-negative distances.
        boxes: float tensor `(B, M, 4)`, `xyxy` in map pixels, clipped.
        mask: float tensor `(B, M)`, 1 for objects.
        mode: `"giou"`, `"diou"` or `"ciou"`. Defaults to `"giou"`.
        pixel_area: float. Input pixels per map pixel. Defaults to 16.

    Returns:
        Scalar float32 tensor.

    Reference:
        Liu et al., "Training-Time-Friendly Network for Real-Time Object
        Detection", AAAI 2020, equation (5).
    """
    height, width = ltrb_map.shape[1], ltrb_map.shape[2]
    cell_boxes, weights = gaussian_box_weights(boxes, mask, (height, width), pixel_area)
    ys, xs = ops.meshgrid(ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"), indexing="ij")
    predicted = ltrb_to_boxes(ops.reshape(ltrb_map, (ops.shape(ltrb_map)[0], height * width, 4)),
                              ops.reshape(xs, (-1,)), ops.reshape(ys, (-1,)))
    loss = box_iou_loss(cell_boxes, predicted, mode) * weights
    return ops.sum(loss) / (ops.sum(weights) + 1e-4)
