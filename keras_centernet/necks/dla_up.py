"""DLA-34's up-sampling neck (official `DLAUp` + `IDAUp` of `pose_dla_dcn.py`)."""

import keras
import numpy as np
from keras import ops

from keras_centernet.convert.official import official_name
from keras_centernet.layers.deformable_conv2d import DeformableConv2D
from keras_centernet.necks.upconv import bilinear_kernel

_BN_EPSILON = 1e-5
_BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="keras_centernet")
class BilinearUpsamplingInitializer(keras.initializers.Initializer):
    """The official `fill_up_weights` for depthwise kernels `(k, k, C, 1)`: bilinear in every channel."""

    def __call__(self, shape, dtype=None):
        kernel_h, kernel_w, channels, multiplier = shape
        kernel = np.broadcast_to(
            bilinear_kernel(kernel_h)[:, :, None, None], (kernel_h, kernel_w, channels, multiplier)
        )
        return keras.ops.convert_to_tensor(np.ascontiguousarray(kernel), dtype=dtype)

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="keras_centernet")
class DepthwiseConv2DTranspose(keras.layers.Layer):
    """Per-channel transposed convolution: PyTorch `ConvTranspose2d(C, C, 2f, stride=f, padding=f // 2, groups=C)`.

    Up-samples by `factor` with one `2f x 2f` kernel per channel (no bias),
    as DLA-34's IDA up-sampling. Computed as zero insertion followed by a
    depthwise convolution with the flipped kernel (built-in ops for every
    backend and for TFLite). Output size: `factor` times the input.

    Args:
        factor: int. Up-sampling factor `f` (even sizes: 2 or 4 in DLA-34).
        kernel_initializer: initializer of the `(2f, 2f, C, 1)` kernel.
            Defaults to the official bilinear kernel.

    Example:

    >>> layer = DepthwiseConv2DTranspose(2)
    >>> tuple(layer(np.zeros((1, 8, 8, 16), "float32")).shape)
    (1, 16, 16, 16)
    """

    def __init__(self, factor, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"`factor` must be a positive int; received {factor!r}.")
        self.factor = factor
        self.kernel_size = 2 * factor
        self.padding = factor // 2
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or BilinearUpsamplingInitializer()
        )

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("DepthwiseConv2DTranspose needs a known number of channels.")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, channels, 1),
            initializer=self.kernel_initializer,
        )

    def call(self, x):
        f, k, p = self.factor, self.kernel_size, self.padding
        shape = ops.shape(x)
        batch, height, width, channels = shape[0], shape[1], shape[2], x.shape[-1]
        # Zero insertion: every input pixel followed by f - 1 zeros (rows and columns).
        x = ops.pad(x[:, :, None, :, None, :], ((0, 0), (0, 0), (0, f - 1), (0, 0), (0, f - 1), (0, 0)))
        x = ops.reshape(x, (batch, height * f, width * f, channels))
        # Transposed convolution = correlation with the flipped kernel over
        # the zero-inserted input padded by k - 1 - p before and f - 1 + p
        # after, of which the f - 1 trailing zeros are already there.
        x = ops.pad(x, ((0, 0), (k - 1 - p, p), (k - 1 - p, p), (0, 0)))
        kernel = ops.flip(ops.flip(self.kernel, axis=0), axis=1)
        return ops.depthwise_conv(x, ops.cast(kernel, x.dtype), strides=1, padding="valid")

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (
            batch,
            None if height is None else height * self.factor,
            None if width is None else width * self.factor,
            channels,
        )

    def official_weight_targets(self, leaf):
        """Official `(C, 1, k, k)` weight -> our `(k, k, C, 1)` kernel."""
        if leaf != "weight":
            raise KeyError(f"Layer {self.name!r} has no official entry {leaf!r}.")
        return self.kernel, lambda value: value.transpose(2, 3, 0, 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "factor": self.factor,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


class _DeformConv:
    """The official `DeformConv`: DCN 3x3 -> BN -> ReLU, named `<path>.conv`, `<path>.actf.0`."""

    def __init__(self, parts, path, channels_out, dtype):
        self.conv = DeformableConv2D(channels_out, 3, dtype=dtype, name=official_name(f"{path}.conv"))
        self.bn = keras.layers.BatchNormalization(
            epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, dtype=dtype, name=official_name(f"{path}.actf.0")
        )
        parts[f"{path}.conv"] = self.conv
        parts[f"{path}.actf.0"] = self.bn


def _ida_up_layers(parts, path, out_channels, in_channels, up_factors, dtype):
    """Layers of an official `IDAUp(o, channels, up_f)`: proj_i, up_i, node_i for i >= 1."""
    for i in range(1, len(in_channels)):
        _DeformConv(parts, f"{path}.proj_{i}", out_channels, dtype)
        parts[f"{path}.up_{i}"] = DepthwiseConv2DTranspose(
            int(up_factors[i]), dtype=dtype, name=official_name(f"{path}.up_{i}")
        )
        _DeformConv(parts, f"{path}.node_{i}", out_channels, dtype)


@keras.saving.register_keras_serializable(package="keras_centernet")
class DLAUpNeck(keras.layers.Layer):
    """DLA-34's neck: iterative deep aggregation up to stride 4, then one more IDA.

    The official `DLASeg` between the backbone and the heads: `dla_up`
    (`DLAUp`: IDA nodes `ida_0`..`ida_2` that repeatedly up-sample deeper
    levels and merge them into shallower ones) and `ida_up` (merges the
    stride 4, 8 and 16 results into one stride-4 map with
    `channels[0]` channels). Every projection and node is a deformable
    convolution + BN + ReLU; up-sampling is a depthwise transposed
    convolution with bilinear initialisation.

    Args:
        channels: tuple of ints. Channels of the backbone levels used,
            from stride 4 (DLA-34: 64, 128, 256, 512).

    Call arguments:
        features: the backbone's levels (a list); the last
            `len(channels)` are used.

    Example:

    >>> neck = DLAUpNeck(channels=(64, 128, 256, 512))
    """

    def __init__(self, channels=(64, 128, 256, 512), **kwargs):
        super().__init__(**kwargs)
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or any(c < 1 for c in channels):
            raise ValueError(f"`channels` needs at least 2 positive ints; received {channels}.")
        self.channels = channels
        self.parts = {}
        dtype = self.dtype_policy
        # DLAUp: scales and input channels evolve as the official loop does.
        scales = [2**i for i in range(len(channels))]
        in_channels = list(channels)
        self._dla_up_specs = []
        for i in range(len(channels) - 1):
            j = -i - 2
            factors = [s // scales[j] for s in scales[j:]]
            _ida_up_layers(self.parts, f"dla_up.ida_{i}", channels[j], in_channels[j:], factors, dtype)
            self._dla_up_specs.append((channels[j], list(in_channels[j:])))
            scales[j + 1:] = [scales[j]] * len(scales[j + 1:])
            in_channels[j + 1:] = [channels[j]] * len(in_channels[j + 1:])
        # IDAUp over the first len(channels) - 1 outputs of DLAUp.
        last = len(channels) - 1
        _ida_up_layers(self.parts, "ida_up", channels[0], channels[:last],
                       [2**i for i in range(last)], dtype)
        self._ida_up_channels = list(channels[:last])

    def build(self, input_shape):
        def build_ida(path, out_channels, in_channels):
            for i in range(1, len(in_channels)):
                self.parts[f"{path}.proj_{i}.conv"].build((None, None, None, in_channels[i]))
                for name in (f"{path}.proj_{i}.actf.0", f"{path}.up_{i}", f"{path}.node_{i}.conv",
                             f"{path}.node_{i}.actf.0"):
                    self.parts[name].build((None, None, None, out_channels))

        for i, (out_channels, in_channels) in enumerate(self._dla_up_specs):
            build_ida(f"dla_up.ida_{i}", out_channels, in_channels)
        build_ida("ida_up", self.channels[0], self._ida_up_channels)
        self.built = True

    def _deform_conv(self, path, x, training):
        x = self.parts[f"{path}.conv"](x)
        return ops.relu(self.parts[f"{path}.actf.0"](x, training=training))

    def _ida(self, path, layers, start, end, training):
        """Official `IDAUp.forward(layers, startp, endp)`, in place on the list."""
        for i in range(start + 1, end):
            k = i - start
            up = self.parts[f"{path}.up_{k}"](self._deform_conv(f"{path}.proj_{k}", layers[i], training))
            layers[i] = self._deform_conv(f"{path}.node_{k}", up + layers[i - 1], training)

    def call(self, features, training=None):
        layers = list(features[-len(self.channels):])
        # DLAUp: out = [stride 4, 8, 16 results, ..., the deepest level].
        out = [layers[-1]]
        for i in range(len(layers) - 1):
            self._ida(f"dla_up.ida_{i}", layers, len(layers) - i - 2, len(layers), training)
            out.insert(0, layers[-1])
        outputs = out[: len(self.channels) - 1]
        self._ida("ida_up", outputs, 0, len(outputs), training)
        return outputs[-1]

    def compute_output_shape(self, input_shape):
        shape = input_shape[-len(self.channels)]
        return (shape[0], shape[1], shape[2], self.channels[0])

    def get_config(self):
        config = super().get_config()
        config.update({"channels": list(self.channels)})
        return config
