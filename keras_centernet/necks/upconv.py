"""The up-convolution neck of the ResNet CenterNets (official `deconv_layers`)."""

import math

import keras

from keras_centernet.convert.official import official_name
from keras_centernet.layers.deformable_conv2d import DeformableConv2D
from keras_centernet.layers.official_layers import batch_normalization
from keras_centernet.layers.depthwise_conv2d_transpose import bilinear_kernel

# PyTorch BatchNorm2d: eps 1e-5; momentum 0.1 there is 0.9 here.

# Transposed-convolution kernel -> the official (padding, output_padding) of
# `_get_deconv_cfg`; each doubles the size exactly.
OFFICIAL_UPSAMPLING_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


@keras.saving.register_keras_serializable(package="keras_centernet")
class OfficialUpsamplingInitializer(keras.initializers.Initializer):
    """The official initialisation of `resnet_dcn.py`'s transposed convolutions.

    PyTorch's default (uniform within `1/sqrt(fan_in)`, with a transposed
    convolution's `fan_in` = output channels x kernel area), then the
    official `fill_up_weights`, which writes the bilinear kernel into output
    channel 0 from every input channel only (it indexes `w[c, 0]` of a
    `(in, out, k, k)` weight). Kernel layout here: `(k, k, out, in)`.

    Args:
        seed: int or `None`. Seed of the uniform part. Defaults to `None`.

    Example:

    >>> layer = keras.layers.Conv2DTranspose(
    ...     64, 4, 2, kernel_initializer=OfficialUpsamplingInitializer())
    """

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kernel_h, kernel_w, channels_out, _ = shape
        if kernel_h != kernel_w:
            raise ValueError(f"The bilinear kernel is square; received shape {shape}.")
        bound = 1.0 / math.sqrt(channels_out * kernel_h * kernel_w)
        kernel = keras.random.uniform(shape, -bound, bound, dtype=dtype, seed=self.seed)
        bilinear = keras.ops.convert_to_tensor(bilinear_kernel(kernel_h), dtype=dtype)
        channel = keras.ops.one_hot(0, channels_out, dtype=dtype)[None, None, :, None]
        return kernel * (1 - channel) + bilinear[:, :, None, None] * channel

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_centernet")
class UpConvNeck(keras.layers.Layer):
    """Up-sampling stages (x2 each) from the backbone's last map to stride 4.

    With `use_dcn=True`, the official `resnet_dcn.py` neck: per stage a
    3x3 deformable convolution (with bias) -> BN -> ReLU -> transposed
    convolution (stride 2, no bias) -> BN -> ReLU, filters 256, 128, 64;
    the transposed convolutions start as the official `fill_up_weights`
    (`OfficialUpsamplingInitializer`). With `use_dcn=False`, the official
    `msra_resnet.py` neck (the plain `res_18`): per stage transposed
    convolution -> BN -> ReLU, filters 256, 256, 256 there, initialised
    normal with standard deviation 0.001 as the official `init_weights`.
    Transposed convolutions pad as PyTorch's `ConvTranspose2d` with the
    official padding of each kernel size (4: padding 1; 3: padding 1,
    output padding 1; 2: none), so every stage doubles height and width.

    Sub-layers are named by the official `deconv_layers.<i>` indices
    (`official_name`): with DCN, stage `s` holds `6s` (DCN), `6s + 1` (BN),
    `6s + 2` (ReLU), `6s + 3` (transposed conv), `6s + 4`, `6s + 5`;
    without, `3s` (transposed conv), `3s + 1` (BN), `3s + 2` (ReLU).

    Args:
        filters: sequence of ints. Output channels of each stage. Defaults
            to `(256, 128, 64)`.
        kernel_sizes: sequence of ints in {2, 3, 4}, one per stage.
            Transposed-convolution kernels. Defaults to `(4, 4, 4)`.
        use_dcn: bool. Whether each stage starts with a deformable
            convolution. Defaults to `True`.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        features: the backbone's pyramid (a list; the last, coarsest map is
            used) or one map `(batch, height, width, channels)`.
        training: bool. Whether BatchNormalization uses batch statistics.

    Example:

    >>> import numpy as np
    >>> neck = UpConvNeck(filters=(32, 16, 8))
    >>> tuple(neck([np.zeros((1, 4, 4, 64), "float32")]).shape)
    (1, 32, 32, 8)

    Reference:
        Xiao, Wu and Wei, "Simple Baselines for Human Pose Estimation and
        Tracking", ECCV 2018 (the up-convolutions); Zhou, Wang and
        Krähenbühl, "Objects as Points", 2019 (with deformable convolutions).
    """

    def __init__(self, filters=(256, 128, 64), kernel_sizes=(4, 4, 4), use_dcn=True, **kwargs):
        super().__init__(**kwargs)
        filters, kernel_sizes = tuple(filters), tuple(kernel_sizes)
        if not filters or not all(
            isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in filters
        ):
            raise ValueError(f"`filters` must be a non-empty sequence of positive ints; received {filters}.")
        if len(kernel_sizes) != len(filters) or not all(
            k in OFFICIAL_UPSAMPLING_PADDING for k in kernel_sizes
        ):
            raise ValueError(
                f"`kernel_sizes` must hold one kernel size of {sorted(OFFICIAL_UPSAMPLING_PADDING)} "
                f"per stage of `filters` {filters}; received {kernel_sizes}."
            )
        if not isinstance(use_dcn, bool):
            raise ValueError(f"`use_dcn` must be a bool; received {use_dcn!r}.")

        # === Layers ===
        self.stages = []
        index = 0
        for planes, kernel_size in zip(filters, kernel_sizes):
            stage = []
            if use_dcn:
                stage += [
                    DeformableConv2D(
                        planes, 3, dtype=self.dtype_policy,
                        name=official_name(f"deconv_layers.{index}"),
                    ),
                    self._batch_norm(f"deconv_layers.{index + 1}"),
                    self._relu(f"deconv_layers.{index + 2}"),
                ]
                index += 3
            stage += self._upsampling(planes, kernel_size, f"deconv_layers.{index}", use_dcn)
            stage += [
                self._batch_norm(f"deconv_layers.{index + 1}"),
                self._relu(f"deconv_layers.{index + 2}"),
            ]
            index += 3
            self.stages.append(stage)

        # === Config ===
        self.filters = filters
        self.kernel_sizes = kernel_sizes
        self.use_dcn = use_dcn

    def _upsampling(self, planes, kernel_size, path, use_dcn):
        """The official `ConvTranspose2d(stride 2)`: one layer, or two where Keras pads differently."""
        if use_dcn:
            initializer = OfficialUpsamplingInitializer()
        else:
            initializer = keras.initializers.RandomNormal(stddev=0.001)
        padding, output_padding = OFFICIAL_UPSAMPLING_PADDING[kernel_size]
        # For even kernels Keras' "same" crops (k - 2) / 2 on each side of the
        # full transposed convolution, which is PyTorch's padding here; for
        # kernel 3 PyTorch crops 1 before and 0 after, Keras 0 before.
        keras_same = kernel_size % 2 == 0
        convolution = keras.layers.Conv2DTranspose(
            planes, kernel_size, strides=2, padding="same" if keras_same else "valid",
            use_bias=False, kernel_initializer=initializer, dtype=self.dtype_policy,
            name=official_name(path),
        )
        if keras_same:
            return [convolution]
        crop = (padding, padding - output_padding)
        return [
            convolution,
            keras.layers.Cropping2D((crop, crop), dtype=self.dtype_policy,
                                    name=official_name(f"{path}.crop")),
        ]

    def _batch_norm(self, path):
        return batch_normalization(path, self.dtype_policy)

    def _relu(self, path):
        return keras.layers.ReLU(dtype=self.dtype_policy, name=official_name(path))

    @staticmethod
    def _last_shape(input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[-1]
        return tuple(input_shape)

    def build(self, input_shape):
        shape = self._last_shape(input_shape)
        if len(shape) != 4 or shape[-1] is None:
            raise ValueError(
                "`UpConvNeck` takes maps (batch, height, width, channels) with known "
                f"channels; received the shape {shape}."
            )
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
        batch, height, width, _ = self._last_shape(input_shape)
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
            {
                "filters": list(self.filters),
                "kernel_sizes": list(self.kernel_sizes),
                "use_dcn": self.use_dcn,
            }
        )
        return config
