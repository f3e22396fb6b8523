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
        return self.finish(self.output_conv(self.hidden(features)))

    def finish(self, output):
        """The head's result from its output convolution's values (distances: made non-negative)."""
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


def apply_heads(heads, features):
    """Every head of `heads` (a dict name -> `PredictionHead`) on one feature map.

    The same values as `{name: head(features) for name, head in heads.items()}`,
    computed as two convolutions instead of two per head: the heads' 3x3
    hidden convolutions read the same map, so their kernels are concatenated
    into one convolution (one larger matrix product forward; one input
    gradient instead of one per head, summed), and their 1x1 output
    convolutions become one 1x1 convolution with a block-diagonal kernel
    (each head's output reads only its own hidden channels: the other
    blocks are zeros, which add nothing to the sums). The weights stay the
    heads' own variables, so checkpoints, the official weight conversion and
    per-head access are unchanged. `CenterNet` runs its heads this way in
    training, where one input gradient for all heads pays; at inference it
    calls each head (what exports quantise: an int8 TFLite converter takes a
    kernel concatenated from weights for an activation and quantises it
    with a zero point, which its convolution kernel rejects).

    Falls back to calling each head where fusing does not apply: a single
    head, heads not built yet (the symbolic pass that builds a model), a
    layer that is not a plain `PredictionHead`, channels-first data, or
    heads of different compute dtypes.

    Args:
        heads: dict name -> `PredictionHead`.
        features: the feature map `(batch, height, width, channels)`.

    Returns:
        dict name -> that head's output.

    Example:
    >>> import numpy as np
    >>> heads = {"heatmap": PredictionHead(3, head_channels=8), "size": PredictionHead(2, head_channels=8)}
    >>> features = np.ones((1, 4, 4, 5), "float32")
    >>> separate = {name: head(features) for name, head in heads.items()}  # builds the heads
    >>> fused = apply_heads(heads, features)
    >>> [tuple(fused[name].shape) for name in heads]
    [(1, 4, 4, 3), (1, 4, 4, 2)]
    >>> bool(np.allclose(keras.ops.convert_to_numpy(fused["size"]),
    ...                  keras.ops.convert_to_numpy(separate["size"]), atol=1e-5))
    True
    """
    layers = list(heads.values())
    if (len(layers) < 2 or not all(_fusable(head) for head in layers)
            or len({head.compute_dtype for head in layers}) > 1):
        return {name: head(features) for name, head in heads.items()}
    ops = keras.ops
    # As each head's own call: the inputs and the weights in the heads' compute dtype.
    dtype = layers[0].compute_dtype
    features = ops.cast(features, dtype)
    hidden_kernel = ops.concatenate([ops.cast(h.hidden.kernel, dtype) for h in layers], axis=-1)
    hidden_bias = ops.concatenate([ops.cast(h.hidden.bias, dtype) for h in layers], axis=0)
    hidden = ops.relu(ops.conv(features, hidden_kernel, padding="same") + hidden_bias)
    total_outputs = sum(h.channels for h in layers)
    blocks, start = [], 0
    for h in layers:
        kernel = ops.cast(h.output_conv.kernel, dtype)  # (1, 1, head_channels, channels)
        blocks.append(ops.pad(kernel, ((0, 0), (0, 0), (0, 0), (start, total_outputs - start - h.channels))))
        start += h.channels
    output_kernel = ops.concatenate(blocks, axis=2)
    output_bias = ops.concatenate([ops.cast(h.output_conv.bias, dtype) for h in layers], axis=0)
    outputs = ops.conv(hidden, output_kernel) + output_bias
    results, start = {}, 0
    for name, h in heads.items():
        results[name] = h.finish(outputs[..., start:start + h.channels])
        start += h.channels
    return results


def _fusable(head):
    """Whether `apply_heads` may compute `head` from its weights directly."""
    return (
        type(head) is PredictionHead
        and head.built
        and head.hidden.data_format == "channels_last"
        and head.output_conv.data_format == "channels_last"
        and getattr(head.hidden, "quantization_mode", None) is None
        and getattr(head.output_conv, "quantization_mode", None) is None
    )
