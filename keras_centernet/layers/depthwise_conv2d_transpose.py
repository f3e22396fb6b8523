"""Depthwise transposed convolution: DLA-34's IDA up-sampling (PyTorch `ConvTranspose2d(groups=C)`)."""

import math

import keras
import numpy as np
from keras import ops


def bilinear_kernel(kernel_size):
    """The official `fill_up_weights` 2-D bilinear up-sampling kernel `(k, k)`."""
    f = math.ceil(kernel_size / 2)
    center = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - np.abs(np.arange(kernel_size) / f - center)
    return np.outer(ramp, ramp).astype("float32")


@keras.saving.register_keras_serializable(package="keras_centernet")
class BilinearUpsamplingInitializer(keras.initializers.Initializer):
    """The official `fill_up_weights` for depthwise kernels: the bilinear kernel in every channel.

    Kernel layout `(k, k, channels, 1)`.

    Example:

    >>> kernel = BilinearUpsamplingInitializer()((4, 4, 8, 1))
    """

    def __call__(self, shape, dtype=None):
        kernel_h, kernel_w, channels, multiplier = shape
        if kernel_h != kernel_w:
            raise ValueError(f"The bilinear kernel is square; received shape {shape}.")
        kernel = np.broadcast_to(
            bilinear_kernel(kernel_h)[:, :, None, None], (kernel_h, kernel_w, channels, multiplier)
        )
        return ops.convert_to_tensor(np.ascontiguousarray(kernel), dtype=dtype)

    def get_config(self):
        return {}


def _phase_selection(factor):
    """`(factor, 3, 2 * factor)` 0/1 matrices: which kernel tap feeds which 3x3 position per phase.

    A transposed convolution with stride `f`, kernel `2f` and padding
    `p = f // 2` writes output `o = q * f + r` from inputs `m = q + d` and
    `m - 1`, where `o + p = m * f + u` (`d = (r + p) // f`, `u = (r + p) % f`),
    with kernel taps `u` and `u + f`. Over the input padded by one pixel, the
    output phase `r` is thus a 3-tap correlation with tap `u` at position
    `d + 1` and tap `u + f` at position `d`.
    """
    padding = factor // 2
    selection = np.zeros((factor, 3, 2 * factor), "float32")
    for phase in range(factor):
        shift, tap = divmod(phase + padding, factor)
        selection[phase, shift + 1, tap] = 1.0
        selection[phase, shift, tap + factor] = 1.0
    return selection


@keras.saving.register_keras_serializable(package="keras_centernet")
class DepthwiseConv2DTranspose(keras.layers.Layer):
    """Per-channel transposed convolution: PyTorch `ConvTranspose2d(C, C, 2f, f, f // 2, groups=C)`.

    Up-samples by an even `factor` `f` with one `2f x 2f` kernel per channel
    and no bias: DLA-34's IDA up-sampling (`up_<i>` of the official
    `IDAUp`), initialised bilinear as the official `fill_up_weights`. The
    output is `f` times the input in height and width (PyTorch's size
    `(n - 1) * f - 2 * (f // 2) + 2f`).

    It is computed without zero insertion: each of the `f x f` output
    phases is a 3x3 depthwise convolution of the input (a kernel with the
    phase's 2x2 taps), all phases at once as one depthwise convolution with
    depth multiplier `f * f`, then interleaved by reshape and transpose. This
    costs about `2.25` times the transposed convolution's multiply-adds
    (zero insertion costs `f**2` times), and uses only built-in TFLite ops.

    Args:
        factor: int. Even up-sampling factor (the official DLA-34 uses 2 and 4).
        kernel_initializer: initializer of the `(2f, 2f, channels, 1)`
            kernel. Defaults to the official bilinear kernel.
        kernel_regularizer: optional regularizer of the kernel.

    Example:

    >>> layer = DepthwiseConv2DTranspose(2)
    >>> tuple(layer(np.zeros((1, 8, 6, 16), "float32")).shape)
    (1, 16, 12, 16)
    """

    def __init__(self, factor, kernel_initializer=None, kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2 or factor % 2:
            # Odd factors make PyTorch's output f * n + 1 pixels: not the official up-sampling.
            raise ValueError(f"`factor` must be an even int >= 2; received {factor!r}.")
        self.factor = factor
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or BilinearUpsamplingInitializer()
        )
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def kernel_size(self):
        return 2 * self.factor

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "The channel dimension of the inputs of `DepthwiseConv2DTranspose` must be "
                f"known; received shape {input_shape}."
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, channels, 1),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def phase_kernel(self):
        """The `(3, 3, channels, f * f)` depthwise kernel of all output phases (row phase major)."""
        selection = ops.convert_to_tensor(_phase_selection(self.factor), self.compute_dtype)
        kernel = ops.cast(self.kernel[..., 0], self.compute_dtype)
        phases = ops.einsum("aik,klc,bjl->ijcab", selection, kernel, selection)
        channels = self.kernel.shape[2]
        return ops.reshape(phases, (3, 3, channels, self.factor * self.factor))

    def call(self, inputs):
        f = self.factor
        shape = ops.shape(inputs)
        height, width, channels = shape[1], shape[2], inputs.shape[-1]
        x = ops.pad(inputs, ((0, 0), (1, 1), (1, 1), (0, 0)))
        # Output channel c * f * f + a * f + b = phase (a, b) of channel c.
        x = ops.depthwise_conv(x, self.phase_kernel(), strides=1, padding="valid")
        # Interleave the phases with tensors of rank <= 5 (TFLite's TRANSPOSE).
        x = ops.reshape(x, (-1, width, channels, f, f))
        x = ops.transpose(x, (0, 3, 1, 4, 2))
        return ops.reshape(x, (-1, height * f, width * f, channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (
            batch,
            None if height is None else height * self.factor,
            None if width is None else width * self.factor,
            channels,
        )

    def official_weight_targets(self, leaf):
        """Official `(C, 1, k, k)` weight -> our `(k, k, C, 1)` kernel (for `keras_centernet.convert`)."""
        if leaf != "weight":
            raise KeyError(f"Layer {self.name!r} has no official entry {leaf!r}.")
        return self.kernel, lambda value: value.transpose(2, 3, 0, 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "factor": self.factor,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config
