"""L1 regression of sizes and offsets at object centres (the official `RegL1Loss`)."""

from keras import ops


def gather_at_indices(feature_map, indices):
    """Values of a `(B, H, W, C)` map at flat indices `y * W + x` `(B, M)` -> `(B, M, C)`."""
    flat = ops.reshape(feature_map, (ops.shape(feature_map)[0], -1, ops.shape(feature_map)[-1]))
    return ops.take_along_axis(flat, ops.cast(indices, "int32")[..., None], axis=1)


def reg_l1_loss(prediction_map, indices, mask, target):
    """L1 loss of a regression map at object centres, as the official `RegL1Loss`.

    `sum(|pred * m - target * m|) / (sum(m) + 1e-4)` over the batch, where
    `pred` is the map gathered at the objects' centre indices and `m` the
    object mask expanded to the map's channels (so a mean per object and
    channel).

    Args:
        prediction_map: float tensor `(B, H, W, C)` (size or offset head).
        indices: int tensor `(B, M)`, flat `y * W + x` of each object.
        mask: float tensor `(B, M)`, 1 for objects, 0 for empty slots.
        target: float tensor `(B, M, C)`.

    Returns:
        Scalar float32 tensor.

    Example:

    >>> targets = render_targets(boxes / 4, labels, (128, 128), num_classes=80)
    >>> loss = reg_l1_loss(raw["size"], targets["indices"], targets["mask"], targets["size"])

    Reference:
        Zhou et al., "Objects as Points", 2019, equations (2) and (3).
    """
    prediction = ops.cast(gather_at_indices(prediction_map, indices), "float32")
    target = ops.cast(target, "float32")
    mask = ops.cast(mask, "float32")[..., None] * ops.ones_like(prediction)
    loss = ops.sum(ops.abs(prediction * mask - target * mask))
    return loss / (ops.sum(mask) + 1e-4)
