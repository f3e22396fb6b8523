import keras


@keras.saving.register_keras_serializable(package="keras_centernet")
class PredictionHead(keras.layers.Layer):
    """One CenterNet output branch: 3x3 conv (with bias) -> ReLU -> 1x1 conv.

    As the official heads (`hm`, `wh`, `reg`): the hidden convolution has
    `head_channels` filters; the output convolution `channels`. The heatmap
    head starts its output bias at `-2.19` (= -log((1 - 0.1) / 0.1), a prior
    probability of 0.1 for every class, section 4 of the paper) so the focal
    loss starts stable. A head of distances (the LTRB box head) outputs
    `relu(x) * distance_scale`, as TTFNet's `relu(wh) * wh_offset_base`:
    non-negative, and of a useful size from the first step. Its output bias
    starts at 1 (every distance at `distance_scale`), not TTFNet's 0: the
    initial outputs are tiny and of nearly one sign at every pixel, so with a
    zero bias a channel can start negative everywhere and, under the relu,
    never get a gradient (measured: the left and top distances of the LTRB
    head stayed 0 for a whole run).

    Args:
        channels: int. Output channels (classes for a heatmap, 2 for sizes).
        head_channels: int. Hidden channels. Defaults to 64.
        bias_init: float. Initial bias of the output convolution.
            Defaults to `None`: 0, or 1 for a head of distances.
        kernel_stddev: optional float. Standard deviation of a normal
            initialisation of both kernels (the official `fill_fc_weights`
            uses 0.001 for the regression heads). Defaults to `None`, Keras'
            default initialiser.
        distance_scale: optional float. When set, the output is
            `relu(output) * distance_scale` (non-negative distances).
            Defaults to `None`, the linear output.

    Example:

    >>> import numpy as np
    >>> head = PredictionHead(80, head_channels=64, bias_init=-2.19)
    >>> tuple(head(np.zeros((1, 32, 32, 64), "float32")).shape)
    (1, 32, 32, 80)
    """

    def __init__(
        self, channels, head_channels=64, bias_init=None, kernel_stddev=None, distance_scale=None, **kwargs
    ):
        super().__init__(**kwargs)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"`channels` must be a positive int; received {channels!r}.")
        if not isinstance(head_channels, int) or head_channels < 1:
            raise ValueError(
                f"`head_channels` must be a positive int; received {head_channels!r}."
            )
        self.channels = channels
        self.head_channels = head_channels
        self.kernel_stddev = kernel_stddev
        if distance_scale is not None and not distance_scale > 0:
            raise ValueError(f"`distance_scale` must be positive; received {distance_scale!r}.")
        self.distance_scale = None if distance_scale is None else float(distance_scale)
        if bias_init is None:
            bias_init = 0.0 if distance_scale is None else 1.0
        self.bias_init = float(bias_init)
        initializer = (
            "glorot_uniform"
            if kernel_stddev is None
            else keras.initializers.RandomNormal(stddev=kernel_stddev)
        )
        self.hidden = keras.layers.Conv2D(
            head_channels, 3, padding="same", activation="relu",
            kernel_initializer=initializer, dtype=self.dtype_policy, name="hidden",
        )
        self.output_conv = keras.layers.Conv2D(
            channels, 1, kernel_initializer=initializer,
            bias_initializer=keras.initializers.Constant(self.bias_init),
            dtype=self.dtype_policy, name="output",
        )

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.output_conv.build(self.hidden.compute_output_shape(input_shape))

    def call(self, features):
        output = self.output_conv(self.hidden(features))
        if self.distance_scale is None:
            return output
        return keras.ops.relu(output) * self.distance_scale

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "head_channels": self.head_channels,
                "bias_init": self.bias_init,
                "kernel_stddev": self.kernel_stddev,
                "distance_scale": self.distance_scale,
            }
        )
        return config


# The official constant (-log(0.9 / 0.1) = -2.197, rounded as in the official code).
HEATMAP_PRIOR_BIAS = -2.19
