"""Monocular 3D targets (the official `ddd` task), rendered in the training step.

Vectorised over the batch and the objects with `keras.ops` (no loop, no
NumPy), as `keras_centernet.targets.render`, so that they are made on the
accelerator inside the compiled step on every backend.
"""

import math

from keras import ops

from keras_centernet.targets.render import render_targets

# The two overlapping orientation bins of the paper (supplementary, "3D
# detection"): bin 0 covers alpha outside (pi/6, 5pi/6), centred at -pi/2;
# bin 1 covers alpha outside (-5pi/6, -pi/6), centred at +pi/2.
BIN_CENTERS = (-0.5 * math.pi, 0.5 * math.pi)


def _slots(values, num_objects, max_objects):
    """`(B, M, ...)` values cut or zero-padded to `max_objects` slots."""
    if num_objects is not None and num_objects > max_objects:
        return values[:, :max_objects]
    if num_objects is not None and num_objects < max_objects:
        pad = [(0, 0), (0, max_objects - num_objects)] + [(0, 0)] * (len(values.shape) - 2)
        return ops.pad(values, pad)
    return values


def rotation_bins(alpha):
    """The official bin classes and residuals of observation angles `alpha`.

    Bin 0 is on when `alpha < pi/6` or `alpha > 5pi/6`, residual `alpha +
    pi/2`; bin 1 is on when `alpha > -pi/6` or `alpha < -5pi/6`, residual
    `alpha - pi/2`. A bin that is off has residual 0.

    Args:
        alpha: float tensor of any shape, radians in `[-pi, pi]`.

    Returns:
        `(bins, residuals)`: int32 and float32 tensors of shape
        `alpha.shape + (2,)`.

    Example:

    >>> bins, residuals = rotation_bins(np.array([0.0]))
    >>> bins.tolist()  # alpha = 0 lies in both bins
    [[1, 1]]
    """
    alpha = ops.convert_to_tensor(alpha, "float32")
    first = (alpha < math.pi / 6) | (alpha > 5 * math.pi / 6)
    second = (alpha > -math.pi / 6) | (alpha < -5 * math.pi / 6)
    bins = ops.stack([first, second], axis=-1)
    residuals = ops.stack([alpha - BIN_CENTERS[0], alpha - BIN_CENTERS[1]], axis=-1)
    return ops.cast(bins, "int32"), ops.where(bins, residuals, 0.0)


def render_ddd_targets(
    boxes, labels, depth, dimensions, alpha, output_size, num_classes=3, max_objects=50,
    radius="official",
):
    """Targets of the official `ddd` task for a batch of objects.

    The 2D part is `render_targets` (centre heatmap of the 2D box, `size`
    `(w, h)`, `offset`, `indices`, `mask`); for every drawn object `k` the
    3D part is, as the official `ddd.py` sample:
    - `depth[k]` = the object's depth (KITTI's location `z`, metres);
    - `dimensions[k]` = `(h, w, l)` in metres (KITTI's order);
    - `rotation_bins[k]`, `rotation_residuals[k]` = `rotation_bins(alpha)`.
    Slots of objects that are not drawn are zero. The official loader
    zeroes the depth and dimension mask of images it scale-augmented; no
    augmentation happens here, so one `mask` serves every loss.

    Args:
        boxes: float tensor `(B, M, 4)`, `xyxy` 2D boxes in output-map pixels.
        labels: int tensor `(B, M)`. Class per object; -1 for padding.
        depth: float tensor `(B, M)`, metres.
        dimensions: float tensor `(B, M, 3)`, `(h, w, l)` in metres.
        alpha: float tensor `(B, M)`, the observation angle in radians.
        output_size: `(H, W)` of the output map (ints).
        num_classes: int. Defaults to 3 (KITTI's Pedestrian, Car, Cyclist).
        max_objects: int. Object slots (the official KITTI `max_objs`).
            Defaults to 50.
        radius: `"official"`, `"fixed"` or `"ttfnet"`. Defaults to
            `"official"`.

    Returns:
        dict: the keys of `render_targets` (`heatmap`, `size`, `offset`,
        `indices`, `mask`) and
        - `depth`: float32 `(B, max_objects, 1)`;
        - `dimensions`: float32 `(B, max_objects, 3)`;
        - `rotation_bins`: int32 `(B, max_objects, 2)`;
        - `rotation_residuals`: float32 `(B, max_objects, 2)`.

    Example:

    >>> boxes = np.array([[[2.0, 3.0, 12.0, 9.0]]], "float32")
    >>> targets = render_ddd_targets(boxes, np.array([[1]]), np.array([[20.0]]),
    ...                              np.array([[[1.5, 1.6, 3.9]]]), np.array([[0.3]]), (16, 16))
    >>> float(targets["depth"][0, 0, 0])
    20.0

    Reference:
        Zhou et al., "Objects as Points", 2019, section 4 (3D detection);
        the official `src/lib/datasets/sample/ddd.py`.
    """
    height, width = (int(v) for v in output_size)
    boxes = ops.convert_to_tensor(boxes, "float32")
    depth = ops.convert_to_tensor(depth, "float32")
    dimensions = ops.convert_to_tensor(dimensions, "float32")
    alpha = ops.convert_to_tensor(alpha, "float32")
    if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"`boxes` must have shape (B, M, 4); received {boxes.shape}.")
    num_objects = boxes.shape[1]
    if tuple(depth.shape) != tuple(boxes.shape[:2]):
        raise ValueError(f"`depth` must have shape (B, M) = {boxes.shape[:2]}; received {depth.shape}.")
    if tuple(alpha.shape) != tuple(boxes.shape[:2]):
        raise ValueError(f"`alpha` must have shape (B, M) = {boxes.shape[:2]}; received {alpha.shape}.")
    if tuple(dimensions.shape) != tuple(boxes.shape[:2]) + (3,):
        raise ValueError(
            f"`dimensions` must have shape (B, M, 3) = {tuple(boxes.shape[:2]) + (3,)}; "
            f"received {dimensions.shape}."
        )
    targets = render_targets(
        boxes, labels, (height, width), num_classes, max_objects=max_objects, radius=radius
    )
    mask = targets["mask"]
    depth = ops.where(ops.isfinite(depth), depth, 0.0)
    dimensions = ops.where(ops.isfinite(dimensions), dimensions, 0.0)
    alpha = ops.where(ops.isfinite(alpha), alpha, 0.0)
    bins, residuals = rotation_bins(alpha)
    depth = _slots(depth[..., None], num_objects, max_objects) * mask[..., None]
    dimensions = _slots(dimensions, num_objects, max_objects) * mask[..., None]
    bins = _slots(bins, num_objects, max_objects) * ops.cast(mask, "int32")[..., None]
    residuals = _slots(residuals, num_objects, max_objects) * mask[..., None]
    targets.update(
        {
            "depth": depth,
            "dimensions": dimensions,
            "rotation_bins": bins,
            "rotation_residuals": residuals,
        }
    )
    return targets
