"""CenterNet for monocular 3D detection: objects as points with depth, size and orientation (official `ddd`)."""

import keras
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution

from keras_centernet.layers.ddd_decoder import DDD_SCORE_THRESHOLD
from keras_centernet.layers.ddd_decoder import KITTI_DEFAULT_CALIBRATION
from keras_centernet.layers.ddd_decoder import apply_3d_score_threshold
from keras_centernet.layers.ddd_decoder import decode_3d_detections
from keras_centernet.losses.focal import focal_loss
from keras_centernet.losses.regression import gather_at_indices
from keras_centernet.models.centernet import CenterNet
from keras_centernet.targets.ddd import render_ddd_targets

# The paper's 3D models (KITTI, Table 6 of the paper).
DDD_PRESETS = {
    "dla34": "DLA-34 with IDA-up, the paper's KITTI 3D model (head_conv 256).",
    "resnet18": "ResNet-18 with up-convolutions (head_conv 64), a light variant.",
}
# KITTI's classes in the official order (`kitti.py`: Pedestrian, Car, Cyclist).
KITTI_CLASS_NAMES = ("Pedestrian", "Car", "Cyclist")
# The official head that predicts depth gives `1 / sigmoid(x) - 1`; this keeps it finite.
DEPTH_EPSILON = 1e-6


def ddd_heads(num_classes):
    """The heads of the official `ddd` task, with this package's names.

    Official name -> ours: `hm` -> `heatmap`, `wh` -> `size`, `reg` ->
    `offset`, `dep` -> `depth`, `rot` -> `rotation`, `dim` -> `dimensions`.
    """
    return {
        "heatmap": num_classes,
        "size": 2,
        "offset": 2,
        "depth": 1,
        "rotation": 8,
        "dimensions": 3,
    }


def depth_from_logits(logits):
    """The official depth transform `1 / (sigmoid(x) + 1e-6) - 1`: metres from the head's output."""
    return 1.0 / (ops.sigmoid(logits) + DEPTH_EPSILON) - 1.0


def mean_l1_loss(prediction_map, indices, mask, target):
    """The official `L1Loss` of the `ddd` trainer: `mean(|pred * m - target * m|)` over every slot.

    Unlike `reg_l1_loss` (`RegL1Loss`), the mean is over all `B * M * C`
    entries, empty slots included, as officially.

    Args:
        prediction_map: float tensor `(B, H, W, C)`.
        indices: int tensor `(B, M)`.
        mask: float tensor `(B, M)`.
        target: float tensor `(B, M, C)`.

    Returns:
        Scalar float32 tensor.

    Example:

    >>> loss = mean_l1_loss(raw["depth"], targets["indices"], targets["mask"], targets["depth"])
    """
    prediction = ops.cast(gather_at_indices(prediction_map, indices), "float32")
    mask = ops.cast(mask, "float32")[..., None]
    return ops.mean(ops.abs(prediction * mask - ops.cast(target, "float32") * mask))


def _smooth_l1(difference):
    absolute = ops.abs(difference)
    return ops.where(absolute < 1.0, 0.5 * ops.square(difference), absolute - 0.5)


def bin_rotation_loss(rotation_map, indices, mask, bins, residuals):
    """The official `BinRotLoss` (`compute_rot_loss`): two bin classifications and sin/cos residuals.

    Per bin `j` (channels `4j..4j+3`: two logits, sin, cos): the cross
    entropy of the masked logits against the bin's on/off class, averaged
    over all `B * M` slots (empty slots have zero logits, a constant log 2,
    as officially); plus, over the slots whose bin is on, the mean smooth
    L1 of `sin` against `sin(residual)` and of `cos` against
    `cos(residual)` (zero when no slot has the bin on).

    Args:
        rotation_map: float tensor `(B, H, W, 8)`.
        indices: int tensor `(B, M)`.
        mask: float tensor `(B, M)`.
        bins: int tensor `(B, M, 2)`.
        residuals: float tensor `(B, M, 2)`.

    Returns:
        Scalar float32 tensor.

    Example:

    >>> loss = bin_rotation_loss(raw["rotation"], targets["indices"], targets["mask"],
    ...                          targets["rotation_bins"], targets["rotation_residuals"])
    """
    output = ops.cast(gather_at_indices(rotation_map, indices), "float32")
    mask = ops.cast(mask, "float32")[..., None]
    bins = ops.cast(bins, "int32")
    residuals = ops.cast(residuals, "float32")
    loss = 0.0
    for j in range(2):
        logits = output[..., 4 * j : 4 * j + 2] * mask
        chosen = ops.take_along_axis(logits, bins[..., j : j + 1], axis=-1)[..., 0]
        loss = loss + ops.mean(ops.logsumexp(logits, axis=-1) - chosen)
        on = ops.cast(bins[..., j], "float32")
        count = ops.maximum(ops.sum(on), 1.0)
        residual = residuals[..., j]
        loss = loss + ops.sum(on * _smooth_l1(output[..., 4 * j + 2] - ops.sin(residual))) / count
        loss = loss + ops.sum(on * _smooth_l1(output[..., 4 * j + 3] - ops.cos(residual))) / count
    return loss


@keras.saving.register_keras_serializable(package="keras_centernet")
class CenterNet3D(CenterNet):
    """CenterNet for monocular 3D object detection (the official `ddd` task).

    An object is the centre of its 2D box: the heads are the class
    `heatmap`, the 2D `size` and `offset`, the `depth` (one channel; the
    model outputs `1 / (sigmoid(x) + 1e-6) - 1` metres, as officially),
    the `rotation` (8 channels: the paper's two overlapping bins, each 2
    classification logits, then sin and cos of the residual) and the
    `dimensions` `(h, w, l)` in metres. Official names: `hm`, `wh`, `reg`,
    `dep`, `rot`, `dim`.

    Training: `model.fit` on batches `(images, {"boxes": (B, M, 4),
    "labels": (B, M), "depth": (B, M), "dimensions": (B, M, 3), "alpha":
    (B, M)})`: 2D boxes in input pixels (`bounding_box_format`), labels -1
    for padding, depth (KITTI's location `z`), dimensions `(h, w, l)` and
    the observation angle `alpha` (the official targets are made from
    `alpha`, not `rotation_y`). `kc.data.kitti` yields such batches (with
    more keys, which are ignored). The loss is the official `DddLoss`:
    focal loss on the heatmap (1), depth L1 (1), dimensions L1 (1), the bin
    rotation loss (1), size L1 (0.1) and offset L1 (1), the L1 losses being
    the official `L1Loss` (a mean over every slot, `mean_l1_loss`),
    averaged over hourglass stacks, each part a metric.

    Prediction: `model.predict(images)`, or `model.predict({"images":
    images, "calibration": P})` with `P` `(B, 3, 4)` the camera projection
    in input pixels (or a dataset whose targets carry `"calibration"`, as
    `kc.data.kitti`'s), returns `boxes`, `scores`, `labels`,
    `num_detections` as `CenterNet` and `alpha`, `depth`, `dimensions`,
    `locations` `(B, K, 3)`, `rotation_y` and `centers`
    (`decode_3d_detections`); objects scoring at most `score_threshold`
    (default 0.2, the official `peak_thresh`) are blanked. Without a
    calibration the model's `calibration` is used. Flip and multi-scale
    testing are not offered (the official 3D detector has neither).

    Args:
        backbone: `keras.Model`. See `CenterNet`.
        neck: `keras.layers.Layer` or `None`. See `CenterNet`.
        num_classes: int. Defaults to 3 (`KITTI_CLASS_NAMES`).
        max_objects: int. Objects per image in training targets. Defaults
            to 50 (the official KITTI `max_objs`).
        depth_loss_weight: float. The official `dep_weight`. Defaults to 1.
        dimensions_loss_weight: float. `dim_weight`. Defaults to 1.
        rotation_loss_weight: float. `rot_weight`. Defaults to 1.
        calibration: 3x4 nested list or None. The projection used when
            `predict` gets none. Defaults to the official detector's
            (`KITTI_DEFAULT_CALIBRATION`, for KITTI's original pixels).
        **kwargs: other `CenterNet` arguments (`head_channels`,
            `max_detections`, `radius`, `heatmap_loss_weight`,
            `size_loss_weight` (0.1), `offset_loss_weight` (1),
            `score_threshold`, ...). `heads` are fixed by `num_classes`.

    Example:

    >>> model = CenterNet3D.from_preset("dla34")
    >>> raw = model(np.zeros((1, 128, 128, 3), "float32"))
    >>> tuple(raw["rotation"].shape)
    (1, 32, 32, 8)

    Reference:
        Zhou, Wang and Krähenbühl, "Objects as Points", arXiv:1904.07850,
        section 4 (3D detection) and the official `ddd` task.
    """

    def __init__(
        self,
        backbone,
        neck=None,
        num_classes=3,
        max_objects=50,
        depth_loss_weight=1.0,
        dimensions_loss_weight=1.0,
        rotation_loss_weight=1.0,
        calibration=None,
        **kwargs,
    ):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int; received {num_classes!r}.")
        heads = ddd_heads(num_classes)
        given_heads = kwargs.pop("heads", None)
        if given_heads is not None and dict(given_heads) != heads:
            raise ValueError(
                f"`CenterNet3D` heads are fixed by `num_classes`: {heads}; received {given_heads}."
            )
        if kwargs.get("augmentation") is not None:
            raise ValueError("`CenterNet3D` does not take `augmentation` (it maps boxes, not 3D objects).")
        if kwargs.get("box_head", "size") != "size":
            raise ValueError("`CenterNet3D` regresses `size` and `offset`: `box_head` must be 'size'.")
        if kwargs.get("num_identities") is not None:
            raise ValueError("`CenterNet3D` does not take `num_identities`.")
        _check_prediction_options(kwargs.get("flip_test", False), kwargs.get("test_scales", (1.0,)))
        calibration = KITTI_DEFAULT_CALIBRATION if calibration is None else calibration
        calibration = [[float(v) for v in row] for row in calibration]
        if len(calibration) != 3 or any(len(row) != 4 for row in calibration):
            raise ValueError(f"`calibration` must be a 3x4 projection matrix; received {calibration!r}.")
        kwargs.setdefault("score_threshold", DDD_SCORE_THRESHOLD)
        super().__init__(
            backbone, neck=neck, num_classes=num_classes, heads=heads, max_objects=max_objects, **kwargs
        )

        # === Config ===
        self.depth_loss_weight = depth_loss_weight
        self.dimensions_loss_weight = dimensions_loss_weight
        self.rotation_loss_weight = rotation_loss_weight
        self.calibration = calibration

    def build(self, input_shape):
        if self.built:
            return
        # Trackers must exist before the base class builds (and locks) the model.
        self.depth_loss_tracker = keras.metrics.Mean(name="depth_loss")
        self.dimensions_loss_tracker = keras.metrics.Mean(name="dimensions_loss")
        self.rotation_loss_tracker = keras.metrics.Mean(name="rotation_loss")
        super().build(input_shape)

    def call(self, images, training=None):
        outputs = super().call(images, training=training)
        outputs["depth"] = depth_from_logits(outputs["depth"])
        if "intermediate" in outputs:
            outputs["intermediate"] = [
                {**stack, "depth": depth_from_logits(stack["depth"])} for stack in outputs["intermediate"]
            ]
        return outputs

    # === Training ===

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The official `ddd` loss; targets are rendered here from `y`."""
        if sample_weight is not None:
            raise ValueError("CenterNet3D does not take `sample_weight`.")
        required = {"boxes", "labels", "depth", "dimensions", "alpha"}
        if not isinstance(y, dict) or not required <= set(y):
            raise ValueError(
                "CenterNet3D trains on `(images, {'boxes': (B, M, 4), 'labels': (B, M), "
                "'depth': (B, M), 'dimensions': (B, M, 3), 'alpha': (B, M)})`; received targets "
                + type(y).__name__
                + (f" missing {sorted(required - set(y))}" if isinstance(y, dict) else "") + "."
            )
        if y_pred is None:
            y_pred = self(x, training=training)
        targets = self.render_targets(x, y, y_pred["heatmap"])
        stacks = list(y_pred.get("intermediate", [])) + [y_pred]
        parts = dict.fromkeys(("heatmap", "size", "offset", "depth", "dimensions", "rotation"), 0.0)
        indices, mask = targets["indices"], targets["mask"]
        for outputs in stacks:
            parts["heatmap"] += focal_loss(
                targets["heatmap"], outputs["heatmap"], clamp_gradient=self.focal_clamp_gradient
            )
            for name in ("size", "offset", "depth", "dimensions"):
                parts[name] += mean_l1_loss(outputs[name], indices, mask, targets[name])
            parts["rotation"] += bin_rotation_loss(
                outputs["rotation"], indices, mask,
                targets["rotation_bins"], targets["rotation_residuals"],
            )
        weights = {
            "heatmap": self.heatmap_loss_weight,
            "size": self.size_loss_weight,
            "offset": self.offset_loss_weight,
            "depth": self.depth_loss_weight,
            "dimensions": self.dimensions_loss_weight,
            "rotation": self.rotation_loss_weight,
        }
        trackers = {
            "heatmap": self.heatmap_loss_tracker,
            "size": self.size_loss_tracker,
            "offset": self.offset_loss_tracker,
            "depth": self.depth_loss_tracker,
            "dimensions": self.dimensions_loss_tracker,
            "rotation": self.rotation_loss_tracker,
        }
        total = 0.0
        for name, value in parts.items():
            value = value / len(stacks)
            trackers[name].update_state(value)
            total = total + weights[name] * value
        total = scale_loss_for_distribution(total)
        for extra in self.losses:
            total = total + ops.cast(self._aggregate_additional_loss(extra), total.dtype)
        return total

    def render_targets(self, images, y, heatmap):
        """3D targets of a batch on the output grid of `heatmap` (see `render_ddd_targets`)."""
        height, width = heatmap.shape[1], heatmap.shape[2]
        image_height, image_width = images.shape[1], images.shape[2]
        if None in (height, width, image_height, image_width):
            raise ValueError(
                "Training needs static image sizes (batches of one fixed height and width); "
                f"the images have shape {images.shape}."
            )
        boxes = ops.cast(ops.convert_to_tensor(y["boxes"]), "float32")
        if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"`boxes` must have shape (B, M, 4); received {boxes.shape}.")
        if self.bounding_box_format != "xyxy":
            boxes = keras.utils.bounding_boxes.convert_format(
                boxes, source=self.bounding_box_format, target="xyxy",
                height=image_height, width=image_width,
            )
        stride_x = image_width / width
        stride_y = image_height / height
        boxes = boxes / ops.convert_to_tensor([stride_x, stride_y, stride_x, stride_y], "float32")
        return render_ddd_targets(
            boxes, y["labels"], y["depth"], y["dimensions"], y["alpha"], (height, width),
            num_classes=self.num_classes, max_objects=self.max_objects, radius=self.radius,
        )

    # === Prediction ===

    def configure_prediction(self, score_threshold=None, flip_test=None, test_scales=None, raw_maps=None):
        """Changes what `predict` does; see `CenterNet.configure_prediction` (no flip, one scale)."""
        _check_prediction_options(flip_test or False, test_scales or (1.0,))
        super().configure_prediction(score_threshold, flip_test, test_scales, raw_maps)

    def _predict_outputs(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        calibration = None
        if isinstance(x, dict):
            if "images" not in x:
                raise ValueError(
                    f"CenterNet3D predicts on images or {{'images', 'calibration'}}; received keys {sorted(x)}."
                )
            calibration = x.get("calibration")
            x = x["images"]
        elif isinstance(y, dict):
            calibration = y.get("calibration")
        if self.raw_maps:
            return self(x, training=False)
        return self.detect(x, calibration)

    def detect(self, images, calibration=None):
        """3D objects of a batch (see the class docstring); `calibration` `(B, 3, 4)` in input pixels."""
        images = ops.cast(ops.convert_to_tensor(images), "float32")
        if calibration is None:
            calibration = self.calibration
        raw = self(images, training=False)
        stride = images.shape[2] / raw["heatmap"].shape[2] if images.shape[2] else 4
        objects = decode_3d_detections(
            raw["heatmap"], raw["rotation"], raw["depth"], raw["dimensions"], raw["size"],
            raw["offset"], calibration, max_detections=self.max_detections, stride=stride,
        )
        return apply_3d_score_threshold(objects, self.score_threshold)

    def get_config(self):
        config = super().get_config()
        for name in ("heads", "augmentation", "box_head", "iou_loss", "ltrb_gaussian",
                     "ltrb_loss_weight", "num_identities", "reid_dim", "reid_loss_weight"):
            config.pop(name, None)
        config.update(
            {
                "depth_loss_weight": self.depth_loss_weight,
                "dimensions_loss_weight": self.dimensions_loss_weight,
                "rotation_loss_weight": self.rotation_loss_weight,
                "calibration": self.calibration,
            }
        )
        return config

    @classmethod
    def from_preset(cls, preset, num_classes=3, head_channels=None, **kwargs):
        """Builds a 3D model by name (random weights).

        Args:
            preset: str. `"dla34"` (the paper's KITTI model) or `"resnet18"`
                (`DDD_PRESETS`); every `CenterNet` preset
                (`keras_centernet.models.list_presets()`) builds.
            num_classes: int. Defaults to 3 (KITTI).
            head_channels: int. Defaults to the preset's (256 for DLA, 64
                for ResNet, the official `head_conv`).
            **kwargs: other `CenterNet3D` arguments.

        Example:

        >>> model = CenterNet3D.from_preset("resnet18", max_detections=50)
        """
        from keras_centernet.models.presets import get_preset

        spec = get_preset(preset)
        config = {
            "backbone": spec["backbone"](),
            "neck": spec["neck"]() if spec.get("neck") else None,
            "num_classes": num_classes,
            "head_channels": head_channels or spec["head_channels"],
            "size_divisor": spec["size_divisor"],
        }
        config.update(kwargs)
        model = cls(**config)
        model.preset = preset
        return model


def _check_prediction_options(flip_test, test_scales):
    scales = tuple(float(s) for s in (test_scales if isinstance(test_scales, (list, tuple)) else [test_scales]))
    if scales != (1.0,) or flip_test:
        raise ValueError(
            "`CenterNet3D` predicts at one scale without flip (as the official 3D detector): "
            f"`flip_test` must be False and `test_scales` (1.0,); received {flip_test!r}, {test_scales!r}."
        )
