"""Keypoint-Triplets CenterNet (Duan et al. 2019): an object is a pair of corners and a centre keypoint."""

import keras
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution

from keras_centernet.backbones.hourglass import HourglassBackbone
from keras_centernet.layers.corner_pooling import CascadeCornerPooling
from keras_centernet.layers.corner_pooling import CenterPooling
from keras_centernet.layers.decoder import apply_score_threshold
from keras_centernet.layers.prediction_head import HEATMAP_PRIOR_BIAS
from keras_centernet.layers.prediction_head import PredictionHead
from keras_centernet.layers.preprocessing import ImageNormalization
from keras_centernet.layers.triplet_decoder import OFFICIAL_AE_THRESHOLD
from keras_centernet.layers.triplet_decoder import OFFICIAL_NUM_CANDIDATES
from keras_centernet.layers.triplet_decoder import OFFICIAL_TOP_K
from keras_centernet.layers.triplet_decoder import decode_triplets
from keras_centernet.losses.embedding import OFFSET_WEIGHT
from keras_centernet.losses.embedding import PULL_WEIGHT
from keras_centernet.losses.embedding import PUSH_WEIGHT
from keras_centernet.losses.embedding import embedding_losses
from keras_centernet.losses.embedding import keypoint_offset_loss
from keras_centernet.losses.focal import CLAMP_GRADIENTS
from keras_centernet.losses.focal import focal_loss
from keras_centernet.models.centernet import build_by_symbolic_pass
from keras_centernet.ops.kernel_gradients import RowMajorKernelGradients
from keras_centernet.targets.corners import KEYPOINTS
from keras_centernet.targets.corners import render_triplet_targets

# The pooling module each head reads, and its output channels (per class or fixed).
HEADS = (
    ("top_left_heatmap", "top_left", None),
    ("top_left_embedding", "top_left", 1),
    ("top_left_offset", "top_left", 2),
    ("bottom_right_heatmap", "bottom_right", None),
    ("bottom_right_embedding", "bottom_right", 1),
    ("bottom_right_offset", "bottom_right", 2),
    ("center_heatmap", "center", None),
    ("center_offset", "center", 2),
)

PRESETS = {
    "triplets_hourglass52": {
        "num_stacks": 1,
        "description": "CenterNet-52 of Keypoint Triplets (one-stack Hourglass-52); 41.6 COCO AP single-scale in the paper.",
    },
    "triplets_hourglass104": {
        "num_stacks": 2,
        "description": "CenterNet-104 of Keypoint Triplets (two-stack Hourglass-104); 44.9 COCO AP single-scale in the paper.",
    },
}


@keras.saving.register_keras_serializable(package="keras_centernet")
class CenterNetTriplets(RowMajorKernelGradients, keras.Model):
    """Keypoint-Triplets CenterNet: corner pairs checked by a centre keypoint.

    Each hourglass stack's stride-4 map goes through three pooling modules:
    cascade corner pooling for the top-left and bottom-right corners and
    centre pooling. Heads (3x3 conv with bias -> ReLU -> 1x1, the official
    `make_kp_layer`) read them: per corner a class heatmap (logits, bias
    -2.19), a 1-d embedding and a sub-pixel offset; for the centre a class
    heatmap and an offset.

    Training (`model.fit` on `(images, {"boxes", "labels"})`, targets
    rendered in the step by `render_triplet_targets`): the focal loss of the
    three heatmaps (summed), the embedding pull and push losses (weights
    0.1, 0.1) and the smooth-L1 offset losses of the three keypoints
    (weight 1), each summed over stacks and divided by their number, as the
    official `AELoss`; parts logged as `heatmap_loss`, `pull_loss`,
    `push_loss`, `offset_loss`.

    Prediction (`model.predict`): `decode_triplets` on the last stack,
    DESIGN.md's dict `{"boxes", "scores", "labels", "num_detections"}` in
    input pixels.

    Args:
        backbone: `keras_centernet.backbones.HourglassBackbone` (or any
            `keras.Model` returning one stride-4 map per stack, with int
            attributes `num_stacks` and `output_channels`).
        num_classes: int. Defaults to 80.
        head_channels: int. Hidden channels of the heads. Defaults to 256
            (the official `curr_dim`).
        pool_channels: int. Channels inside the pooling modules. Defaults
            to 128.
        max_objects: int. Target slots per image. Defaults to 128.
        max_detections: int. Defaults to 100.
        top_k: int. Keypoints of each type in decoding. Defaults to 70.
        ae_threshold: float. Largest embedding distance of a pair.
            Defaults to 0.5.
        num_candidates: int. Pairs kept before the centre check. Defaults
            to 1000.
        use_soft_nms: bool. Soft-NMS in decoding. Defaults to True.
        heatmap_loss_weight, pull_loss_weight, push_loss_weight,
            offset_loss_weight: floats. Defaults to 1, 0.1, 0.1, 1.
        bounding_box_format: str. Defaults to `"xyxy"`.
        size_divisor: int. Defaults to 128 (the hourglass' stride).
        score_threshold: float. `predict` blanks detections scoring at most
            this. Defaults to 0.0 (which also blanks rejected pairs, -1).
        flip_test: bool. `predict` also decodes the mirrored images and
            joins their pairs and centres (the official test). Defaults to
            False.
        focal_clamp_gradient: `"official"` or `"straight_through"`.
        augmentation: `keras_centernet.layers.BatchAugmentation` or `None`.
            The official training augmentation inside the step, on batches
            of fixed canvases (`augment_on="accelerator"` readers), as
            `CenterNet`'s. Defaults to `None`.

    Example:

    >>> model = CenterNetTriplets.from_preset("triplets_hourglass52", num_classes=20)
    >>> raw = model(np.zeros((1, 128, 128, 3), "float32"))
    >>> tuple(raw["top_left_heatmap"].shape)
    (1, 32, 32, 20)

    Reference:
        Duan et al., "CenterNet: Keypoint Triplets for Object Detection",
        ICCV 2019; Law and Deng, "CornerNet", ECCV 2018.
    """

    def __init__(
        self,
        backbone,
        num_classes=80,
        head_channels=256,
        pool_channels=128,
        max_objects=128,
        max_detections=100,
        top_k=OFFICIAL_TOP_K,
        ae_threshold=OFFICIAL_AE_THRESHOLD,
        num_candidates=OFFICIAL_NUM_CANDIDATES,
        use_soft_nms=True,
        heatmap_loss_weight=1.0,
        pull_loss_weight=PULL_WEIGHT,
        push_loss_weight=PUSH_WEIGHT,
        offset_loss_weight=OFFSET_WEIGHT,
        bounding_box_format="xyxy",
        size_divisor=128,
        score_threshold=0.0,
        flip_test=False,
        focal_clamp_gradient="official",
        augmentation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("num_classes", num_classes), ("head_channels", head_channels), ("pool_channels", pool_channels),
            ("max_objects", max_objects), ("max_detections", max_detections), ("top_k", top_k),
            ("num_candidates", num_candidates),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; received {value!r}.")
        if focal_clamp_gradient not in CLAMP_GRADIENTS:
            raise ValueError(
                f"`focal_clamp_gradient` must be one of {CLAMP_GRADIENTS}; received {focal_clamp_gradient!r}."
            )
        channels = getattr(backbone, "output_channels", None)
        if not isinstance(channels, int):
            raise ValueError("`backbone` must have an int `output_channels` (e.g. a `HourglassBackbone`).")
        num_stacks = getattr(backbone, "num_stacks", 1)

        # === Layers ===
        self.preprocessor = ImageNormalization(size_divisor=size_divisor, dtype=self.dtype_policy, name="preprocessor")
        self.backbone = backbone
        self.pool_layers = []
        self.head_layers = []
        for stack in range(num_stacks):
            suffix = "" if num_stacks == 1 else f"_{stack}"
            self.pool_layers += [
                CascadeCornerPooling("top_left", channels, pool_channels, dtype=self.dtype_policy,
                                     name=f"top_left_pool{suffix}"),
                CascadeCornerPooling("bottom_right", channels, pool_channels, dtype=self.dtype_policy,
                                     name=f"bottom_right_pool{suffix}"),
                CenterPooling(channels, pool_channels, dtype=self.dtype_policy, name=f"center_pool{suffix}"),
            ]
            for name, _, out in HEADS:
                self.head_layers.append(
                    PredictionHead(
                        num_classes if out is None else out,
                        head_channels=head_channels,
                        bias_init=HEATMAP_PRIOR_BIAS if out is None else 0.0,
                        dtype=self.dtype_policy,
                        name=f"{name}{suffix}",
                    )
                )

        # === Config ===
        self.num_classes = num_classes
        self.head_channels = head_channels
        self.pool_channels = pool_channels
        self.num_stacks = num_stacks
        self.max_objects = max_objects
        self.max_detections = max_detections
        self.top_k = top_k
        self.ae_threshold = float(ae_threshold)
        self.num_candidates = num_candidates
        self.use_soft_nms = bool(use_soft_nms)
        self.heatmap_loss_weight = heatmap_loss_weight
        self.pull_loss_weight = pull_loss_weight
        self.push_loss_weight = push_loss_weight
        self.offset_loss_weight = offset_loss_weight
        self.bounding_box_format = bounding_box_format
        self.size_divisor = size_divisor
        self.score_threshold = float(score_threshold)
        self.flip_test = bool(flip_test)
        self.focal_clamp_gradient = focal_clamp_gradient
        # A layer (its seed generator is model state); see `call`.
        self.augmentation = augmentation

        # === Loss parts, reported as metrics ===
        self.heatmap_loss_tracker = keras.metrics.Mean(name="heatmap_loss")
        self.pull_loss_tracker = keras.metrics.Mean(name="pull_loss")
        self.push_loss_tracker = keras.metrics.Mean(name="push_loss")
        self.offset_loss_tracker = keras.metrics.Mean(name="offset_loss")

        self.build((None, None, None, 3))

    def build(self, input_shape):
        build_by_symbolic_pass(self, input_shape)

    def forward_stacks(self, images, training=None, all_stacks=False):
        """Raw head outputs of every stack (or only the last), as a list of dicts."""
        maps = self.backbone(self.preprocessor(images), training=training)
        if not isinstance(maps, (list, tuple)):
            maps = [maps]
        if len(maps) != self.num_stacks:
            raise ValueError(f"The backbone gave {len(maps)} stride-4 maps for {self.num_stacks} stacks.")
        stacks = range(self.num_stacks) if all_stacks else [self.num_stacks - 1]
        outputs = []
        for s in stacks:
            pools = self.pool_layers[3 * s:3 * s + 3]
            pooled = {key: pool(maps[s], training=training) for key, pool in zip(KEYPOINTS, pools)}
            heads = self.head_layers[len(HEADS) * s:len(HEADS) * (s + 1)]
            outputs.append({name: head(pooled[key]) for (name, key, _), head in zip(HEADS, heads)})
        return outputs

    def call(self, images, training=None):
        augmented = None
        if training and self.augmentation is not None:
            # `CenterNet`'s contract: the heads see the augmented images and
            # the outputs carry them, with their maps, for `compute_loss`.
            augmented = self.augmentation.augment_batch(images)
            images = augmented["images"]
        stacks = self.forward_stacks(images, training=training, all_stacks=bool(training))
        outputs = dict(stacks[-1])
        if training and self.num_stacks > 1:
            outputs["intermediate"] = stacks[:-1]
        if augmented is not None:
            outputs["augmentation"] = augmented
        return outputs

    # === Training ===

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The official `AELoss`; targets are rendered here from `y`'s boxes and labels."""
        if sample_weight is not None:
            raise ValueError("CenterNetTriplets does not take `sample_weight`.")
        if not isinstance(y, dict) or "boxes" not in y or "labels" not in y:
            raise ValueError(
                "CenterNetTriplets trains on `(images, {'boxes': (B, M, 4), 'labels': (B, M)})`; "
                f"received targets {type(y).__name__}."
            )
        if y_pred is None:
            y_pred = self(x, training=training)
        augmented = y_pred.get("augmentation")
        if augmented is not None:
            # `y`'s boxes are on the canvas `x`: map them as `call` mapped the images.
            y = self.augmentation.augment_targets(
                y, augmented["matrix"], ops.shape(x), bounding_box_format=self.bounding_box_format
            )
            x = augmented["images"]
        targets = self.render_targets(x, y, y_pred["top_left_heatmap"])
        stacks = list(y_pred.get("intermediate", [])) + [y_pred]
        heatmap_loss = pull_loss = push_loss = offset_loss = 0.0
        for outputs in stacks:
            for key in KEYPOINTS:
                heatmap_loss += focal_loss(
                    targets[f"{key}_heatmap"], outputs[f"{key}_heatmap"], clamp_gradient=self.focal_clamp_gradient
                )
                offset_loss += keypoint_offset_loss(
                    outputs[f"{key}_offset"], targets[f"{key}_indices"], targets["mask"], targets[f"{key}_offset"]
                )
            pull, push = embedding_losses(
                outputs["top_left_embedding"], outputs["bottom_right_embedding"],
                targets["top_left_indices"], targets["bottom_right_indices"], targets["mask"],
            )
            pull_loss += pull
            push_loss += push
        heatmap_loss /= len(stacks)
        pull_loss /= len(stacks)
        push_loss /= len(stacks)
        offset_loss /= len(stacks)
        self.heatmap_loss_tracker.update_state(heatmap_loss)
        self.pull_loss_tracker.update_state(pull_loss)
        self.push_loss_tracker.update_state(push_loss)
        self.offset_loss_tracker.update_state(offset_loss)
        total = (
            self.heatmap_loss_weight * heatmap_loss
            + self.pull_loss_weight * pull_loss
            + self.push_loss_weight * push_loss
            + self.offset_loss_weight * offset_loss
        )
        total = scale_loss_for_distribution(total)
        for extra in self.losses:
            total = total + ops.cast(self._aggregate_additional_loss(extra), total.dtype)
        return total

    def render_targets(self, images, y, heatmap):
        """Training targets of a batch on the output grid of `heatmap` (see `render_triplet_targets`)."""
        height, width = heatmap.shape[1], heatmap.shape[2]
        if height is None or width is None:
            raise ValueError(
                f"Training needs static image sizes; the heatmap has shape {heatmap.shape}."
            )
        boxes = ops.cast(ops.convert_to_tensor(y["boxes"]), "float32")
        if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"`boxes` must have shape (B, M, 4); received {boxes.shape}.")
        if self.bounding_box_format != "xyxy":
            boxes = keras.utils.bounding_boxes.convert_format(
                boxes, source=self.bounding_box_format, target="xyxy",
                height=images.shape[1], width=images.shape[2],
            )
        return render_triplet_targets(
            boxes, y["labels"], (height, width), self.num_classes,
            stride=images.shape[2] / width, max_objects=self.max_objects,
        )

    # === Prediction ===

    def predict_step(self, *args):
        if len(args) == 2:
            # The JAX trainer's stateless signature: (state, data) -> (outputs, state).
            (trainable_variables, non_trainable_variables), data = args
            mapping = list(zip(self.trainable_variables, trainable_variables))
            mapping += list(zip(self.non_trainable_variables, non_trainable_variables))
            with keras.StatelessScope(state_mapping=mapping):
                outputs = self.detect(keras.utils.unpack_x_y_sample_weight(data)[0])
            return outputs, non_trainable_variables
        return self.detect(keras.utils.unpack_x_y_sample_weight(args[0])[0])

    def detect(self, images):
        """DESIGN.md's detections of a batch: `boxes` `xyxy` in input pixels, `scores`, `labels`, `num_detections`."""
        images = ops.cast(ops.convert_to_tensor(images), "float32")
        flipped = None
        if self.flip_test:
            # One batch of 2B: the images, then their mirrors.
            both = self(ops.concatenate([images, ops.flip(images, axis=2)], axis=0), training=False)
            batch = ops.shape(images)[0]
            raw = {name: value[:batch] for name, value in both.items()}
            flipped = {name: value[batch:] for name, value in both.items()}
        else:
            raw = self(images, training=False)
        detections = decode_triplets(
            raw, flipped_outputs=flipped, max_detections=self.max_detections, top_k=self.top_k, ae_threshold=self.ae_threshold,
            num_candidates=self.num_candidates, stride=images.shape[2] / raw["top_left_heatmap"].shape[2],
            use_soft_nms=self.use_soft_nms,
        )
        return apply_score_threshold(detections, self.score_threshold)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes,
                "head_channels": self.head_channels,
                "pool_channels": self.pool_channels,
                "max_objects": self.max_objects,
                "max_detections": self.max_detections,
                "top_k": self.top_k,
                "ae_threshold": self.ae_threshold,
                "num_candidates": self.num_candidates,
                "use_soft_nms": self.use_soft_nms,
                "heatmap_loss_weight": self.heatmap_loss_weight,
                "pull_loss_weight": self.pull_loss_weight,
                "push_loss_weight": self.push_loss_weight,
                "offset_loss_weight": self.offset_loss_weight,
                "bounding_box_format": self.bounding_box_format,
                "size_divisor": self.size_divisor,
                "score_threshold": self.score_threshold,
                "flip_test": self.flip_test,
                "focal_clamp_gradient": self.focal_clamp_gradient,
                "augmentation": None if self.augmentation is None
                else keras.saving.serialize_keras_object(self.augmentation),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("augmentation") is not None:
            config["augmentation"] = keras.saving.deserialize_keras_object(config["augmentation"])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, num_classes=80, **kwargs):
        """Builds Keypoint-Triplets CenterNet-52 or -104 (random weights).

        Args:
            preset: `"triplets_hourglass52"` or `"triplets_hourglass104"`.
            num_classes: int. Defaults to 80.
            **kwargs: other `CenterNetTriplets` arguments.

        Example:

        >>> model = CenterNetTriplets.from_preset("triplets_hourglass104", num_classes=80)
        """
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; available presets: {sorted(PRESETS)}.")
        model = cls(HourglassBackbone(num_stacks=PRESETS[preset]["num_stacks"]), num_classes=num_classes, **kwargs)
        model.preset = preset
        return model
