"""The L1 loss of the joints' offsets from the person centre (the official `RegWeightedL1Loss`)."""

from keras import ops

from keras_centernet.losses.regression import gather_at_indices


def reg_weighted_l1_loss(prediction_map, indices, mask, target):
    """L1 loss at object centres with a mask per channel, as the official `RegWeightedL1Loss`.

    `sum(|pred * m - target * m|) / (sum(m) + 1e-4)` over the batch, where
    `pred` is the map gathered at the centre indices and `m` the mask of
    each object and channel (for pose: the joints' visibility mask, 1 on
    both coordinates of every labelled joint on the map). The mean per
    labelled coordinate.

    Args:
        prediction_map: float tensor `(B, H, W, C)` (the joint-offset head,
            `C = 2J`).
        indices: int tensor `(B, M)`, flat `y * W + x` of each centre.
        mask: float tensor `(B, M, C)`.
        target: float tensor `(B, M, C)`.

    Returns:
        Scalar float32 tensor.

    Example:

    >>> targets = render_pose_targets(boxes / 4, labels, keypoints / [4, 4, 1], (32, 32))
    >>> loss = reg_weighted_l1_loss(
    ...     raw["keypoints"], targets["indices"], targets["keypoint_mask"], targets["keypoints"])

    Reference:
        Zhou et al., "Objects as Points", 2019, section 4 (human pose); the
        official `src/lib/models/losses.py`.
    """
    prediction = ops.cast(gather_at_indices(prediction_map, indices), "float32")
    target = ops.cast(target, "float32")
    mask = ops.cast(mask, "float32")
    if tuple(mask.shape[-1:]) != tuple(prediction.shape[-1:]):
        raise ValueError(
            f"`mask` {mask.shape} must have the map's {prediction.shape[-1]} channels."
        )
    loss = ops.sum(ops.abs(prediction * mask - target * mask))
    return loss / (ops.sum(mask) + 1e-4)
