import keras

from keras_centernet.layers.prediction_head import HEATMAP_PRIOR_BIAS
from keras_centernet.layers.prediction_head import PredictionHead
from keras_centernet.layers.preprocessing import ImageNormalization


@keras.saving.register_keras_serializable(package="keras_centernet")
class CenterNet(keras.Model):
    """CenterNet object detector ("Objects as Points").

    A backbone returns a feature pyramid, a neck brings it to one stride-4
    map, and prediction heads (a dict name -> channels) read that map:
    by default a class `heatmap` (logits), the box `size` (w, h in output
    pixels) and the sub-pixel `offset` of the centre. A stacked hourglass is
    backbone and neck at once: with `neck=None`, the backbone returns one
    stride-4 map per stack, each stack gets its own heads, and the last stack
    is the model's output.

    The model takes RGB images with values 0..255 (normalised inside with the
    official mean and std), of a height and width that are multiples of
    `size_divisor`.

    Args:
        backbone: `keras.Model`. Maps normalised images to a list of
            features (a pyramid; or, with `neck=None`, one stride-4 map per
            stack). A backbone with several stacks has an int attribute
            `num_stacks`.
        neck: `keras.layers.Layer` or `None`. Maps the backbone's features to
            one stride-4 map. Defaults to `None`.
        num_classes: int. Number of object classes. Defaults to 80.
        head_channels: int. Hidden channels of every head. Defaults to 64.
        heads: dict name -> output channels. Defaults to
            `{"heatmap": num_classes, "size": 2, "offset": 2}`; extra heads
            (pose, 3D) are added here.
        max_objects: int. Objects per image in training targets. Defaults
            to 128.
        max_detections: int. Detections per image. Defaults to 100.
        radius: `"official"`, `"fixed"` or `"ttfnet"`. Gaussian radius rule of
            the heatmap targets. Defaults to `"official"`.
        heatmap_loss_weight, size_loss_weight, offset_loss_weight: floats.
            Defaults to 1, 0.1 and 1 (the paper).
        bounding_box_format: str. Format of training boxes and predicted
            boxes. Defaults to `"xyxy"`.
        size_divisor: int. The network's total stride; input sizes must be
            multiples of it. Defaults to 32.
        regression_head_stddev: float or `None`. Normal initialisation of
            the non-heatmap heads (the official `fill_fc_weights`: 0.001).

    Example:

    >>> model = CenterNet.from_preset("resnet18_dcn", num_classes=20)
    >>> raw = model(np.zeros((1, 128, 128, 3), "float32"))
    >>> tuple(raw["heatmap"].shape)
    (1, 32, 32, 20)

    Reference:
        Zhou, Wang and Krähenbühl, "Objects as Points", arXiv:1904.07850.
    """

    def __init__(
        self,
        backbone,
        neck=None,
        num_classes=80,
        head_channels=64,
        heads=None,
        max_objects=128,
        max_detections=100,
        radius="official",
        heatmap_loss_weight=1.0,
        size_loss_weight=0.1,
        offset_loss_weight=1.0,
        bounding_box_format="xyxy",
        size_divisor=32,
        regression_head_stddev=0.001,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int; received {num_classes!r}.")
        if heads is None:
            heads = {"heatmap": num_classes, "size": 2, "offset": 2}
        heads = dict(heads)
        if heads.get("heatmap") != num_classes:
            raise ValueError(
                f"`heads['heatmap']` must equal `num_classes` ({num_classes}); "
                f"received heads {heads}."
            )
        for name in ("size", "offset"):
            if heads.get(name) != 2:
                raise ValueError(
                    f"`heads['{name}']` must be 2 channels; received heads {heads}."
                )
        if radius not in ("official", "fixed", "ttfnet"):
            raise ValueError(
                f"`radius` must be 'official', 'fixed' or 'ttfnet'; received {radius!r}."
            )

        # === Layers ===
        self.preprocessor = ImageNormalization(
            size_divisor=size_divisor, dtype=self.dtype_policy, name="preprocessor"
        )
        self.backbone = backbone
        self.neck = neck
        num_stacks = getattr(backbone, "num_stacks", 1) if neck is None else 1
        self.head_layers = []
        for stack in range(num_stacks):
            for name, channels in heads.items():
                self.head_layers.append(
                    PredictionHead(
                        channels,
                        head_channels=head_channels,
                        bias_init=HEATMAP_PRIOR_BIAS if name == "heatmap" else 0.0,
                        kernel_stddev=None if name == "heatmap" else regression_head_stddev,
                        dtype=self.dtype_policy,
                        name=name if num_stacks == 1 else f"{name}_{stack}",
                    )
                )

        # === Config ===
        self.num_classes = num_classes
        self.head_channels = head_channels
        self.heads = heads
        self.num_stacks = num_stacks
        self.max_objects = max_objects
        self.max_detections = max_detections
        self.radius = radius
        self.heatmap_loss_weight = heatmap_loss_weight
        self.size_loss_weight = size_loss_weight
        self.offset_loss_weight = offset_loss_weight
        self.bounding_box_format = bounding_box_format
        self.size_divisor = size_divisor
        self.regression_head_stddev = regression_head_stddev

        self.build((None, None, None, 3))

    def build(self, input_shape):
        if self.built:
            return
        self.preprocessor.check_input_shape(input_shape)
        # A symbolic pass builds every sub-layer with the right shapes.
        self.forward_stacks(keras.KerasTensor(input_shape), all_stacks=True)
        self.built = True

    def stack_heads(self, stack):
        """The head layers of one stack, as a dict name -> layer."""
        per_stack = len(self.heads)
        layers = self.head_layers[stack * per_stack:(stack + 1) * per_stack]
        return dict(zip(self.heads, layers))

    def stride4_maps(self, images, training=None):
        """Normalised images -> the list of stride-4 maps, one per stack."""
        x = self.preprocessor(images)
        features = self.backbone(x, training=training)
        if self.neck is not None:
            features = self.neck(features, training=training)
        if not isinstance(features, (list, tuple)):
            features = [features]
        if len(features) != self.num_stacks:
            raise ValueError(
                f"The backbone/neck gave {len(features)} stride-4 maps for "
                f"{self.num_stacks} stacks."
            )
        return list(features)

    def forward_stacks(self, images, training=None, all_stacks=False):
        """Raw head outputs of every stack (or only the last), as a list of dicts."""
        maps = self.stride4_maps(images, training=training)
        stacks = range(self.num_stacks) if all_stacks else [self.num_stacks - 1]
        return [
            {name: head(maps[s]) for name, head in self.stack_heads(s).items()}
            for s in stacks
        ]

    def call(self, images, training=None):
        stacks = self.forward_stacks(images, training=training, all_stacks=bool(training))
        outputs = dict(stacks[-1])
        if training and self.num_stacks > 1:
            # The loss of a stacked hourglass averages over every stack.
            outputs["intermediate"] = stacks[:-1]
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "neck": None if self.neck is None else keras.saving.serialize_keras_object(self.neck),
                "num_classes": self.num_classes,
                "head_channels": self.head_channels,
                "heads": self.heads,
                "max_objects": self.max_objects,
                "max_detections": self.max_detections,
                "radius": self.radius,
                "heatmap_loss_weight": self.heatmap_loss_weight,
                "size_loss_weight": self.size_loss_weight,
                "offset_loss_weight": self.offset_loss_weight,
                "bounding_box_format": self.bounding_box_format,
                "size_divisor": self.size_divisor,
                "regression_head_stddev": self.regression_head_stddev,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("neck") is not None:
            config["neck"] = keras.saving.deserialize_keras_object(config["neck"])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, num_classes=80, head_channels=None, heads=None, **kwargs):
        """Builds one of the paper's architectures by name (random weights).

        Args:
            preset: str. One of `keras_centernet.models.presets.PRESETS`
                (`"resnet18"`, `"resnet18_dcn"`, `"resnet101_dcn"`, `"dla34"`,
                `"hourglass104"`, `"hourglass52"`, ...).
            num_classes: int. Defaults to 80.
            head_channels: int. Defaults to the preset's (the official
                `head_conv`: 64 for ResNets, 256 for DLA and hourglass).
            heads: dict name -> channels. Defaults to heatmap/size/offset.
            **kwargs: other `CenterNet` arguments.

        Example:

        >>> model = CenterNet.from_preset("dla34", num_classes=20)
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
        if heads is not None:
            config["heads"] = heads
        config.update(kwargs)
        return cls(**config)
