"""CenterNet for multi-person pose: people as points, their joints regressed and snapped (official `multi_pose`)."""

import keras
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution

from keras_centernet.layers.pose_decoder import JOINT_THRESHOLD
from keras_centernet.layers.pose_decoder import apply_pose_score_threshold
from keras_centernet.layers.pose_decoder import decode_poses
from keras_centernet.layers.prediction_head import HEATMAP_PRIOR_BIAS
from keras_centernet.losses.keypoints import reg_weighted_l1_loss
from keras_centernet.losses.regression import reg_l1_loss
from keras_centernet.models.centernet import CenterNet
from keras_centernet.targets.keypoints import COCO_FLIP_PAIRS
from keras_centernet.targets.keypoints import flip_keypoints
from keras_centernet.targets.keypoints import flip_permutation
from keras_centernet.targets.keypoints import render_pose_targets

# The paper's pose models (COCO test-dev keypoint AP, Table 5 of the paper).
POSE_PRESETS = {
    "dla34": "DLA-34 with IDA-up, 58.9 keypoint AP (flip test) in the paper.",
    "hourglass104": "Hourglass-104, two stacks, 64.0 keypoint AP (flip test) in the paper.",
}


def pose_heads(num_joints):
    """The heads of the official `multi_pose` task, with this package's names."""
    return {
        "heatmap": 1,
        "size": 2,
        "offset": 2,
        "keypoints": 2 * num_joints,
        "keypoint_heatmap": num_joints,
        "keypoint_offset": 2,
    }


@keras.saving.register_keras_serializable(package="keras_centernet")
class CenterNetPose(CenterNet):
    """CenterNet for multi-person pose estimation (the official `multi_pose` task).

    A person is its box centre: the heads are the person `heatmap` (one
    class), its `size` and `offset`, the `keypoints` map (2J channels: each
    joint's `(dx, dy)` from the centre pixel), a `keypoint_heatmap` per joint
    and one `keypoint_offset` (the joints' sub-pixel offsets). Both heatmap
    heads start at the prior bias -2.19, as officially.

    Training: `model.fit` on batches `(images, {"boxes": (B, M, 4),
    "labels": (B, M), "keypoints": (B, M, J, 3)})`, joints `(x, y,
    visibility)` in input pixels (COCO's visibility: 0 unlabelled, 1
    occluded, 2 visible). The targets are rendered in the step
    (`render_pose_targets`); the loss is the official trainer's: focal loss
    on both heatmaps (weights 1), size L1 (0.1), offset L1 (1), the joints'
    L1 with their visibility mask (1, `RegWeightedL1Loss`) and the joints'
    sub-pixel offset L1 (1), averaged over hourglass stacks, each part a
    metric. With `flip_probability`, each image is mirrored in the step
    (its joints mirrored and left/right swapped by `flip_pairs`), as the
    official loader's flip.

    Prediction: `model.predict(images)` returns `{"boxes", "scores",
    "labels", "num_detections"}` as `CenterNet` and `"keypoints"` `(B, K, J,
    2)` in input pixels (`decode_poses`: regressed joints snapped to the
    nearest joint-heatmap peak inside the box). `flip_test=True` averages
    with the mirror as the official detector (joint maps swapped left/right,
    x offsets negated). Multi-scale testing is not offered.

    Args:
        backbone: `keras.Model`. See `CenterNet`.
        neck: `keras.layers.Layer` or `None`. See `CenterNet`.
        num_joints: int. Defaults to 17 (COCO).
        flip_pairs: pairs of left/right joints. Defaults to `COCO_FLIP_PAIRS`.
        max_objects: int. People per image in training targets. Defaults
            to 32 (official).
        keypoint_loss_weight: float. The official `hp_weight`. Defaults to 1.
        keypoint_heatmap_loss_weight: float. `hm_hp_weight`. Defaults to 1.
        keypoint_offset_loss_weight: float. Officially `off_weight` also
            weighs the joints' sub-pixel offsets. Defaults to 1.
        joint_threshold: float. Joint-heatmap peaks at most this are not
            snapped to. Defaults to 0.1 (official).
        flip_probability: float. Probability of mirroring each training
            image. Defaults to 0.0 (the official trainer's 0.5 is an
            augmentation choice of the caller).
        **kwargs: other `CenterNet` arguments (`head_channels`,
            `max_detections`, `radius`, `heatmap_loss_weight`,
            `size_loss_weight`, `offset_loss_weight`, `score_threshold`,
            `flip_test`, ...). `num_classes` is 1 and `heads` are fixed.

    Example:

    >>> model = CenterNetPose.from_preset("dla34")
    >>> raw = model(np.zeros((1, 128, 128, 3), "float32"))
    >>> tuple(raw["keypoints"].shape)
    (1, 32, 32, 34)

    Reference:
        Zhou, Wang and Krähenbühl, "Objects as Points", arXiv:1904.07850,
        section 4 and the official `multi_pose` task.
    """

    def __init__(
        self,
        backbone,
        neck=None,
        num_joints=17,
        flip_pairs=COCO_FLIP_PAIRS,
        max_objects=32,
        keypoint_loss_weight=1.0,
        keypoint_heatmap_loss_weight=1.0,
        keypoint_offset_loss_weight=1.0,
        joint_threshold=JOINT_THRESHOLD,
        flip_probability=0.0,
        **kwargs,
    ):
        if not isinstance(num_joints, int) or num_joints < 1:
            raise ValueError(f"`num_joints` must be a positive int; received {num_joints!r}.")
        flip_pairs = tuple(tuple(int(v) for v in pair) for pair in flip_pairs)
        flip_permutation(num_joints, flip_pairs)  # validates
        heads = pose_heads(num_joints)
        if kwargs.pop("num_classes", 1) != 1:
            raise ValueError("`CenterNetPose` has one class (person): `num_classes` must be 1.")
        given_heads = kwargs.pop("heads", None)
        if given_heads is not None and dict(given_heads) != heads:
            raise ValueError(
                f"`CenterNetPose` heads are fixed by `num_joints`: {heads}; received {given_heads}."
            )
        if kwargs.get("augmentation") is not None:
            raise ValueError(
                "`CenterNetPose` does not take `augmentation` (it maps boxes, not joints); "
                "use `flip_probability`."
            )
        if not 0.0 <= float(flip_probability) <= 1.0:
            raise ValueError(f"`flip_probability` must be in [0, 1]; received {flip_probability!r}.")
        # Checked before the network is built, so that a wrong argument fails at once.
        _check_single_scale(kwargs.get("test_scales", (1.0,)))
        super().__init__(backbone, neck=neck, num_classes=1, heads=heads, max_objects=max_objects, **kwargs)

        # === Layers ===
        for name, head in self._named_heads():
            if name == "keypoint_heatmap":
                # The official init gives every heatmap head ('hm' in its name) the prior bias.
                head.output_conv.bias.assign(ops.full((num_joints,), HEATMAP_PRIOR_BIAS))

        # === Config ===
        self.num_joints = num_joints
        self.flip_pairs = flip_pairs
        self.keypoint_loss_weight = keypoint_loss_weight
        self.keypoint_heatmap_loss_weight = keypoint_heatmap_loss_weight
        self.keypoint_offset_loss_weight = keypoint_offset_loss_weight
        self.joint_threshold = float(joint_threshold)
        self.flip_probability = float(flip_probability)

    def build(self, input_shape):
        if self.built:
            return
        # State must exist before the base class builds (and locks) the model,
        # which its `__init__` does.
        self.seed_generator = keras.random.SeedGenerator(0, name="flip_seed")
        # === Loss parts, reported as metrics ===
        self.keypoint_loss_tracker = keras.metrics.Mean(name="keypoint_loss")
        self.keypoint_heatmap_loss_tracker = keras.metrics.Mean(name="keypoint_heatmap_loss")
        self.keypoint_offset_loss_tracker = keras.metrics.Mean(name="keypoint_offset_loss")
        super().build(input_shape)

    def _named_heads(self):
        for stack in range(self.num_stacks):
            yield from self.stack_heads(stack).items()

    def call(self, images, training=None):
        flipped = None
        if training and getattr(self, "flip_probability", 0.0) > 0:
            draws = keras.random.uniform((ops.shape(images)[0],), seed=self.seed_generator)
            flipped = draws < self.flip_probability
            images = ops.where(flipped[:, None, None, None], ops.flip(images, axis=2), images)
        outputs = super().call(images, training=training)
        if flipped is not None:
            # `compute_loss` mirrors the targets of these images the same way.
            outputs["flipped"] = flipped
        return outputs

    # === Training ===

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The official `multi_pose` loss; targets are rendered here from `y`."""
        if sample_weight is not None:
            raise ValueError("CenterNetPose does not take `sample_weight`.")
        if not isinstance(y, dict) or not {"boxes", "labels", "keypoints"} <= set(y):
            raise ValueError(
                "CenterNetPose trains on `(images, {'boxes': (B, M, 4), 'labels': (B, M), "
                "'keypoints': (B, M, J, 3)})`; received targets " + type(y).__name__
                + (f" with keys {sorted(y)}" if isinstance(y, dict) else "") + "."
            )
        if y_pred is None:
            y_pred = self(x, training=training)
        targets = self.render_targets(x, y, y_pred["heatmap"], flipped=y_pred.get("flipped"))
        stacks = list(y_pred.get("intermediate", [])) + [y_pred]
        parts = dict.fromkeys(
            ("heatmap", "size", "offset", "keypoint", "keypoint_heatmap", "keypoint_offset"), 0.0
        )
        for outputs in stacks:
            parts["heatmap"] += self.heatmap_loss_fn(targets["heatmap"], outputs["heatmap"])
            parts["size"] += reg_l1_loss(outputs["size"], targets["indices"], targets["mask"], targets["size"])
            parts["offset"] += reg_l1_loss(
                outputs["offset"], targets["indices"], targets["mask"], targets["offset"]
            )
            parts["keypoint"] += reg_weighted_l1_loss(
                outputs["keypoints"], targets["indices"], targets["keypoint_mask"], targets["keypoints"]
            )
            parts["keypoint_heatmap"] += self.heatmap_loss_fn(
                targets["keypoint_heatmap"], outputs["keypoint_heatmap"]
            )
            parts["keypoint_offset"] += reg_l1_loss(
                outputs["keypoint_offset"], targets["keypoint_indices"],
                targets["keypoint_offset_mask"], targets["keypoint_offset"],
            )
        parts = {name: value / len(stacks) for name, value in parts.items()}
        weights = {
            "heatmap": self.heatmap_loss_weight,
            "size": self.size_loss_weight,
            "offset": self.offset_loss_weight,
            "keypoint": self.keypoint_loss_weight,
            "keypoint_heatmap": self.keypoint_heatmap_loss_weight,
            "keypoint_offset": self.keypoint_offset_loss_weight,
        }
        trackers = {
            "heatmap": self.heatmap_loss_tracker,
            "size": self.size_loss_tracker,
            "offset": self.offset_loss_tracker,
            "keypoint": self.keypoint_loss_tracker,
            "keypoint_heatmap": self.keypoint_heatmap_loss_tracker,
            "keypoint_offset": self.keypoint_offset_loss_tracker,
        }
        total = 0.0
        for name, value in parts.items():
            trackers[name].update_state(value)
            total = total + weights[name] * value
        total = scale_loss_for_distribution(total)
        for extra in self.losses:
            total = total + ops.cast(self._aggregate_additional_loss(extra), total.dtype)
        return total

    def render_targets(self, images, y, heatmap, flipped=None):
        """Pose targets of a batch on the output grid of `heatmap` (see `render_pose_targets`)."""
        height, width = heatmap.shape[1], heatmap.shape[2]
        image_height, image_width = images.shape[1], images.shape[2]
        if None in (height, width, image_height, image_width):
            raise ValueError(
                "Training needs static image sizes (batches of one fixed height and width); "
                f"the images have shape {images.shape}."
            )
        boxes = ops.cast(ops.convert_to_tensor(y["boxes"]), "float32")
        keypoints = ops.cast(ops.convert_to_tensor(y["keypoints"]), "float32")
        if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"`boxes` must have shape (B, M, 4); received {boxes.shape}.")
        if len(keypoints.shape) != 4 or tuple(keypoints.shape[2:]) != (self.num_joints, 3):
            raise ValueError(
                f"`keypoints` must have shape (B, M, {self.num_joints}, 3); received {keypoints.shape}."
            )
        if self.bounding_box_format != "xyxy":
            boxes = keras.utils.bounding_boxes.convert_format(
                boxes, source=self.bounding_box_format, target="xyxy",
                height=image_height, width=image_width,
            )
        if flipped is not None:
            mirrored = ops.stack(
                [image_width - boxes[..., 2], boxes[..., 1], image_width - boxes[..., 0], boxes[..., 3]],
                axis=-1,
            )
            boxes = ops.where(flipped[:, None, None], mirrored, boxes)
            keypoints = ops.where(
                flipped[:, None, None, None],
                flip_keypoints(keypoints, float(image_width), self.flip_pairs),
                keypoints,
            )
        stride_x = image_width / width
        stride_y = image_height / height
        boxes = boxes / ops.convert_to_tensor([stride_x, stride_y, stride_x, stride_y], "float32")
        keypoints = keypoints / ops.convert_to_tensor([stride_x, stride_y, 1.0], "float32")
        return render_pose_targets(
            boxes, y["labels"], keypoints, (height, width),
            max_objects=self.max_objects, radius=self.radius,
        )

    # === Prediction ===

    def configure_prediction(self, score_threshold=None, flip_test=None, test_scales=None, raw_maps=None):
        """Changes what `predict` does; see `CenterNet.configure_prediction` (one scale only)."""
        if test_scales is not None:
            _check_single_scale(test_scales)
        super().configure_prediction(score_threshold, flip_test, test_scales, raw_maps)

    def detect(self, images):
        """People of a batch: `boxes`, `scores`, `labels`, `keypoints` `(B, K, J, 2)`, `num_detections`."""
        images = ops.cast(ops.convert_to_tensor(images), "float32")
        maps = self._pose_maps(images)
        stride = images.shape[2] / maps["heatmap"].shape[2] if images.shape[2] else 4
        people = decode_poses(
            maps["heatmap"], maps["size"], maps["offset"], maps["keypoints"],
            maps["keypoint_heatmap"], maps["keypoint_offset"],
            max_detections=self.max_detections, stride=stride,
            heatmap_is_probability=True, joint_threshold=self.joint_threshold,
        )
        return apply_pose_score_threshold(people, self.score_threshold)

    def _pose_maps(self, images):
        """Probability heatmaps and regression maps of the last stack; averaged over a flip when asked."""
        if not self.flip_test:
            raw = self(images, training=False)
            maps = {name: ops.cast(value, "float32") for name, value in raw.items()}
            maps["heatmap"] = ops.sigmoid(maps["heatmap"])
            maps["keypoint_heatmap"] = ops.sigmoid(maps["keypoint_heatmap"])
            return maps
        raw = self(ops.concatenate([images, ops.flip(images, axis=2)], axis=0), training=False)

        def halves(value):
            value = ops.cast(value, "float32")
            value = ops.reshape(value, (2, -1) + tuple(value.shape[1:]))
            return value[0], ops.flip(value[1], axis=2)

        permutation = flip_permutation(self.num_joints, self.flip_pairs)
        heat, heat_flipped = halves(ops.sigmoid(ops.cast(raw["heatmap"], "float32")))
        size, size_flipped = halves(raw["size"])
        joint_heat, joint_heat_flipped = halves(ops.sigmoid(ops.cast(raw["keypoint_heatmap"], "float32")))
        joint_heat_flipped = ops.take(joint_heat_flipped, permutation, axis=-1)
        joints, joints_flipped = halves(raw["keypoints"])
        # The official `flip_lr_off`: joints swapped left/right, x offsets negated.
        shape = tuple(joints_flipped.shape[:-1])
        joints_flipped = ops.reshape(joints_flipped, (-1,) + shape[1:] + (self.num_joints, 2))
        joints_flipped = ops.take(joints_flipped, permutation, axis=-2)
        joints_flipped = joints_flipped * ops.convert_to_tensor([-1.0, 1.0])
        joints_flipped = ops.reshape(joints_flipped, (-1,) + shape[1:] + (2 * self.num_joints,))
        offset, _ = halves(raw["offset"])
        joint_offset, _ = halves(raw["keypoint_offset"])
        return {
            "heatmap": (heat + heat_flipped) / 2,
            "size": (size + size_flipped) / 2,
            "offset": offset,
            "keypoints": (joints + joints_flipped) / 2,
            "keypoint_heatmap": (joint_heat + joint_heat_flipped) / 2,
            "keypoint_offset": joint_offset,
        }

    def get_config(self):
        config = super().get_config()
        for name in ("num_classes", "heads", "augmentation"):
            config.pop(name, None)
        config.update(
            {
                "num_joints": self.num_joints,
                "flip_pairs": [list(pair) for pair in self.flip_pairs],
                "keypoint_loss_weight": self.keypoint_loss_weight,
                "keypoint_heatmap_loss_weight": self.keypoint_heatmap_loss_weight,
                "keypoint_offset_loss_weight": self.keypoint_offset_loss_weight,
                "joint_threshold": self.joint_threshold,
                "flip_probability": self.flip_probability,
            }
        )
        return config

    @classmethod
    def from_preset(cls, preset, head_channels=None, **kwargs):
        """Builds a pose model by name (random weights).

        Args:
            preset: str. The paper's pose models are `"dla34"` and
                `"hourglass104"` (`POSE_PRESETS`); every `CenterNet` preset
                (`keras_centernet.models.list_presets()`) builds.
            head_channels: int. Defaults to the preset's (256 for DLA and
                hourglass, the official `head_conv`).
            **kwargs: other `CenterNetPose` arguments.

        Example:

        >>> model = CenterNetPose.from_preset("hourglass104", flip_probability=0.5)
        """
        from keras_centernet.models.presets import get_preset

        spec = get_preset(preset)
        config = {
            "backbone": spec["backbone"](),
            "neck": spec["neck"]() if spec.get("neck") else None,
            "head_channels": head_channels or spec["head_channels"],
            "size_divisor": spec["size_divisor"],
        }
        config.update(kwargs)
        model = cls(**config)
        model.preset = preset
        return model


def _check_single_scale(test_scales):
    scales = tuple(float(s) for s in (test_scales if isinstance(test_scales, (list, tuple)) else [test_scales]))
    if scales != (1.0,):
        raise ValueError(
            f"`CenterNetPose` predicts at one scale: `test_scales` must be (1.0,); received {test_scales!r}."
        )
