import keras
from keras import ops

from keras_centernet.ops.deform_conv import _pair
from keras_centernet.ops.deform_conv import deform_conv2d
from keras_centernet.ops.deform_conv import deform_output_size


@keras.saving.register_keras_serializable(package="keras_centernet")
class DeformableConv2D(keras.layers.Layer):
    """Modulated deformable convolution with its own offset/mask branch (DCNv2).

    The official CenterNet `DCN` module: a plain convolution of the input
    (same kernel size, stride and padding, with bias) predicts `2 * kh * kw`
    offsets, interleaved (dy, dx) per kernel point, followed by `kh * kw` mask
    logits that pass through a sigmoid; then `deform_conv2d` samples the input
    at the shifted points. The offset/mask convolution starts at zero (the
    official `init_offset`), so a fresh layer is a plain convolution with all
    mask values 0.5.

    Under a mixed precision policy the offset/mask branch and the bilinear
    sampling run in float32 and only the final matmul in the compute dtype.

    Args:
        filters: int. Number of output channels.
        kernel_size: int or pair of odd ints. Defaults to 3.
        strides: int or pair. Defaults to 1.
        padding: int or pair of ints, zero padding of both branches. Defaults
            to `None`, `dilation_rate * (kernel_size - 1) // 2` (the official
            choice, "same" for stride 1).
        dilation_rate: int or pair. Defaults to 1.
        use_bias: bool. Defaults to `True` (the official module has a bias).
        kernel_initializer: initializer of the main kernel. Defaults to
            uniform in `+-1/sqrt(fan_in)`, the official `reset_parameters`.
        bias_initializer: Defaults to `"zeros"`.
        offset_initializer: initializer of the offset/mask kernel and bias.
            Defaults to `"zeros"`.
        kernel_regularizer, bias_regularizer: optional regularizers of the
            main kernel and bias.
        chunk_rows: optional int. Output rows computed at a time, to bound
            the memory of the sampled columns on large maps. Defaults to
            `None`.

    Example:

    >>> import numpy as np
    >>> layer = DeformableConv2D(16)
    >>> y = layer(np.random.rand(2, 32, 32, 8).astype("float32"))
    >>> tuple(y.shape)
    (2, 32, 32, 16)

    Reference:
        Zhu et al., "Deformable ConvNets v2: More Deformable, Better
        Results", CVPR 2019.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        padding=None,
        dilation_rate=1,
        use_bias=True,
        kernel_initializer=None,
        bias_initializer="zeros",
        offset_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        chunk_rows=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"`filters` must be a positive int; received {filters!r}.")
        self.filters = filters
        self.kernel_size = _pair(kernel_size, "kernel_size")
        if self.kernel_size[0] % 2 == 0 or self.kernel_size[1] % 2 == 0:
            raise ValueError(
                f"`kernel_size` must be odd; received {self.kernel_size}."
            )
        self.strides = _pair(strides, "strides")
        if min(self.strides) < 1:
            raise ValueError(f"`strides` must be >= 1; received {self.strides}.")
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        if min(self.dilation_rate) < 1:
            raise ValueError(
                f"`dilation_rate` must be >= 1; received {self.dilation_rate}."
            )
        if padding is None:
            padding = tuple(
                d * (k - 1) // 2 for d, k in zip(self.dilation_rate, self.kernel_size)
            )
        self.padding = _pair(padding, "padding")
        if min(self.padding) < 0:
            raise ValueError(f"`padding` must be >= 0; received {self.padding}.")
        if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
            raise ValueError(f"`chunk_rows` must be a positive int; received {chunk_rows!r}.")
        self.use_bias = use_bias
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.VarianceScaling(
                scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
            )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.offset_initializer = keras.initializers.get(offset_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.chunk_rows = chunk_rows
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def num_points(self):
        return self.kernel_size[0] * self.kernel_size[1]

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "`DeformableConv2D` expects inputs of rank 4 (batch, height, "
                f"width, channels); received shape {input_shape}."
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "The channel dimension of the inputs of `DeformableConv2D` must "
                f"be known; received shape {input_shape}."
            )
        kh, kw = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel",
            shape=(kh, kw, channels, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )
        else:
            self.bias = None
        # The offset/mask branch stays float32 under mixed precision.
        self.offset_kernel = self.add_weight(
            name="offset_kernel",
            shape=(kh, kw, channels, 3 * self.num_points),
            initializer=self.offset_initializer,
            autocast=False,
        )
        self.offset_bias = self.add_weight(
            name="offset_bias",
            shape=(3 * self.num_points,),
            initializer=self.offset_initializer,
            autocast=False,
        )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def offsets_and_mask(self, inputs):
        """The offset/mask branch: returns float32 `(offsets, mask)`."""
        x = ops.cast(inputs, "float32")
        ph, pw = self.padding
        x = ops.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        raw = ops.conv(
            x,
            self.offset_kernel,
            strides=self.strides,
            padding="valid",
            dilation_rate=self.dilation_rate,
        ) + self.offset_bias
        split = 2 * self.num_points
        return raw[..., :split], ops.sigmoid(raw[..., split:])

    def call(self, inputs):
        offsets, mask = self.offsets_and_mask(inputs)
        return deform_conv2d(
            inputs,
            offsets,
            mask,
            self.kernel,
            self.bias,
            strides=self.strides,
            padding=self.padding,
            dilation=self.dilation_rate,
            chunk_rows=self.chunk_rows,
        )

    def compute_output_shape(self, input_shape):
        out = [input_shape[0]]
        for axis in range(2):
            out.append(
                deform_output_size(
                    input_shape[1 + axis],
                    self.kernel_size[axis],
                    self.strides[axis],
                    self.padding[axis],
                    self.dilation_rate[axis],
                )
            )
        return tuple(out) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "dilation_rate": self.dilation_rate,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "offset_initializer": keras.initializers.serialize(self.offset_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "chunk_rows": self.chunk_rows,
            }
        )
        return config
