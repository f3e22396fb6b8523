"""Multi-person pose targets (the official `multi_pose` task), rendered in the training step.

Vectorised over the batch, the people and the joints with `keras.ops` (no
loop, no NumPy), as `keras_centernet.targets.render`, so that they are made on
the accelerator inside the compiled step on every backend.
"""

from keras import ops

from keras_centernet.targets.gaussian import RADIUS_METHODS
from keras_centernet.targets.gaussian import gaussian_radius
from keras_centernet.targets.gaussian import ttfnet_radii
from keras_centernet.targets.render import render_targets

# The 17 COCO keypoints, in COCO's order.
COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# Left/right joints that a horizontal flip swaps (the official `flip_idx`).
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
# The limbs drawn between joints (the official `coco_hp.py` edges, 0-based).
COCO_SKELETON = (
    (0, 1), (0, 2), (1, 3), (2, 4), (4, 6), (3, 5), (5, 6), (5, 7), (7, 9),
    (6, 8), (8, 10), (6, 12), (5, 11), (11, 12), (12, 14), (14, 16), (11, 13), (13, 15),
)


def flip_permutation(num_joints=17, flip_pairs=COCO_FLIP_PAIRS):
    """Joint order after a horizontal flip: joint `j` of the mirror is joint `perm[j]`.

    Args:
        num_joints: int. Defaults to 17.
        flip_pairs: pairs of joint indices swapped by a flip. Defaults to
            `COCO_FLIP_PAIRS`.

    Returns:
        list of ints, a permutation of `range(num_joints)`.

    Example:

    >>> flip_permutation()[:5]
    [0, 2, 1, 4, 3]
    """
    permutation = list(range(num_joints))
    seen = set()
    for pair in flip_pairs:
        if len(pair) != 2:
            raise ValueError(f"`flip_pairs` must hold pairs of joints; received {pair!r}.")
        a, b = (int(v) for v in pair)
        if not (0 <= a < num_joints and 0 <= b < num_joints) or a == b or {a, b} & seen:
            raise ValueError(
                f"`flip_pairs` must pair distinct joints in [0, {num_joints}) once each; "
                f"received {flip_pairs!r}."
            )
        seen |= {a, b}
        permutation[a], permutation[b] = b, a
    return permutation


def flip_keypoints(keypoints, width, flip_pairs=COCO_FLIP_PAIRS):
    """Keypoints of horizontally mirrored images: `x -> width - x`, left and right swapped.

    Pixel coordinates are continuous (an image of width `W` spans `[0, W]`),
    as the boxes of `keras_centernet.data`, so the mirror of `x` is `W - x`.
    Unlabelled joints (visibility 0) keep their coordinates' zero.

    Args:
        keypoints: float tensor `(..., J, 3)`: `x, y, visibility`.
        width: number. The image width in the keypoints' pixels.
        flip_pairs: pairs of joints to swap. Defaults to `COCO_FLIP_PAIRS`.

    Returns:
        float tensor of the same shape.

    Example:

    >>> flip_keypoints(np.array([[[10.0, 5.0, 2.0]] * 17]), 64)[0, 1]  # left eye <- right eye
    """
    keypoints = ops.convert_to_tensor(keypoints, "float32")
    num_joints = keypoints.shape[-2]
    keypoints = ops.take(keypoints, flip_permutation(num_joints, flip_pairs), axis=-2)
    labelled = keypoints[..., 2] > 0
    x = ops.where(labelled, width - keypoints[..., 0], keypoints[..., 0])
    return ops.stack([x, keypoints[..., 1], keypoints[..., 2]], axis=-1)


def _gaussian_radii(boxes, output_size, radius):
    """The radii `(r_y, r_x)` (floats holding ints) that `render_targets` gives each box."""
    height, width = output_size
    boxes = ops.where(ops.all(ops.isfinite(boxes), axis=-1)[..., None], boxes, 0.0)
    x1 = ops.clip(boxes[..., 0], 0.0, width - 1.0)
    y1 = ops.clip(boxes[..., 1], 0.0, height - 1.0)
    x2 = ops.clip(boxes[..., 2], 0.0, width - 1.0)
    y2 = ops.clip(boxes[..., 3], 0.0, height - 1.0)
    box_h = y2 - y1
    box_w = x2 - x1
    if radius == "ttfnet":
        radius_y, radius_x = ttfnet_radii(box_h, box_w)
    else:
        r = gaussian_radius(ops.ceil(box_h), ops.ceil(box_w), method=radius)
        radius_y = radius_x = ops.floor(ops.maximum(r, 0.0))
    return ops.cast(radius_y, "float32"), ops.cast(radius_x, "float32")


def render_pose_targets(
    boxes, labels, keypoints, output_size, num_classes=1, max_objects=32, radius="official"
):
    """Targets of the official `multi_pose` task for a batch of people.

    The person part is `render_targets` (centre heatmap, size, offset,
    indices, mask), with one official rule added: a person without any
    labelled joint (the sum of its visibilities is 0) stays on the heatmap
    but leaves `mask` at 0 (no size or offset loss). Then, for every drawn
    person `k` and joint `j` with visibility > 0 that lies on the map
    (`0 <= x < W`, `0 <= y < H`):
    - `keypoints[k, 2j:2j+2]` = joint - the person's integer centre, with
      `keypoint_mask` 1 on both channels;
    - a Gaussian on channel `j` of `keypoint_heatmap` at the joint's pixel
      `int(joint)`, of the person's own radius (the official `hp_radius` is
      the box's Gaussian radius), people combined by maximum;
    - `keypoint_offset[k * J + j]` = joint - int(joint), its flat index
      `keypoint_indices[k * J + j]` = `y * W + x` and `keypoint_offset_mask` 1.
    Everything else is zero.

    Boxes and keypoints come in output-map pixels (the caller divides by
    the stride). Cost: per-joint maps `(B, M, J, H, W)` float32 are reduced by
    a maximum over people (71 MB transient at B=8, M=32, J=17, a 64x64 map).

    Args:
        boxes: float tensor `(B, M, 4)`, `xyxy` in output-map pixels.
        labels: int tensor `(B, M)`. 0 for people, -1 for padding.
        keypoints: float tensor `(B, M, J, 3)`: `x, y` in output-map pixels
            and the COCO visibility (0 unlabelled, 1 occluded, 2 visible).
        output_size: `(H, W)` of the output map (ints).
        num_classes: int. Heatmap channels. Defaults to 1 (person).
        max_objects: int. Person slots (the official `max_objs` of COCO
            keypoints is 32). Defaults to 32.
        radius: `"official"`, `"fixed"` or `"ttfnet"`, for both heatmaps.
            Defaults to `"official"`.

    Returns:
        dict: the keys of `render_targets` (`heatmap`, `size`, `offset`,
        `indices`, `mask`) and
        - `keypoints`: float32 `(B, max_objects, 2J)`, `(dx, dy)` per joint;
        - `keypoint_mask`: float32 `(B, max_objects, 2J)`;
        - `keypoint_heatmap`: float32 `(B, H, W, J)`;
        - `keypoint_offset`: float32 `(B, max_objects * J, 2)`;
        - `keypoint_indices`: int32 `(B, max_objects * J)`;
        - `keypoint_offset_mask`: float32 `(B, max_objects * J)`.

    Example:

    >>> boxes = np.array([[[2.0, 2.0, 12.0, 14.0]]], "float32")
    >>> joints = np.zeros((1, 1, 17, 3), "float32"); joints[0, 0, 0] = (7.5, 4.25, 2)
    >>> targets = render_pose_targets(boxes, np.array([[0]]), joints, (16, 16))
    >>> float(targets["keypoint_heatmap"][0, 4, 7, 0])
    1.0

    Reference:
        Zhou et al., "Objects as Points", 2019, section 4 (human pose); the
        official `src/lib/datasets/sample/multi_pose.py`.
    """
    if radius not in RADIUS_METHODS:
        raise ValueError(f"`radius` must be one of {RADIUS_METHODS}; received {radius!r}.")
    height, width = (int(v) for v in output_size)
    boxes = ops.convert_to_tensor(boxes, "float32")
    keypoints = ops.convert_to_tensor(keypoints, "float32")
    labels = ops.cast(ops.convert_to_tensor(labels), "int32")
    if len(keypoints.shape) != 4 or keypoints.shape[-1] != 3:
        raise ValueError(f"`keypoints` must have shape (B, M, J, 3); received {keypoints.shape}.")
    if tuple(keypoints.shape[1:2]) != tuple(boxes.shape[1:2]):
        raise ValueError(
            f"`keypoints` {keypoints.shape} and `boxes` {boxes.shape} must have the same M."
        )
    num_objects = boxes.shape[1]
    if num_objects is not None and num_objects > max_objects:
        boxes = boxes[:, :max_objects]
        labels = labels[:, :max_objects]
        keypoints = keypoints[:, :max_objects]
        num_objects = max_objects
    num_joints = keypoints.shape[2]

    targets = render_targets(
        boxes, labels, (height, width), num_classes, max_objects=max_objects, radius=radius
    )
    drawn = targets["mask"][:, :num_objects]  # (B, M): people on the heatmap
    indices = targets["indices"][:, :num_objects]
    center_x = ops.cast(indices % width, "float32")
    center_y = ops.cast(indices // width, "float32")

    finite = ops.all(ops.isfinite(keypoints), axis=-1)
    keypoints = ops.where(finite[..., None], keypoints, 0.0)
    visibility = keypoints[..., 2]
    # The official `num_kpts == 0` rule: on the heatmap, but no box regression.
    labelled_any = ops.cast(ops.sum(ops.where(visibility > 0, visibility, 0.0), axis=-1) > 0, "float32")
    targets["mask"] = targets["mask"] * ops.pad(
        labelled_any, ((0, 0), (0, max_objects - num_objects))
    )

    joint_x = keypoints[..., 0]
    joint_y = keypoints[..., 1]
    on_map = (
        finite & (visibility > 0)
        & (joint_x >= 0) & (joint_x < width) & (joint_y >= 0) & (joint_y < height)
    )
    joint_valid = on_map & (drawn[..., None] > 0)  # (B, M, J)
    joint_valid_f = ops.cast(joint_valid, "float32")
    joint_x_int = ops.floor(ops.where(joint_valid, joint_x, 0.0))
    joint_y_int = ops.floor(ops.where(joint_valid, joint_y, 0.0))

    from_center = ops.stack([joint_x - center_x[..., None], joint_y - center_y[..., None]], axis=-1)
    from_center = from_center * joint_valid_f[..., None]
    batch = ops.shape(boxes)[0]
    keypoint_targets = ops.reshape(from_center, (batch, num_objects, 2 * num_joints))
    keypoint_mask = ops.reshape(
        ops.repeat(joint_valid_f[..., None], 2, axis=-1), (batch, num_objects, 2 * num_joints)
    )
    sub_pixel = ops.stack([joint_x - joint_x_int, joint_y - joint_y_int], axis=-1)
    sub_pixel = sub_pixel * joint_valid_f[..., None]
    joint_indices = ops.cast(joint_y_int * width + joint_x_int, "int32") * ops.cast(joint_valid, "int32")

    # Keypoint heatmaps: each joint a Gaussian of its person's radius, cut at
    # the border, the maximum over people.
    radius_y, radius_x = _gaussian_radii(boxes, (height, width), radius)
    sigma_y = (2 * radius_y + 1) / 6
    sigma_x = (2 * radius_x + 1) / 6
    dy = ops.arange(height, dtype="float32") - joint_y_int[..., None]  # (B, M, J, H)
    dx = ops.arange(width, dtype="float32") - joint_x_int[..., None]  # (B, M, J, W)
    gauss_y = ops.where(
        ops.abs(dy) <= radius_y[..., None, None],
        ops.exp(-ops.square(dy) / (2 * ops.square(sigma_y[..., None, None]))),
        0.0,
    ) * joint_valid_f[..., None]
    gauss_x = ops.where(
        ops.abs(dx) <= radius_x[..., None, None],
        ops.exp(-ops.square(dx) / (2 * ops.square(sigma_x[..., None, None]))),
        0.0,
    )
    maps = gauss_y[..., :, None] * gauss_x[..., None, :]  # (B, M, J, H, W)
    keypoint_heatmap = ops.transpose(ops.max(maps, axis=1), (0, 2, 3, 1))

    pad = max_objects - num_objects
    if pad:
        keypoint_targets = ops.pad(keypoint_targets, ((0, 0), (0, pad), (0, 0)))
        keypoint_mask = ops.pad(keypoint_mask, ((0, 0), (0, pad), (0, 0)))
        sub_pixel = ops.pad(sub_pixel, ((0, 0), (0, pad), (0, 0), (0, 0)))
        joint_indices = ops.pad(joint_indices, ((0, 0), (0, pad), (0, 0)))
        joint_valid_f = ops.pad(joint_valid_f, ((0, 0), (0, pad), (0, 0)))
    targets.update(
        {
            "keypoints": keypoint_targets,
            "keypoint_mask": keypoint_mask,
            "keypoint_heatmap": keypoint_heatmap,
            "keypoint_offset": ops.reshape(sub_pixel, (batch, max_objects * num_joints, 2)),
            "keypoint_indices": ops.reshape(joint_indices, (batch, max_objects * num_joints)),
            "keypoint_offset_mask": ops.reshape(joint_valid_f, (batch, max_objects * num_joints)),
        }
    )
    return targets
