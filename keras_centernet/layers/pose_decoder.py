"""From CenterNetPose's output maps to people and their joints (the official `multi_pose_decode`)."""

import keras
from keras import ops

from keras_centernet.layers.decoder import CenterNetDecoder
from keras_centernet.layers.decoder import _peaks
from keras_centernet.layers.decoder import apply_score_threshold
from keras_centernet.losses.regression import gather_at_indices

# The official `multi_pose_decode`: joint-heatmap peaks at most this are ignored.
JOINT_THRESHOLD = 0.1
# ... and a peak farther than this fraction of the box's longer side is not snapped to.
SNAP_DISTANCE = 0.3


def _local_maxima(heat):
    """Exact local maxima of a 3x3 max pool (the official `_nms`), others zeroed."""
    pooled = ops.max_pool(heat, pool_size=3, strides=1, padding="same")
    return ops.where(ops.equal(pooled, heat), heat, 0.0)


def decode_poses(
    heatmap,
    size,
    offset,
    keypoints,
    keypoint_heatmap=None,
    keypoint_offset=None,
    max_detections=100,
    stride=4,
    heatmap_is_probability=False,
    joint_threshold=JOINT_THRESHOLD,
):
    """People (boxes, scores) and their joints, as the official `multi_pose_decode`.

    1. Person peaks and boxes as `decode_detections` (3x3 max-pool peaks,
       the top `K` per class then overall, centre = peak + offset).
    2. Regressed joints: the peak *pixel* (without its offset, as
       officially) plus the joint offsets of the `keypoints` map there.
    3. With `keypoint_heatmap`: the top `K` peaks of each joint's heatmap
       (3x3 max-pool peaks; pixel + `keypoint_offset`, or + 0.5 without it);
       peaks scoring at most `joint_threshold` are moved far away. Each
       regressed joint is snapped to the nearest peak of its joint, unless
       that peak lies outside the person's box, scores below
       `joint_threshold`, or is farther than 0.3 times the box's longer side.

    Args:
        heatmap: float tensor `(B, H, W, C)` person heatmap: logits, or
            probabilities when `heatmap_is_probability`.
        size: float tensor `(B, H, W, 2)`, `(w, h)` in map pixels.
        offset: float tensor `(B, H, W, 2)`.
        keypoints: float tensor `(B, H, W, 2J)`, `(dx, dy)` of each joint from
            the centre pixel.
        keypoint_heatmap: float tensor `(B, H, W, J)` or `None`: logits, or
            probabilities when `heatmap_is_probability`. Defaults to `None`
            (regressed joints only).
        keypoint_offset: float tensor `(B, H, W, 2)` or `None`.
        max_detections: int. `K`. Defaults to 100.
        stride: number. Input pixels per map pixel. Defaults to 4.
        heatmap_is_probability: bool. Defaults to False.
        joint_threshold: float. Defaults to 0.1 (official).

    Returns:
        dict: `boxes` float32 `(B, K, 4)` `xyxy` and `keypoints` float32
        `(B, K, J, 2)` `(x, y)`, both in input pixels; `scores` `(B, K)`
        (descending) and `labels` int32 `(B, K)`.

    Example:

    >>> raw = model(images)
    >>> people = decode_poses(raw["heatmap"], raw["size"], raw["offset"], raw["keypoints"],
    ...                       raw["keypoint_heatmap"], raw["keypoint_offset"])

    Reference:
        Zhou et al., "Objects as Points", 2019, section 4 (human pose); the
        official `multi_pose_decode` in `src/lib/models/decode.py`.
    """
    if not isinstance(max_detections, int) or max_detections < 1:
        raise ValueError(f"`max_detections` must be a positive int; received {max_detections!r}.")
    batch = ops.shape(heatmap)[0]
    height, width, classes = heatmap.shape[1], heatmap.shape[2], heatmap.shape[3]
    if height is None or width is None or classes is None:
        raise ValueError(f"Pose decoding needs static map sizes; received heatmap {heatmap.shape}.")
    num_joints = keypoints.shape[-1] // 2
    if keypoints.shape[-1] != 2 * num_joints or num_joints < 1:
        raise ValueError(f"`keypoints` must have 2J channels; received {keypoints.shape}.")
    k = min(max_detections, height * width)

    # Person peaks as `decode_detections` (the official `_nms` and `_topk`).
    scores, labels, indices, xs, ys = _peaks(heatmap, max_detections, heatmap_is_probability)

    joints = ops.cast(gather_at_indices(keypoints, indices), "float32")
    joints = ops.reshape(joints, (batch, -1, num_joints, 2))
    joints = joints + ops.stack([xs, ys], axis=-1)[:, :, None, :]  # (B, K, J, 2)

    offsets = ops.cast(gather_at_indices(offset, indices), "float32")
    sizes = ops.cast(gather_at_indices(size, indices), "float32")
    center_x = xs + offsets[..., 0]
    center_y = ys + offsets[..., 1]
    left = center_x - sizes[..., 0] / 2
    top = center_y - sizes[..., 1] / 2
    right = center_x + sizes[..., 0] / 2
    bottom = center_y + sizes[..., 1] / 2
    boxes = ops.stack([left, top, right, bottom], axis=-1)

    if keypoint_heatmap is not None:
        joint_heat = ops.cast(keypoint_heatmap, "float32")
        joint_heat = joint_heat if heatmap_is_probability else ops.sigmoid(joint_heat)
        joint_heat = _local_maxima(joint_heat)
        by_joint = ops.reshape(ops.transpose(joint_heat, (0, 3, 1, 2)), (batch, num_joints, -1))
        peak_scores, peak_indices = ops.top_k(by_joint, k)  # (B, J, Kp)
        peak_x = ops.cast(peak_indices % width, "float32")
        peak_y = ops.cast(peak_indices // width, "float32")
        if keypoint_offset is not None:
            sub_pixel = gather_at_indices(keypoint_offset, ops.reshape(peak_indices, (batch, -1)))
            sub_pixel = ops.reshape(ops.cast(sub_pixel, "float32"), (batch, num_joints, k, 2))
            peak_x = peak_x + sub_pixel[..., 0]
            peak_y = peak_y + sub_pixel[..., 1]
        else:
            peak_x = peak_x + 0.5
            peak_y = peak_y + 0.5
        strong = peak_scores > joint_threshold
        peak_scores = ops.where(strong, peak_scores, -1.0)
        peak_x = ops.where(strong, peak_x, -10000.0)
        peak_y = ops.where(strong, peak_y, -10000.0)

        # Distances of each person's joint to every peak of that joint: (B, J, K, Kp).
        regressed = ops.transpose(joints, (0, 2, 1, 3))  # (B, J, K, 2)
        distance = ops.sqrt(
            ops.square(regressed[..., 0:1] - peak_x[:, :, None, :])
            + ops.square(regressed[..., 1:2] - peak_y[:, :, None, :])
        )
        min_distance = ops.min(distance, axis=-1)
        # The first peak at the smallest distance: `argmin`, written with a
        # min over indices because Keras' TensorFlow `argmin` of floats tests
        # the sign bit of zeros with a bitwise AND, which TFLite has no
        # built-in kernel for (the distances here are never -0).
        candidates = ops.arange(distance.shape[-1], dtype="int32")
        nearest = ops.min(
            ops.where(distance <= min_distance[..., None], candidates, distance.shape[-1]), axis=-1
        )  # (B, J, K)
        snap_score = ops.take_along_axis(peak_scores, nearest, axis=-1)
        snap_x = ops.take_along_axis(peak_x, nearest, axis=-1)
        snap_y = ops.take_along_axis(peak_y, nearest, axis=-1)
        l, t, r, b = (v[:, None, :] for v in (left, top, right, bottom))
        keep_regressed = (
            (snap_x < l) | (snap_x > r) | (snap_y < t) | (snap_y > b)
            | (snap_score < joint_threshold)
            | (min_distance > ops.maximum(b - t, r - l) * SNAP_DISTANCE)
        )
        snapped = ops.stack([snap_x, snap_y], axis=-1)
        regressed = ops.where(keep_regressed[..., None], regressed, snapped)
        joints = ops.transpose(regressed, (0, 2, 1, 3))

    return {
        "boxes": boxes * stride,
        "scores": scores,
        "labels": labels,
        "keypoints": joints * stride,
    }


def apply_pose_score_threshold(people, score_threshold):
    """`apply_score_threshold` for people: blanked people also get zero joints."""
    return apply_score_threshold(people, score_threshold)


@keras.saving.register_keras_serializable(package="keras_centernet")
class CenterNetPoseDecoder(CenterNetDecoder):
    """Decodes CenterNetPose's raw outputs into people and their joints.

    Args:
        max_detections: int. People per image, `K`. Defaults to 100.
        score_threshold: float. People scoring at most this are blanked
            (box and joints 0, score 0, label -1). Defaults to 0.0.
        stride: number. Input pixels per map pixel. Defaults to 4.
        joint_threshold: float. See `decode_poses`. Defaults to 0.1.

    Call arguments:
        raw: dict with `heatmap`, `size`, `offset`, `keypoints` and,
            optionally, `keypoint_heatmap` (logits) and `keypoint_offset`.

    Returns:
        dict: `boxes` `(B, K, 4)`, `scores` `(B, K)`, `labels` `(B, K)`,
        `keypoints` `(B, K, J, 2)` in input pixels, `num_detections` `(B,)`.

    Example:

    >>> decoder = CenterNetPoseDecoder(max_detections=20, score_threshold=0.3)
    >>> people = decoder(model(images))
    """

    def __init__(self, max_detections=100, score_threshold=0.0, stride=4,
                 joint_threshold=JOINT_THRESHOLD, **kwargs):
        super().__init__(max_detections=max_detections, score_threshold=score_threshold,
                         stride=stride, **kwargs)
        self.joint_threshold = joint_threshold

    def call(self, raw):
        people = decode_poses(
            raw["heatmap"], raw["size"], raw["offset"], raw["keypoints"],
            raw.get("keypoint_heatmap"), raw.get("keypoint_offset"),
            max_detections=self.max_detections, stride=self.stride,
            joint_threshold=self.joint_threshold,
        )
        return apply_pose_score_threshold(people, self.score_threshold)

    def get_config(self):
        config = super().get_config()
        config["joint_threshold"] = self.joint_threshold
        return config
