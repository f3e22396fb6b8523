"""Keypoint-Triplets CenterNet's training targets (corners and centres), rendered in the step with `keras.ops`.

Vectorised over the batch and the objects, as `render_targets`: no loop, no
NumPy, so the targets are made on the accelerator inside the compiled step.
"""

from keras import ops

from keras_centernet.targets.gaussian import gaussian_radius
from keras_centernet.targets.render import checked_objects

# The official `draw_gaussian(..., delte)`: sigma = diameter / delte.
CORNER_SIGMA_DIVISOR = 6.0
CENTER_SIGMA_DIVISOR = 5.0

KEYPOINTS = ("top_left", "bottom_right", "center")


def render_triplet_targets(
    boxes, labels, output_size, num_classes, stride=4, max_objects=128, min_overlap=0.7
):
    """Corner and centre heatmaps, offsets, indices and the object mask, as the official `kp_detection` sampler.

    The rules of the official loader (Duan et al.'s `sample/coco.py`) after
    its crop and resize:
    1. boxes are clipped to the input image, `[0, W*stride - 1] x [0,
       H*stride - 1]`; an object counts only if its width and height stay
       positive, its coordinates are finite and its label is in `[0,
       num_classes)` (padding, label -1, and other invalid objects leave
       their slot zero); only the first `max_objects` slots are used;
    2. each keypoint (top-left `(x1, y1)`, bottom-right `(x2, y2)`, centre
       `((x1 + x2) / 2, (y1 + y2) / 2)`) is divided by the stride and
       truncated to its pixel; the offset target is the remainder;
    3. one CornerNet radius per object, `max(0, int(gaussian_radius(ceil(h /
       stride), ceil(w / stride))))` (CornerNet's first formula, the
       `"official"` method), a `(2r + 1)^2` window cut at the map border;
       corners have `sigma = (2r + 1) / 6`, centres `(2r + 1) / 5`; objects
       of one class combine by maximum;
    4. flat indices `y * W + x` per slot; slots are not compacted (object `k`
       writes slot `k`).

    Unlike `render_targets`, boxes come in input pixels: the official clip
    at the input's last pixel leaves a right/bottom corner at `W - 1/stride`
    on the map (pixel `W - 1`, offset `1 - 1/stride`), which a clip in map
    pixels would lose.

    Args:
        boxes: float tensor `(B, M, 4)`, `xyxy` in input pixels.
        labels: int tensor `(B, M)`. Class per object; -1 for padding.
        output_size: `(H, W)` of the output maps (ints).
        num_classes: int. Heatmap channels.
        stride: number. Input pixels per map pixel. Defaults to 4.
        max_objects: int. Slots of the per-object targets. Defaults to 128
            (the official `max_tag_len`).
        min_overlap: float. The radius' IoU. Defaults to 0.7
            (`gaussian_iou`).

    Returns:
        dict of float32 heatmaps `top_left_heatmap`, `bottom_right_heatmap`,
        `center_heatmap` `(B, H, W, C)`; float32 offsets `top_left_offset`,
        `bottom_right_offset`, `center_offset` `(B, max_objects, 2)` as
        `(dx, dy)`; int32 `top_left_indices`, `bottom_right_indices`,
        `center_indices` `(B, max_objects)`; and the float32 `mask`
        `(B, max_objects)`, 1 for the objects drawn.

    Example:

    >>> boxes = np.array([[[10.0, 14.0, 50.0, 38.0]]], "float32")  # input pixels
    >>> targets = render_triplet_targets(boxes, np.array([[1]]), (16, 16), num_classes=3)
    >>> float(targets["top_left_heatmap"][0, 3, 2, 1])  # int(14 / 4), int(10 / 4)
    1.0

    Reference:
        Duan et al., "CenterNet: Keypoint Triplets for Object Detection",
        ICCV 2019; Law and Deng, "CornerNet", ECCV 2018, section 3.2.
    """
    height, width = (int(v) for v in output_size)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int; received {num_classes!r}.")
    if not stride > 0:
        raise ValueError(f"`stride` must be positive; received {stride!r}.")
    boxes, labels, finite, num_objects = checked_objects(boxes, labels, max_objects)
    input_width, input_height = width * stride, height * stride
    x1 = ops.clip(boxes[..., 0], 0.0, input_width - 1.0)
    y1 = ops.clip(boxes[..., 1], 0.0, input_height - 1.0)
    x2 = ops.clip(boxes[..., 2], 0.0, input_width - 1.0)
    y2 = ops.clip(boxes[..., 3], 0.0, input_height - 1.0)
    valid = finite & (x2 - x1 > 0) & (y2 - y1 > 0) & (labels >= 0) & (labels < num_classes)
    valid_f = ops.cast(valid, "float32")

    ratio = 1.0 / stride
    radius = gaussian_radius(ops.ceil((y2 - y1) * ratio), ops.ceil((x2 - x1) * ratio), min_overlap=min_overlap)
    radius = ops.floor(ops.maximum(radius, 0.0))
    keypoints = {
        "top_left": (x1 * ratio, y1 * ratio, CORNER_SIGMA_DIVISOR),
        "bottom_right": (x2 * ratio, y2 * ratio, CORNER_SIGMA_DIVISOR),
        "center": ((x1 + x2) / 2 * ratio, (y1 + y2) / 2 * ratio, CENTER_SIGMA_DIVISOR),
    }
    pad = 0 if num_objects is None else max_objects - num_objects
    targets = {}
    for name, (x, y, divisor) in keypoints.items():
        # Keypoints are >= 0 after the clip: truncation is floor.
        x_int, y_int = ops.floor(x), ops.floor(y)
        targets[f"{name}_heatmap"] = _draw_gaussians(
            x_int, y_int, radius, (2 * radius + 1) / divisor, valid, labels, (height, width), num_classes
        )
        offset = ops.stack([x - x_int, y - y_int], axis=-1) * valid_f[..., None]
        indices = ops.cast(y_int * width + x_int, "int32") * ops.cast(valid, "int32")
        targets[f"{name}_offset"] = ops.pad(offset, ((0, 0), (0, pad), (0, 0)))
        targets[f"{name}_indices"] = ops.pad(indices, ((0, 0), (0, pad)))
    targets["mask"] = ops.pad(valid_f, ((0, 0), (0, pad)))
    return targets


def _draw_gaussians(x_int, y_int, radius, sigma, valid, labels, output_size, num_classes):
    """Per-object Gaussians (separable, cut to `|d| <= r`), combined by maximum per (image, class)."""
    height, width = output_size
    dy = ops.arange(height, dtype="float32")[None, None, :] - y_int[..., None]
    dx = ops.arange(width, dtype="float32")[None, None, :] - x_int[..., None]
    two_sigma_squared = 2 * ops.square(sigma[..., None])
    gauss_y = ops.where(ops.abs(dy) <= radius[..., None], ops.exp(-ops.square(dy) / two_sigma_squared), 0.0)
    gauss_x = ops.where(ops.abs(dx) <= radius[..., None], ops.exp(-ops.square(dx) / two_sigma_squared), 0.0)
    gauss_y = gauss_y * ops.cast(valid, "float32")[..., None]
    maps = ops.reshape(gauss_y[..., :, None] * gauss_x[..., None, :], (-1, height * width))
    batch = ops.shape(x_int)[0]
    image_index = ops.arange(batch, dtype="int32")[:, None]
    # Invalid objects go to one extra segment that is dropped.
    segment = ops.where(valid, image_index * num_classes + labels, batch * num_classes)
    heatmap = ops.segment_max(maps, ops.reshape(segment, (-1,)), num_segments=batch * num_classes + 1)[:-1]
    heatmap = ops.maximum(heatmap, 0.0)  # empty segments: no object, zero heat
    heatmap = ops.reshape(heatmap, (batch, num_classes, height, width))
    return ops.transpose(heatmap, (0, 2, 3, 1))
