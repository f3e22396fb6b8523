"""CenterNet's training targets, rendered inside the training step with `keras.ops`.

Vectorised over the batch and the objects (no loop, no NumPy, no
`py_function`), so that the targets are made on the accelerator, inside the
compiled step, on every backend.
"""

from keras import ops

from keras_centernet.targets.gaussian import RADIUS_METHODS
from keras_centernet.targets.gaussian import gaussian_radius
from keras_centernet.targets.gaussian import ttfnet_radii


def checked_objects(boxes, labels, max_objects):
    """Padded boxes and labels, checked and cut to `max_objects`, as every renderer needs.

    Args:
        boxes: tensor (B, M, 4), `xyxy`.
        labels: tensor (B, M), -1 for padding.
        max_objects: int. Objects kept per image (the official loader's
            `num_objs = min(len(anns), max_objs)`).

    Returns:
        `(boxes, labels, finite, num_objects)`: float32 boxes with
        non-finite ones set to 0, int32 labels, the (B, M) mask of finite
        boxes, and the static number of objects (or None).
    """
    boxes = ops.convert_to_tensor(boxes, "float32")
    labels = ops.cast(ops.convert_to_tensor(labels), "int32")
    if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"`boxes` must have shape (B, M, 4); received {boxes.shape}.")
    if len(labels.shape) != 2:
        raise ValueError(f"`labels` must have shape (B, M); received {labels.shape}.")
    num_objects = boxes.shape[1]
    if num_objects is not None and num_objects > max_objects:
        boxes = boxes[:, :max_objects]
        labels = labels[:, :max_objects]
        num_objects = max_objects
    finite = ops.all(ops.isfinite(boxes), axis=-1)
    return ops.where(finite[..., None], boxes, 0.0), labels, finite, num_objects


def render_targets(boxes, labels, output_size, num_classes, max_objects=128, radius="official"):
    """Heatmap, size, offset, index and mask targets of a batch, as the official `ctdet.py`.

    The rules of the official data loader after its affine step:
    1. boxes are clipped to `[0, W-1] x [0, H-1]` (the map's last pixel);
    2. an object counts only if its width and height stay positive, its
       coordinates are finite and its label is in `[0, num_classes)`;
       padding (label -1) and other invalid objects leave their slot zero,
       and only the first `max_objects` slots are used;
    3. the centre `((x1 + x2) / 2, (y1 + y2) / 2)` is truncated to its
       pixel; the Gaussian radius is `max(0, int(gaussian_radius(ceil(h),
       ceil(w))))`, `sigma = (2r + 1) / 6`, drawn in a `(2r+1)^2` window cut
       at the map border, and objects of one class combine by maximum;
    4. size `(w, h)`, sub-pixel offset `centre - int(centre)` and flat index
       `y * W + x` per slot; slots are not compacted (object `k` writes
       slot `k`), and two objects on one pixel fill two slots.

    Boxes come in output-map pixels so that the caller owns the stride (the
    model divides its input-pixel boxes by `input size / map size`). The
    official `gaussian2D` also zeroes values below `eps * max`; inside the
    window every value is above `exp(-9)`, so that never fires and is left
    out. Cost: per-object maps `(B * M, H * W)` float32 are reduced by one
    `segment_max` (about 268 MB transient at B=32, M=128, a 128x128 map).

    Args:
        boxes: float tensor `(B, M, 4)`, `xyxy` in output-map pixels (input
            pixels divided by the stride). NaN/inf boxes are skipped.
        labels: int tensor `(B, M)`. Class per object; -1 for padding,
            labels outside `[0, num_classes)` are skipped.
        output_size: `(H, W)` of the output map (ints).
        num_classes: int. Heatmap channels.
        max_objects: int. Slots of the regression targets. Defaults to 128.
        radius: `"official"`, `"fixed"` (CornerNet's corrected formula) or
            `"ttfnet"` (elliptical, TTFNet's radii, alpha 0.54). Defaults to
            `"official"`.

    Returns:
        dict:
        - `heatmap`: float32 `(B, H, W, C)`;
        - `size`: float32 `(B, max_objects, 2)`, `(w, h)`;
        - `offset`: float32 `(B, max_objects, 2)`, `(dx, dy)`;
        - `indices`: int32 `(B, max_objects)`, `y * W + x`;
        - `mask`: float32 `(B, max_objects)`, 1 for the objects drawn.

    Example:

    >>> boxes = np.array([[[2.0, 3.0, 12.0, 9.0]]], "float32")  # map pixels
    >>> targets = render_targets(boxes, np.array([[1]]), (16, 16), num_classes=3)
    >>> float(targets["heatmap"][0, 6, 7, 1])  # the peak, at int(centre)
    1.0

    Reference:
        Zhou et al., "Objects as Points", 2019, section 3; the official
        `src/lib/datasets/sample/ctdet.py`.
    """
    if radius not in RADIUS_METHODS:
        raise ValueError(f"`radius` must be one of {RADIUS_METHODS}; received {radius!r}.")
    height, width = (int(v) for v in output_size)
    boxes, labels, finite, num_objects = checked_objects(boxes, labels, max_objects)
    x1 = ops.clip(boxes[..., 0], 0.0, width - 1.0)
    y1 = ops.clip(boxes[..., 1], 0.0, height - 1.0)
    x2 = ops.clip(boxes[..., 2], 0.0, width - 1.0)
    y2 = ops.clip(boxes[..., 3], 0.0, height - 1.0)
    box_h = y2 - y1
    box_w = x2 - x1
    valid = finite & (box_h > 0) & (box_w > 0) & (labels >= 0) & (labels < num_classes)
    valid_f = ops.cast(valid, "float32")

    center_x = (x1 + x2) / 2
    center_y = (y1 + y2) / 2
    # Centres are >= 0 after the clip: truncation is floor.
    center_x_int = ops.floor(center_x)
    center_y_int = ops.floor(center_y)

    if radius == "ttfnet":
        radius_y, radius_x = ttfnet_radii(box_h, box_w)
    else:
        r = gaussian_radius(ops.ceil(box_h), ops.ceil(box_w), method=radius)
        radius_y = radius_x = ops.cast(ops.floor(ops.maximum(r, 0.0)), "int32")
    radius_y = ops.cast(radius_y, "float32")
    radius_x = ops.cast(radius_x, "float32")
    sigma_y = (2 * radius_y + 1) / 6
    sigma_x = (2 * radius_x + 1) / 6

    # Separable Gaussian per object: (B, M, H) and (B, M, W), zero outside
    # the window |d| <= r (the window is cut, not shifted, at the border).
    dy = ops.arange(height, dtype="float32")[None, None, :] - center_y_int[..., None]
    dx = ops.arange(width, dtype="float32")[None, None, :] - center_x_int[..., None]
    gauss_y = ops.where(
        ops.abs(dy) <= radius_y[..., None],
        ops.exp(-ops.square(dy) / (2 * ops.square(sigma_y[..., None]))),
        0.0,
    )
    gauss_x = ops.where(
        ops.abs(dx) <= radius_x[..., None],
        ops.exp(-ops.square(dx) / (2 * ops.square(sigma_x[..., None]))),
        0.0,
    )
    gauss_y = gauss_y * valid_f[..., None]
    # Per-object maps (B, M, H, W), then a maximum per (image, class):
    # invalid objects go to one extra segment that is dropped.
    maps = gauss_y[..., :, None] * gauss_x[..., None, :]
    batch = ops.shape(boxes)[0]
    image_index = ops.arange(batch, dtype="int32")[:, None]
    segment = ops.where(valid, image_index * num_classes + labels, batch * num_classes)
    maps = ops.reshape(maps, (-1, height * width))
    heatmap = ops.segment_max(
        maps, ops.reshape(segment, (-1,)), num_segments=batch * num_classes + 1
    )[:-1]
    # Empty segments are -inf (or the lowest float): no object, zero heat.
    heatmap = ops.maximum(heatmap, 0.0)
    heatmap = ops.reshape(heatmap, (batch, num_classes, height, width))
    heatmap = ops.transpose(heatmap, (0, 2, 3, 1))

    size = ops.stack([box_w, box_h], axis=-1) * valid_f[..., None]
    offset = ops.stack([center_x - center_x_int, center_y - center_y_int], axis=-1) * valid_f[..., None]
    indices = ops.cast(center_y_int * width + center_x_int, "int32") * ops.cast(valid, "int32")
    if num_objects is not None and num_objects < max_objects:
        pad = max_objects - num_objects
        size = ops.pad(size, ((0, 0), (0, pad), (0, 0)))
        offset = ops.pad(offset, ((0, 0), (0, pad), (0, 0)))
        indices = ops.pad(indices, ((0, 0), (0, pad)))
        valid_f = ops.pad(valid_f, ((0, 0), (0, pad)))
    return {
        "heatmap": heatmap,
        "size": size,
        "offset": offset,
        "indices": indices,
        "mask": valid_f,
    }
