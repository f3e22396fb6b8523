"""Iterative deep aggregation (DLA's neck) on the pyramid of any backbone."""

import keras
from keras import ops

from keras_centernet.necks.dla_up import DLAUpNeck
from keras_centernet.necks.fpn import check_positive_int
from keras_centernet.necks.fpn import check_pyramid
from keras_centernet.necks.fpn import pyramid_shapes


@keras.saving.register_keras_serializable(package="keras_centernet")
class IDANeck(keras.layers.Layer):
    """DLA-34's iterative deep aggregation (`DLAUpNeck`) for any backbone's pyramid.

    `DLAUpNeck` is the official DLA neck: it needs the channels of the
    levels it aggregates, and its first level's channels become the output
    width. This neck reads them from the backbone's maps when it is built,
    so it follows any backbone (ResNet, MobileNet, EfficientNet, ...); with
    `filters`, each level `i` is first projected to `filters * 2**i`
    channels (1x1 convolution -> BatchNorm -> ReLU, the widths of DLA-34's
    levels relative to its stride-4 one), which bounds the cost of the
    deformable aggregation nodes on wide backbones (ResNet-50's 2048
    channels at stride 32) and fixes the output width. The aggregation
    itself is `DLAUpNeck`'s: `IDAUp` stages with 3x3 deformable
    convolutions and bilinear-initialised up-sampling.

    Args:
        filters: int or `None`. Output channels; `None` keeps the backbone's
            own (the first level's channels). Defaults to 64 (DLA-34).
        num_levels: int >= 3. How many of the backbone's last maps are
            aggregated; the first of them is the output's stride. Defaults
            to 4 (strides 4 to 32).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        features: list of maps, the backbone's pyramid; the last
            `num_levels` are used (each at twice the stride of the one
            before).
        training: bool. Whether BatchNormalization uses batch statistics.

    Example:

    >>> neck = IDANeck(filters=8)
    >>> features = [np.zeros((1, 16 // 2**i, 16 // 2**i, 24 * 2**i), "float32") for i in range(4)]
    >>> tuple(neck(features).shape)
    (1, 16, 16, 8)

    Reference:
        Yu, Wang, Shelhamer and Darrell, "Deep Layer Aggregation", CVPR 2018.
    """

    def __init__(self, filters=64, num_levels=4, **kwargs):
        super().__init__(**kwargs)
        if filters is not None:
            check_positive_int("filters", filters)
        check_positive_int("num_levels", num_levels, minimum=3)
        self.filters = filters
        self.num_levels = num_levels
        self.projections, self.projection_norms = [], []
        self.aggregation = None

    def build(self, input_shape):
        shapes = pyramid_shapes("IDANeck", input_shape, self.num_levels)
        dtype = self.dtype_policy
        if self.filters is None:
            channels = [shape[-1] for shape in shapes]
        else:
            channels = [self.filters * 2**i for i in range(self.num_levels)]
            for i, (shape, width) in enumerate(zip(shapes, channels)):
                conv = keras.layers.Conv2D(width, 1, use_bias=False, dtype=dtype, name=f"projection_{i}")
                norm = keras.layers.BatchNormalization(dtype=dtype, name=f"projection_norm_{i}")
                conv.build(shape)
                norm.build((None, None, None, width))
                self.projections.append(conv)
                self.projection_norms.append(norm)
        # The layers depend on the input channels, so they are made here.
        self.aggregation = DLAUpNeck(channels=channels, dtype=dtype, name="aggregation")
        self.aggregation.build([(None, None, None, c) for c in channels])
        self.built = True

    def call(self, features, training=None):
        levels = check_pyramid("IDANeck", features, self.num_levels)
        if self.projections:
            levels = [
                ops.relu(norm(conv(x), training=training))
                for conv, norm, x in zip(self.projections, self.projection_norms, levels)
            ]
        return self.aggregation(levels, training=training)

    def compute_output_shape(self, input_shape):
        shapes = pyramid_shapes("IDANeck", input_shape, self.num_levels)
        batch, height, width, channels = shapes[0]
        return (batch, height, width, channels if self.filters is None else self.filters)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "num_levels": self.num_levels})
        return config
