"""From CenterNet3D's output maps to 3D boxes (the official `ddd_decode` and `ddd_post_process`)."""

import math

import keras
from keras import ops

from keras_centernet.layers.decoder import _peaks
from keras_centernet.losses.regression import gather_at_indices
from keras_centernet.targets.ddd import BIN_CENTERS

# The official detector's default calibration (KITTI's P2, original image pixels),
# used when an image comes without its own.
KITTI_DEFAULT_CALIBRATION = (
    (707.0493, 0.0, 604.0814, 45.75831),
    (0.0, 707.0493, 180.5066, -0.3454157),
    (0.0, 0.0, 1.0, 0.004981016),
)
# The official `peak_thresh` of the 3D detector.
DDD_SCORE_THRESHOLD = 0.2


def _wrap_angle(angle):
    """Angles moved into `[-pi, pi]` by one turn, as the official `alpha2rot_y`."""
    angle = ops.where(angle > math.pi, angle - 2 * math.pi, angle)
    return ops.where(angle < -math.pi, angle + 2 * math.pi, angle)


def _check_calibration(calibration):
    calibration = ops.convert_to_tensor(calibration, "float32")
    if tuple(calibration.shape[-2:]) != (3, 4):
        raise ValueError(
            f"`calibration` must be projection matrices (..., 3, 4); received shape {calibration.shape}."
        )
    return calibration


def alpha_from_bins(rotation):
    """The observation angle from the 8 rotation channels (the official `get_alpha`).

    The bin whose second logit is larger (`rotation[..., 1] > rotation[...,
    5]` picks bin 0) gives `alpha = atan2(sin, cos) + its centre` (-pi/2 for
    bin 0, +pi/2 for bin 1).

    Args:
        rotation: float tensor `(..., 8)`: bin 0 logits (2), sin, cos, bin 1
            logits (2), sin, cos.

    Returns:
        float32 tensor `(...)`, radians.

    Example:

    >>> float(alpha_from_bins(np.array([0, 1, 1, 0, 0, 0, 0, 1.0])))  # bin 0, residual pi/2
    0.0
    """
    rotation = ops.cast(ops.convert_to_tensor(rotation), "float32")
    if rotation.shape[-1] != 8:
        raise ValueError(f"`rotation` must have 8 channels; received shape {rotation.shape}.")
    first = ops.arctan2(rotation[..., 2], rotation[..., 3]) + BIN_CENTERS[0]
    second = ops.arctan2(rotation[..., 6], rotation[..., 7]) + BIN_CENTERS[1]
    return ops.where(rotation[..., 1] > rotation[..., 5], first, second)


def unproject_to_3d(points, depth, calibration):
    """Camera coordinates of image points at a depth (the official `unproject_2d_to_3d`).

    With `P` the 3x4 projection: `z = depth - P[2, 3]`, `x = (u * depth -
    P[0, 3] - P[0, 2] * z) / P[0, 0]`, `y = (v * depth - P[1, 3] - P[1, 2]
    * z) / P[1, 1]`: the inverse of `project_to_image` for KITTI's
    matrices (no skew, `P[2, :3] = (0, 0, 1)`).

    Args:
        points: float tensor `(..., 2)`, `(u, v)` in the calibration's pixels.
        depth: float tensor `(...)`.
        calibration: float tensor `(3, 4)`, or `(B, 3, 4)` with `points`
            `(B, ..., 2)`.

    Returns:
        float32 tensor `(..., 3)`, `(x, y, z)`.

    Example:

    >>> P = np.array([[700.0, 0, 600, 0], [0, 700, 180, 0], [0, 0, 1, 0]])
    >>> unproject_to_3d(np.array([600.0, 180.0]), np.array(10.0), P).tolist()
    [0.0, 0.0, 10.0]
    """
    points = ops.cast(ops.convert_to_tensor(points), "float32")
    depth = ops.cast(ops.convert_to_tensor(depth), "float32")
    calibration = _check_calibration(calibration)
    if len(calibration.shape) == 3:
        extra = len(points.shape) - 2
        calibration = ops.reshape(calibration, (-1,) + (1,) * extra + (3, 4))
    p = lambda i, j: calibration[..., i, j]  # noqa: E731
    z = depth - p(2, 3)
    x = (points[..., 0] * depth - p(0, 3) - p(0, 2) * z) / p(0, 0)
    y = (points[..., 1] * depth - p(1, 3) - p(1, 2) * z) / p(1, 1)
    return ops.stack([x, y, z], axis=-1)


def alpha_to_rotation_y(alpha, u, calibration):
    """`rotation_y = alpha + atan2(u - cx, fx)`, in `[-pi, pi]` (the official `alpha2rot_y`).

    Args:
        alpha: float tensor `(...)`, the observation angle.
        u: float tensor `(...)`, the object centre's image column.
        calibration: float tensor `(3, 4)` or `(B, 3, 4)` with `alpha` `(B, ...)`.

    Returns:
        float32 tensor `(...)`.

    Example:

    >>> P = np.array([[700.0, 0, 600, 0], [0, 700, 180, 0], [0, 0, 1, 0]])
    >>> round(float(alpha_to_rotation_y(np.array(0.1), np.array(1300.0), P)), 4)  # 0.1 + pi/4
    0.8854
    """
    return _wrap_angle(ops.cast(ops.convert_to_tensor(alpha), "float32") + _ray_angle(u, calibration, alpha))


def rotation_y_to_alpha(rotation_y, u, calibration):
    """`alpha = rotation_y - atan2(u - cx, fx)`, in `[-pi, pi]` (the official `rot_y2alpha`).

    Args:
        rotation_y: float tensor `(...)`.
        u: float tensor `(...)`, the object centre's image column.
        calibration: float tensor `(3, 4)` or `(B, 3, 4)`.

    Returns:
        float32 tensor `(...)`.

    Example:

    >>> P = np.array([[700.0, 0, 600, 0], [0, 700, 180, 0], [0, 0, 1, 0]])
    >>> float(rotation_y_to_alpha(np.array(0.0), np.array(600.0), P))
    0.0
    """
    rotation_y = ops.cast(ops.convert_to_tensor(rotation_y), "float32")
    return _wrap_angle(rotation_y - _ray_angle(u, calibration, rotation_y))


def _ray_angle(u, calibration, like):
    u = ops.cast(ops.convert_to_tensor(u), "float32")
    calibration = _check_calibration(calibration)
    if len(calibration.shape) == 3:
        extra = len(ops.convert_to_tensor(like).shape) - 1
        calibration = ops.reshape(calibration, (-1,) + (1,) * extra + (3, 4))
    across = u - calibration[..., 0, 2]
    # Both arguments of one shape: TFLite's ATAN2 does not broadcast.
    return ops.arctan2(across, calibration[..., 0, 0] + ops.zeros_like(across))


def box_3d_corners(dimensions, location, rotation_y):
    """The 8 corners of 3D boxes in camera coordinates (the official `compute_box_3d`).

    The box stands on its `location` (KITTI's bottom centre): corners 0-3
    are the bottom face, 4-7 the top (`y - h`); `x` runs along the length,
    `z` along the width, rotated by `rotation_y` about the camera's y axis.

    Args:
        dimensions: float tensor `(..., 3)`, `(h, w, l)`.
        location: float tensor `(..., 3)`, `(x, y, z)`.
        rotation_y: float tensor `(...)`.

    Returns:
        float32 tensor `(..., 8, 3)`.

    Example:

    >>> corners = box_3d_corners(np.array([1.5, 1.6, 4.0]), np.array([0.0, 1.0, 10.0]), np.array(0.0))
    >>> corners[0].tolist()  # (l/2, 0, w/2) from the location
    [2.0, 1.0, 10.8]
    """
    dimensions = ops.cast(ops.convert_to_tensor(dimensions), "float32")
    location = ops.cast(ops.convert_to_tensor(location), "float32")
    rotation_y = ops.cast(ops.convert_to_tensor(rotation_y), "float32")
    h, w, l = (dimensions[..., i : i + 1] for i in range(3))
    signs_x = ops.convert_to_tensor([1, 1, -1, -1, 1, 1, -1, -1], "float32")
    signs_z = ops.convert_to_tensor([1, -1, -1, 1, 1, -1, -1, 1], "float32")
    on_top = ops.convert_to_tensor([0, 0, 0, 0, 1, 1, 1, 1], "float32")
    x = signs_x * l / 2
    y = -on_top * h
    z = signs_z * w / 2
    c = ops.cos(rotation_y)[..., None]
    s = ops.sin(rotation_y)[..., None]
    corners = ops.stack([c * x + s * z, y, -s * x + c * z], axis=-1)
    return corners + location[..., None, :]


def project_to_image(points, calibration):
    """Pixels of camera-frame points through a 3x4 projection (the official `project_to_image`).

    Args:
        points: float tensor `(..., 3)`.
        calibration: float tensor `(3, 4)`, or `(B, 3, 4)` with `points`
            `(B, ..., 3)`.

    Returns:
        float32 tensor `(..., 2)`, `(u, v)`.

    Example:

    >>> P = np.array([[700.0, 0, 600, 0], [0, 700, 180, 0], [0, 0, 1, 0]])
    >>> project_to_image(np.array([1.0, 0.0, 10.0]), P).tolist()
    [670.0, 180.0]
    """
    points = ops.cast(ops.convert_to_tensor(points), "float32")
    calibration = _check_calibration(calibration)
    if len(calibration.shape) == 3:
        extra = len(points.shape) - 2
        calibration = ops.reshape(calibration, (-1,) + (1,) * extra + (3, 4))
    homogeneous = ops.concatenate([points, ops.ones_like(points[..., :1])], axis=-1)
    projected = ops.sum(calibration * homogeneous[..., None, :], axis=-1)  # (..., 3)
    return projected[..., :2] / projected[..., 2:]


def decode_3d_detections(
    heatmap, rotation, depth, dimensions, size, offset, calibration, max_detections=100,
    stride=4, heatmap_is_probability=False,
):
    """3D boxes from CenterNet3D's maps, as the official `ddd_decode` and `ddd_post_process`.

    1. Peaks and top-K as `decode_detections` (3x3 max-pool peaks, the top
       `K` per class then overall); the centre is the peak pixel plus its
       `offset`, times `stride` to input pixels.
    2. At each peak: `alpha` from the rotation bins (`alpha_from_bins`), the
       depth, the dimensions `(h, w, l)` and the 2D box `centre -+ size / 2`.
    3. The location is the centre unprojected at its depth
       (`unproject_to_3d`), moved down by `h / 2` (KITTI's locations are
       bottom centres); `rotation_y = alpha + atan2(u - cx, fx)`
       (`alpha_to_rotation_y`).

    Args:
        heatmap: float tensor `(B, H, W, C)`: logits, or probabilities when
            `heatmap_is_probability`.
        rotation: float tensor `(B, H, W, 8)`.
        depth: float tensor `(B, H, W, 1)`, metres (already transformed
            from the head's `1 / sigmoid(x) - 1`, as `CenterNet3D` outputs).
        dimensions: float tensor `(B, H, W, 3)`, `(h, w, l)` metres.
        size: float tensor `(B, H, W, 2)`, `(w, h)` in map pixels.
        offset: float tensor `(B, H, W, 2)`.
        calibration: float tensor `(B, 3, 4)` or `(3, 4)`: the camera's
            projection for the *input* image's pixels.
        max_detections: int. `K`. Defaults to 100.
        stride: number. Input pixels per map pixel. Defaults to 4.
        heatmap_is_probability: bool. Defaults to False.

    Returns:
        dict, `(B, K, ...)`, sorted by score: `boxes` float32 `(B, K, 4)`
        `xyxy` input pixels, `scores`, `labels` int32, `alpha`, `depth`,
        `dimensions` `(B, K, 3)`, `locations` `(B, K, 3)`, `rotation_y`,
        `centers` `(B, K, 2)` (the projected centre, input pixels).

    Example:

    >>> raw = model(images)
    >>> objects = decode_3d_detections(raw["heatmap"], raw["rotation"], raw["depth"],
    ...                                raw["dimensions"], raw["size"], raw["offset"], P)

    Reference:
        Zhou et al., "Objects as Points", 2019, section 4 (3D detection);
        the official `ddd_decode` (`src/lib/models/decode.py`) and
        `ddd_post_process` (`src/lib/utils/post_process.py`).
    """
    if not isinstance(max_detections, int) or max_detections < 1:
        raise ValueError(f"`max_detections` must be a positive int; received {max_detections!r}.")
    calibration = _check_calibration(calibration)
    for name, value, channels in (
        ("rotation", rotation, 8), ("depth", depth, 1), ("dimensions", dimensions, 3),
        ("size", size, 2), ("offset", offset, 2),
    ):
        if value.shape[-1] != channels:
            raise ValueError(f"`{name}` must have {channels} channels; received shape {value.shape}.")
    scores, labels, indices, xs, ys = _peaks(heatmap, max_detections, heatmap_is_probability)
    gather = lambda m: ops.cast(gather_at_indices(m, indices), "float32")  # noqa: E731
    offsets = gather(offset)
    sizes = gather(size)
    center_x = (xs + offsets[..., 0]) * stride
    center_y = (ys + offsets[..., 1]) * stride
    half_w = sizes[..., 0] * stride / 2
    half_h = sizes[..., 1] * stride / 2
    boxes = ops.stack([center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], axis=-1)
    alpha = alpha_from_bins(gather(rotation))
    depths = gather(depth)[..., 0]
    dims = gather(dimensions)
    centers = ops.stack([center_x, center_y], axis=-1)
    locations = unproject_to_3d(centers, depths, calibration)
    locations = locations + ops.stack(
        [ops.zeros_like(depths), dims[..., 0] / 2, ops.zeros_like(depths)], axis=-1
    )
    rotation_y = alpha_to_rotation_y(alpha, center_x, calibration)
    return {
        "boxes": boxes,
        "scores": scores,
        "labels": labels,
        "alpha": alpha,
        "depth": depths,
        "dimensions": dims,
        "locations": locations,
        "rotation_y": rotation_y,
        "centers": centers,
    }


def apply_3d_score_threshold(objects, score_threshold):
    """Counts objects scoring above `score_threshold` and blanks the rest (label -1, values 0).

    Args:
        objects: dict as `decode_3d_detections` returns (sorted by score).
        score_threshold: float.

    Returns:
        dict: the same keys, blanked below the threshold, and
        `num_detections` int32 `(B,)`.

    Example:

    >>> objects = apply_3d_score_threshold(decode_3d_detections(...), 0.2)
    """
    keep = objects["scores"] > score_threshold
    result = {}
    for name, value in objects.items():
        if name == "labels":
            result[name] = ops.where(keep, value, -1)
        else:
            mask = ops.reshape(keep, tuple(ops.shape(keep)) + (1,) * (len(value.shape) - 2))
            result[name] = ops.where(mask, value, ops.zeros_like(value))
    result["num_detections"] = ops.sum(ops.cast(keep, "int32"), axis=-1)
    return result


@keras.saving.register_keras_serializable(package="keras_centernet")
class CenterNet3DDecoder(keras.layers.Layer):
    """Decodes CenterNet3D's raw outputs and the camera calibration into 3D boxes.

    Args:
        max_detections: int. Objects per image, `K`. Defaults to 100.
        score_threshold: float. Objects scoring at most this are blanked.
            Defaults to 0.2 (the official `peak_thresh`).
        stride: number. Input pixels per map pixel. Defaults to 4.

    Call arguments:
        raw: dict with `heatmap` (logits), `rotation`, `depth` (metres),
            `dimensions`, `size`, `offset`.
        calibration: float tensor `(B, 3, 4)` or `(3, 4)` in input pixels.

    Returns:
        dict as `decode_3d_detections` and `num_detections` `(B,)`.

    Example:

    >>> decoder = CenterNet3DDecoder(max_detections=50)
    >>> objects = decoder(model(images), calibration)
    """

    def __init__(self, max_detections=100, score_threshold=DDD_SCORE_THRESHOLD, stride=4, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(max_detections, int) or max_detections < 1:
            raise ValueError(f"`max_detections` must be a positive int; received {max_detections!r}.")
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.stride = stride

    def call(self, raw, calibration):
        objects = decode_3d_detections(
            raw["heatmap"], raw["rotation"], raw["depth"], raw["dimensions"], raw["size"],
            raw["offset"], calibration, max_detections=self.max_detections, stride=self.stride,
        )
        return apply_3d_score_threshold(objects, self.score_threshold)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_detections": self.max_detections,
                "score_threshold": self.score_threshold,
                "stride": self.stride,
            }
        )
        return config
