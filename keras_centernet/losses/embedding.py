"""CornerNet's associative-embedding pull/push losses and the corner/centre offset loss (Keypoint Triplets)."""

from keras import ops

from keras_centernet.losses.regression import gather_at_indices

# The official `AELoss(pull_weight=1e-1, push_weight=1e-1)`, `regr_weight=1`.
PULL_WEIGHT = 0.1
PUSH_WEIGHT = 0.1
OFFSET_WEIGHT = 1.0

_EPSILON = 1e-4


def embedding_losses(top_left_embedding, bottom_right_embedding, top_left_indices, bottom_right_indices, mask):
    """The pull and push losses of 1-d corner embeddings, as the official `_ae_loss`.

    With `e_tl`, `e_br` the embeddings at an object's two corners, `e` their
    mean and `n` the number of objects of an image: pull =
    `sum_k ((e_tl - e)^2 + (e_br - e)^2) / (n + 1e-4)` (the corners of one
    object pulled together); push = `sum_{j, k} (relu(1 - |e_j - e_k|) -
    1 / (n + 1e-4)) / (n (n - 1) + 1e-4)` over every ordered pair of the
    image's objects, `j == k` included (for `n >= 2` the subtraction cancels
    the diagonal, leaving the mean hinge of CornerNet's equation (5) over
    pairs `j != k`; for `n == 1` the official formula leaves a constant
    `~1` with no gradient, kept here). Both are summed over the batch (not
    averaged), as the official loss.

    Args:
        top_left_embedding: float tensor `(B, H, W, 1)`.
        bottom_right_embedding: float tensor `(B, H, W, 1)`.
        top_left_indices: int tensor `(B, M)`, flat `y * W + x` per object.
        bottom_right_indices: int tensor `(B, M)`.
        mask: float tensor `(B, M)`, 1 for objects.

    Returns:
        `(pull, push)`, scalar float32 tensors (unweighted).

    Example:

    >>> pull, push = embedding_losses(raw["top_left_embedding"], raw["bottom_right_embedding"],
    ...                               targets["top_left_indices"], targets["bottom_right_indices"],
    ...                               targets["mask"])

    Reference:
        Law and Deng, "CornerNet", ECCV 2018, equations (4) and (5);
        Newell et al., "Associative Embedding", NeurIPS 2017.
    """
    tag0 = ops.cast(gather_at_indices(top_left_embedding, top_left_indices), "float32")[..., 0]
    tag1 = ops.cast(gather_at_indices(bottom_right_embedding, bottom_right_indices), "float32")[..., 0]
    mask = ops.cast(mask, "float32")
    num = ops.sum(mask, axis=1, keepdims=True)
    mean = (tag0 + tag1) / 2
    pull = ops.sum(mask * (ops.square(tag0 - mean) + ops.square(tag1 - mean)) / (num + _EPSILON))

    pair_mask = mask[:, :, None] * mask[:, None, :]
    num = num[..., None]
    hinge = ops.relu(1.0 - ops.abs(mean[:, None, :] - mean[:, :, None])) - 1.0 / (num + _EPSILON)
    push = ops.sum(pair_mask * hinge / ((num - 1) * num + _EPSILON))
    return pull, push


def keypoint_offset_loss(offset_map, indices, mask, target):
    """Smooth-L1 loss of a keypoint's sub-pixel offsets, as the official `_regr_loss`.

    `sum(smooth_l1(pred - target))` over the objects and both channels,
    divided by the number of objects in the batch (`+ 1e-4`); smooth L1 with
    `beta = 1`: `0.5 d^2` where `|d| < 1`, else `|d| - 0.5`. (CenterNet's
    `reg_l1_loss` is a plain L1 divided by objects times channels.)

    Args:
        offset_map: float tensor `(B, H, W, 2)`.
        indices: int tensor `(B, M)`, flat `y * W + x` per object.
        mask: float tensor `(B, M)`.
        target: float tensor `(B, M, 2)`.

    Returns:
        Scalar float32 tensor.

    Example:

    >>> loss = keypoint_offset_loss(raw["center_offset"], targets["center_indices"],
    ...                             targets["mask"], targets["center_offset"])

    Reference:
        Duan et al., "CenterNet: Keypoint Triplets for Object Detection",
        ICCV 2019, section 3.5; the official `kp_utils._regr_loss`.
    """
    prediction = ops.cast(gather_at_indices(offset_map, indices), "float32")
    difference = ops.abs(prediction - ops.cast(target, "float32"))
    smooth = ops.where(difference < 1.0, 0.5 * ops.square(difference), difference - 0.5)
    mask = ops.cast(mask, "float32")
    return ops.sum(smooth * mask[..., None]) / (ops.sum(mask) + _EPSILON)
