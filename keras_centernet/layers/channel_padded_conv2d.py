"""Conv2D that gives XLA:GPU a multiple of 8 input channels (the 3-channel image stems)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_centernet")
class ChannelPaddedConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose input channels are zero-padded to a multiple of 8 under JAX.

    The first convolution of a network reads the 3-channel image, and cuDNN
    has no fast tensor-core kernels for 3 channels: in an Hourglass-104 bf16
    training step on an H100 its 7x7 stride-2 stem took 2.19 ms forward and
    1.12 ms for its filter gradient, more than any 3x3 layer of 256 channels
    (`benchmarks/results/profile_step.md`). Under the JAX backend this layer
    appends zero channels to the input and zero rows to the kernel, so the
    convolution computes the same sums on 8 channels. The weights keep their
    shape (`(kh, kw, 3, filters)`): checkpoints, conversions and exports are
    those of a `Conv2D`, and under TensorFlow and PyTorch (exports go through
    TensorFlow) it is a plain `Conv2D`.

    Args:
        channel_multiple: int. Pad the input channels up to a multiple of
            this. Defaults to 8.
        **kwargs: the arguments of `keras.layers.Conv2D`.

    Example:
    >>> import numpy as np
    >>> conv = ChannelPaddedConv2D(4, 3, padding="same")
    >>> tuple(conv(np.zeros((1, 8, 8, 3), "float32")).shape)
    (1, 8, 8, 4)
    >>> tuple(conv.kernel.shape)
    (3, 3, 3, 4)
    """

    def __init__(self, *args, channel_multiple=8, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(channel_multiple, int) or channel_multiple < 1:
            raise ValueError(f"`channel_multiple` must be a positive int; received {channel_multiple!r}.")
        self.channel_multiple = channel_multiple

    def convolution_op(self, inputs, kernel):
        channels = inputs.shape[-1]
        if (keras.backend.backend() != "jax" or self.data_format != "channels_last"
                or self.groups != 1 or channels is None or channels % self.channel_multiple == 0):
            return super().convolution_op(inputs, kernel)
        extra = -channels % self.channel_multiple
        inputs = ops.pad(inputs, [[0, 0]] * (len(inputs.shape) - 1) + [[0, extra]])
        kernel = ops.pad(kernel, [[0, 0], [0, 0], [0, extra], [0, 0]])
        return super().convolution_op(inputs, kernel)

    def get_config(self):
        config = super().get_config()
        config["channel_multiple"] = self.channel_multiple
        return config
