"""The up-convolution neck of the ResNet CenterNets (official `deconv_layers`)."""

import math

import keras
import numpy as np

from keras_centernet.convert.official import official_name
from keras_centernet.layers.deformable_conv2d import DeformableConv2D

_BN_EPSILON = 1e-5
_BN_MOMENTUM = 0.9


def bilinear_kernel(kernel_size):
    """The official `fill_up_weights` 2-D bilinear up-sampling kernel `(k, k)`."""
    f = math.ceil(kernel_size / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - np.abs(np.arange(kernel_size) / f - c)
    return np.outer(ramp, ramp).astype("float32")


@keras.saving.register_keras_serializable(package="keras_centernet")
class OfficialUpsamplingInitializer(keras.initializers.Initializer):
    """The official initialisation of `resnet_dcn.py`'s transposed convolutions.

    PyTorch's default (uniform within `1/sqrt(fan_in)`, with a transposed
    convolution's `fan_in` = output channels x kernel area), then the
    official `fill_up_weights`, which writes the bilinear kernel into output
    channel 0 from every input channel only (it indexes `w[c, 0]` of a
    `(in, out, k, k)` weight). Kernel layout here: `(k, k, out, in)`.

    Example:

    >>> layer = keras.layers.Conv2DTranspose(64, 4, 2, kernel_initializer=OfficialUpsamplingInitializer())
    """

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kernel_h, kernel_w, channels_out, _ = shape
        bound = 1.0 / math.sqrt(channels_out * kernel_h * kernel_w)
        kernel = keras.random.uniform(shape, -bound, bound, dtype=dtype, seed=self.seed)
        bilinear = keras.ops.convert_to_tensor(bilinear_kernel(kernel_h), dtype=dtype)
        channel = keras.ops.one_hot(0, channels_out, dtype=dtype)[None, None, :, None]
        return kernel * (1 - channel) + bilinear[:, :, None, None] * channel

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_centernet")
class UpConvNeck(keras.layers.Layer):
    """Three up-sampling stages from the stride-32 map to stride 4.

    Official `resnet_dcn.py` (`use_dcn=True`): per stage a 3x3 deformable
    convolution -> BN -> ReLU -> 4x4 transposed convolution, stride 2 ->
    BN -> ReLU; filters 256, 128, 64. Official `msra_resnet.py`
    (`use_dcn=False`): transposed convolution -> BN -> ReLU; filters 256
    each. Sub-layers are named by the official `deconv_layers.<i>`.

    Args:
        filters: tuple of ints. Channels of each stage. Defaults to
            `(256, 128, 64)`.
        kernel_size: int. Transposed-convolution kernel, 4 (official,
            padding 1) or 2. Defaults to 4.
        use_dcn: bool. Defaults to True.

    Call arguments:
        features: the backbone's pyramid (a list; the last map is used) or
            one map.

    Example:

    >>> neck = UpConvNeck()
    >>> tuple(neck([np.zeros((1, 4, 4, 512), "float32")]).shape)
    (1, 32, 32, 64)
    """

    def __init__(self, filters=(256, 128, 64), kernel_size=4, use_dcn=True, **kwargs):
        super().__init__(**kwargs)
        filters = tuple(int(f) for f in filters)
        if not filters or any(f < 1 for f in filters):
            raise ValueError(f"`filters` must be positive ints; received {filters}.")
        if kernel_size not in (2, 4):
            raise ValueError(
                f"`kernel_size` must be 4 (the official up-convolution) or 2; received {kernel_size!r}."
            )
        self.filters = filters
        self.kernel_size = kernel_size
        self.use_dcn = use_dcn
        self.stages = []
        index = 0
        for planes in filters:
            stage = []
            if use_dcn:
                stage.append(DeformableConv2D(planes, 3, dtype=self.dtype_policy,
                                              name=official_name(f"deconv_layers.{index}")))
                stage.append(self._batch_norm(f"deconv_layers.{index + 1}"))
                stage.append(keras.layers.ReLU(dtype=self.dtype_policy,
                                               name=official_name(f"deconv_layers.{index + 2}")))
                index += 3
            stage.append(
                keras.layers.Conv2DTranspose(
                    planes, kernel_size, strides=2, padding="same", use_bias=False,
                    kernel_initializer=(
                        OfficialUpsamplingInitializer() if use_dcn
                        else keras.initializers.RandomNormal(stddev=0.001)
                    ),
                    dtype=self.dtype_policy, name=official_name(f"deconv_layers.{index}"),
                )
            )
            stage.append(self._batch_norm(f"deconv_layers.{index + 1}"))
            stage.append(keras.layers.ReLU(dtype=self.dtype_policy,
                                           name=official_name(f"deconv_layers.{index + 2}")))
            index += 3
            self.stages.append(stage)

    def _batch_norm(self, path):
        return keras.layers.BatchNormalization(
            epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, dtype=self.dtype_policy,
            name=official_name(path),
        )

    def build(self, input_shape):
        shape = input_shape[-1] if isinstance(input_shape, (list, tuple)) and isinstance(
            input_shape[0], (list, tuple)) else input_shape
        shape = tuple(shape)
        for stage in self.stages:
            for layer in stage:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, features, training=None):
        x = features[-1] if isinstance(features, (list, tuple)) else features
        for stage in self.stages:
            for layer in stage:
                if isinstance(layer, keras.layers.BatchNormalization):
                    x = layer(x, training=training)
                else:
                    x = layer(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = input_shape[-1] if isinstance(input_shape, (list, tuple)) and isinstance(
            input_shape[0], (list, tuple)) else input_shape
        batch, height, width, _ = shape
        factor = 2 ** len(self.filters)
        return (
            batch,
            None if height is None else height * factor,
            None if width is None else width * factor,
            self.filters[-1],
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"filters": list(self.filters), "kernel_size": self.kernel_size, "use_dcn": self.use_dcn}
        )
        return config
