"""Feature Pyramid Network neck: top-down fusion of a pyramid down to stride 4."""

import keras
from keras import ops

UPSAMPLING_MODES = ("nearest", "transposed")


def check_pyramid(name, features, num_levels):
    """The last `num_levels` maps of `features`, each at half the size of the one before."""
    if not isinstance(features, (list, tuple)) or len(features) < num_levels:
        raise ValueError(
            f"`{name}` expects a list of at least {num_levels} feature maps (strides 4, 8, ...); "
            f"received {type(features).__name__}"
            + (f" of {len(features)}" if isinstance(features, (list, tuple)) else "") + "."
        )
    return list(features[-num_levels:])


def pyramid_shapes(name, input_shape, num_levels):
    """The last `num_levels` shapes of a list of shapes, with known channels."""
    if not isinstance(input_shape, (list, tuple)) or not isinstance(input_shape[0], (list, tuple)):
        raise ValueError(f"`{name}` takes a list of feature maps; received the shape {input_shape}.")
    if len(input_shape) < num_levels:
        raise ValueError(
            f"`{name}` needs at least {num_levels} feature maps; received {len(input_shape)}."
        )
    shapes = [tuple(s) for s in input_shape[-num_levels:]]
    for shape in shapes:
        if len(shape) != 4 or shape[-1] is None:
            raise ValueError(
                f"`{name}` takes maps (batch, height, width, channels) with known channels; "
                f"received the shapes {shapes}."
            )
    return shapes


def check_positive_int(name, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; received {value!r}.")
    return value


@keras.saving.register_keras_serializable(package="keras_centernet")
class FPNNeck(keras.layers.Layer):
    """FPN: lateral 1x1 projections, top-down fusion, one stride-4 map.

    Each of the last `num_levels` maps of the pyramid (strides 4, 8, ...,
    each twice the one before) is projected to `filters` channels by a 1x1
    convolution; from the coarsest down, `p_i = lateral_i + up(p_{i+1})`,
    where `up` doubles the size, by nearest-neighbour repetition (the FPN
    paper) or a learned 4x4 transposed convolution. The finest sum is
    smoothed by a 3x3 convolution -> BatchNorm -> ReLU, the map the heads
    read.

    Args:
        filters: int. Channels of every level and of the output. Defaults
            to 128.
        num_levels: int >= 2. How many of the backbone's last maps are
            fused; the first of them is the output's stride. Defaults to 4
            (strides 4 to 32).
        upsampling: `"nearest"` or `"transposed"`. Defaults to `"nearest"`.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        features: list of maps `(batch, height, width, channels)`, the
            backbone's pyramid; the last `num_levels` are used.
        training: bool. Whether BatchNormalization uses batch statistics.

    Example:

    >>> neck = FPNNeck(filters=16)
    >>> features = [np.zeros((1, 16 // 2**i, 16 // 2**i, 8 * 2**i), "float32") for i in range(4)]
    >>> tuple(neck(features).shape)
    (1, 16, 16, 16)

    Reference:
        Lin, Dollár, Girshick, He, Hariharan and Belongie, "Feature Pyramid
        Networks for Object Detection", CVPR 2017.
    """

    def __init__(self, filters=128, num_levels=4, upsampling="nearest", **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        check_positive_int("num_levels", num_levels, minimum=2)
        if upsampling not in UPSAMPLING_MODES:
            raise ValueError(f"`upsampling` must be one of {UPSAMPLING_MODES}; received {upsampling!r}.")
        dtype = self.dtype_policy

        # === Layers ===
        self.laterals = [
            keras.layers.Conv2D(filters, 1, dtype=dtype, name=f"lateral_{i}") for i in range(num_levels)
        ]
        if upsampling == "transposed":
            self.upsamplings = [
                keras.layers.Conv2DTranspose(
                    filters, 4, strides=2, padding="same", dtype=dtype, name=f"upsampling_{i}"
                )
                for i in range(num_levels - 1)
            ]
        else:
            self.upsamplings = [
                keras.layers.UpSampling2D(2, interpolation="nearest", dtype=dtype, name=f"upsampling_{i}")
                for i in range(num_levels - 1)
            ]
        self.output_conv = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, dtype=dtype, name="output_conv"
        )
        self.output_norm = keras.layers.BatchNormalization(dtype=dtype, name="output_norm")

        # === Config ===
        self.filters = filters
        self.num_levels = num_levels
        self.upsampling = upsampling

    def build(self, input_shape):
        shapes = pyramid_shapes("FPNNeck", input_shape, self.num_levels)
        level_shape = (None, None, None, self.filters)
        for lateral, shape in zip(self.laterals, shapes):
            lateral.build(shape)
        for upsampling in self.upsamplings:
            upsampling.build(level_shape)
        self.output_conv.build(level_shape)
        self.output_norm.build(level_shape)
        self.built = True

    def call(self, features, training=None):
        levels = check_pyramid("FPNNeck", features, self.num_levels)
        x = self.laterals[-1](levels[-1])
        for i in range(self.num_levels - 2, -1, -1):
            x = self.laterals[i](levels[i]) + self.upsamplings[i](x)
        x = self.output_norm(self.output_conv(x), training=training)
        return ops.relu(x)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = pyramid_shapes("FPNNeck", input_shape, self.num_levels)[0]
        return (batch, height, width, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"filters": self.filters, "num_levels": self.num_levels, "upsampling": self.upsampling}
        )
        return config
