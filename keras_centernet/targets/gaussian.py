"""Gaussian radii of CenterNet's heatmap targets (official, CornerNet-fixed, TTFNet), in `keras.ops`."""

from keras import ops

RADIUS_METHODS = ("official", "fixed", "ttfnet")

# TTFNet's `alpha`: the Gaussian covers this fraction of the box half-size.
TTFNET_ALPHA = 0.54


def gaussian_radius(height, width, min_overlap=0.7, method="official"):
    """The Gaussian radius of a box of size `(height, width)` (float, before `int()`).

    A box whose corners move by less than the radius still overlaps the
    original by `min_overlap` IoU (CornerNet's argument). The official
    CenterNet keeps CornerNet's first formula, whose three roots are not the
    intended ones (it is larger than intended; in practice its third root
    decides); CornerNet corrected it later (`method="fixed"`). The official
    code calls this with `(ceil(h), ceil(w))`.

    Args:
        height: float tensor (any shape). Box heights.
        width: float tensor, broadcastable with `height`. Box widths.
        min_overlap: float. Defaults to 0.7.
        method: `"official"` (CenterNet) or `"fixed"` (CornerNet after its
            fix). Defaults to `"official"`.

    Returns:
        float tensor: the radius before truncation; the official rule then
        takes `max(0, int(r))`. Computed in the inputs' float dtype (float32
        in training: JAX has no float64 by default); its integer part equals
        the official float64 one for every integer size up to 128 x 128
        (all boxes of a 512-pixel input).

    Reference:
        Law and Deng, "CornerNet: Detecting Objects as Paired Keypoints",
        ECCV 2018, and its fix in princeton-vl/CornerNet e5c39a3.

    Example:

    >>> float(gaussian_radius(20.0, 35.0))  # the official radius of a 20x35 box
    7.0
    """
    if method not in ("official", "fixed"):
        raise ValueError(f"`method` must be 'official' or 'fixed'; received {method!r}.")
    height = ops.convert_to_tensor(height)
    width = ops.convert_to_tensor(width)
    # The same operation order as the reference, so that float32 rounding
    # gives the same integer radius where it sits right on an integer.
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    sq1 = ops.sqrt(ops.maximum(b1**2 - 4 * c1, 0.0))
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    sq2 = ops.sqrt(ops.maximum(b2**2 - 4 * 4 * c2, 0.0))
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    sq3 = ops.sqrt(ops.maximum(b3**2 - 4 * a3 * c3, 0.0))
    if method == "official":
        r1 = (b1 + sq1) / 2
        r2 = (b2 + sq2) / 2
        r3 = (b3 + sq3) / 2
    else:
        r1 = (b1 - sq1) / 2
        r2 = (b2 - sq2) / 8
        r3 = (b3 + sq3) / (2 * a3)
    return ops.minimum(ops.minimum(r1, r2), r3)


def ttfnet_radii(height, width, alpha=TTFNET_ALPHA):
    """TTFNet's elliptical radii `(h_radius, w_radius)` = `int(size / 2 * alpha)`, as ints.

    The Gaussian of a box then has `sigma_y = (2 h_radius + 1) / 6` and
    `sigma_x = (2 w_radius + 1) / 6`, in a `(2 h_radius + 1) x (2 w_radius + 1)`
    window.

    Args:
        height: float tensor. Box heights (not rounded up), output-map pixels.
        width: float tensor, broadcastable with `height`. Box widths.
        alpha: float. Fraction of the half-size covered. Defaults to 0.54
            (every TTFNet config).

    Returns:
        `(h_radius, w_radius)`, int32 tensors (float32 arithmetic, as TTFNet's
        torch code).

    Reference:
        Liu et al., "Training-Time-Friendly Network for Real-Time Object
        Detection", AAAI 2020.

    Example:

    >>> [int(r) for r in ttfnet_radii(20.0, 35.0)]
    [5, 9]
    """
    height = ops.convert_to_tensor(height, "float32")
    width = ops.convert_to_tensor(width, "float32")
    return (
        ops.cast(ops.floor(height / 2 * alpha), "int32"),
        ops.cast(ops.floor(width / 2 * alpha), "int32"),
    )
