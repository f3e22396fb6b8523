"""The penalty-reduced pixel-wise focal loss of CenterNet (CornerNet's variant of the focal loss)."""

from keras import ops

# The official `_sigmoid` clamps probabilities so that log() stays finite.
PROBABILITY_CLAMP = 1e-4


CLAMP_GRADIENTS = ("official", "straight_through")
# The heatmap losses of `CenterNet(heatmap_loss=...)`.
HEATMAP_LOSSES = ("focal", "quality_focal")


def clamped_sigmoid(logits, clamp_gradient="official"):
    """`sigmoid(logits)` clamped to `[1e-4, 1 - 1e-4]`, as the official `_sigmoid`.

    `clamp_gradient="official"`: zero gradient outside the range (torch's
    `clamp`). `"straight_through"`: the same values, but the gradient of the
    unclamped sigmoid everywhere.
    """
    probabilities = ops.sigmoid(logits)
    clamped = ops.clip(probabilities, PROBABILITY_CLAMP, 1.0 - PROBABILITY_CLAMP)
    if clamp_gradient == "official":
        return clamped
    if clamp_gradient == "straight_through":
        return probabilities + ops.stop_gradient(clamped - probabilities)
    raise ValueError(f"`clamp_gradient` must be one of {CLAMP_GRADIENTS}; received {clamp_gradient!r}.")


def focal_loss(heatmap_true, heatmap_logits, alpha=2.0, beta=4.0, clamp_gradient="official"):
    """Penalty-reduced focal loss over a batch of heatmaps (the official `_neg_loss`).

    With `p = clamp(sigmoid(logits))` and `y` the Gaussian target:
    `-(1 - p)^alpha log(p)` at the peaks (`y == 1`) and
    `-(1 - y)^beta p^alpha log(1 - p)` elsewhere, summed over the whole
    batch and divided by the number of peaks (pixels equal to 1: objects of
    one class sharing a centre pixel count once, as in the official loss);
    with no object in the batch, the sum of the negative part alone. The
    clamp has zero gradient outside `[1e-4, 1 - 1e-4]`, as torch's: a centre
    whose logit falls below -9.2 (easily, early in training from scratch at
    a high learning rate) then gets no gradient and is never learned.
    `clamp_gradient="straight_through"` keeps the official values but lets
    the sigmoid's gradient through, so such centres recover.

    Args:
        heatmap_true: float tensor `(B, H, W, C)`. Targets in `[0, 1]`, 1 at
            object centres.
        heatmap_logits: float tensor `(B, H, W, C)`. The heatmap head's
            output (before the sigmoid).
        alpha: float. Defaults to 2.
        beta: float. Defaults to 4.
        clamp_gradient: `"official"` or `"straight_through"`. Defaults to
            `"official"`.

    Returns:
        Scalar float32 tensor.

    Example:

    >>> y = np.zeros((1, 4, 4, 1), "float32"); y[0, 1, 2, 0] = 1
    >>> float(focal_loss(y, np.zeros_like(y)))  # p = 0.5: 16 pixels x 0.25 ln 2
    2.772588...

    Reference:
        Zhou et al., "Objects as Points", 2019, equation (1); Law and Deng,
        "CornerNet", ECCV 2018.
    """
    heatmap_true = ops.cast(heatmap_true, "float32")
    probabilities = clamped_sigmoid(ops.cast(heatmap_logits, "float32"), clamp_gradient)
    positives = ops.cast(ops.equal(heatmap_true, 1.0), "float32")
    negatives = 1.0 - positives
    positive_loss = ops.log(probabilities) * ops.power(1.0 - probabilities, alpha) * positives
    negative_loss = (
        ops.log(1.0 - probabilities)
        * ops.power(probabilities, alpha)
        * ops.power(1.0 - heatmap_true, beta)
        * negatives
    )
    num_positives = ops.sum(positives)
    # With no positive, the positive sum is 0 and the official loss is the
    # negative sum alone: dividing by max(1, n) covers both branches.
    return -(ops.sum(positive_loss) + ops.sum(negative_loss)) / ops.maximum(num_positives, 1.0)


def quality_focal_loss(heatmap_true, heatmap_logits, beta=2.0):
    """Quality focal loss over a batch of heatmaps (Generalized Focal Loss), Gaussians as quality.

    With `p = sigmoid(logits)` and the Gaussian target `y` as the soft
    label: `|y - p|^beta * BCE(y, p)` at every pixel, where
    `BCE(y, p) = -(y log p + (1 - y) log(1 - p))`, summed over the batch and
    divided by the number of peaks (pixels equal to 1, as `focal_loss`; with
    no object, by 1). Unlike `focal_loss`, which trains pixels near a centre
    towards 0 with a reduced weight, it trains every pixel towards its
    Gaussian value, so the predicted score follows the target's shape; the
    cross-entropy is computed from the logits (no clamp is needed).

    Args:
        heatmap_true: float tensor `(B, H, W, C)`. Targets in `[0, 1]`, 1 at
            object centres.
        heatmap_logits: float tensor `(B, H, W, C)`. The heatmap head's
            output (before the sigmoid).
        beta: float. The modulating exponent. Defaults to 2 (the paper's).

    Returns:
        Scalar float32 tensor.

    Example:

    >>> y = np.zeros((1, 2, 2, 1), "float32"); y[0, 0, 0, 0] = 1
    >>> float(quality_focal_loss(y, np.zeros_like(y)))  # 4 pixels x 0.25 ln 2
    0.693147...

    Reference:
        Li et al., "Generalized Focal Loss", NeurIPS 2020, equation (5).
    """
    heatmap_true = ops.cast(heatmap_true, "float32")
    logits = ops.cast(heatmap_logits, "float32")
    # -(y log p + (1 - y) log(1 - p)) from the logits: softplus(x) - x y.
    cross_entropy = ops.softplus(logits) - logits * heatmap_true
    modulation = ops.power(ops.abs(heatmap_true - ops.sigmoid(logits)), beta)
    num_positives = ops.sum(ops.cast(ops.equal(heatmap_true, 1.0), "float32"))
    return ops.sum(modulation * cross_entropy) / ops.maximum(num_positives, 1.0)
