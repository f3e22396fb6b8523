"""Keras layers as the official PyTorch modules make them, named by their official module paths.

Shared by the ResNet, DLA and hourglass backbones (and the necks' BatchNorm):
PyTorch's BatchNorm2d defaults and its symmetric convolution padding, with
every layer named `official_name(<module path>)` so that
`keras_centernet.convert` finds it.
"""

import keras

from keras_centernet.convert.official import official_name
from keras_centernet.layers.batch_normalization import OnePassBatchNormalization

# PyTorch BatchNorm2d: eps 1e-5; momentum 0.1 there is 0.9 here.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def batch_normalization(path, dtype=None):
    """A `BatchNormalization` layer with PyTorch's settings, named after official `path`.

    `OnePassBatchNormalization`: Keras' layer with its training statistics read in one pass.
    """
    return OnePassBatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, dtype=dtype, name=official_name(path)
    )


class GraphBuilder:
    """Creates layers named by official module path and applies them to symbolic tensors."""

    def __init__(self, dtype):
        self.dtype = dtype

    def conv(self, x, name, filters, kernel_size, strides=1, use_bias=False):
        if strides > 1 and kernel_size > 1:
            # PyTorch pads symmetrically; Keras' "same" pads 0 before, 1 after
            # at stride 2 and would shift the sampling grid.
            x = keras.layers.ZeroPadding2D(
                kernel_size // 2, dtype=self.dtype, name=official_name(f"{name}.pad")
            )(x)
            padding = "valid"
        else:
            # Stride 1 with odd kernels: "same" is the symmetric padding; a
            # 1x1 stride-2 projection needs none.
            padding = "same"
        return keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding,
            use_bias=use_bias, dtype=self.dtype, name=official_name(name),
        )(x)

    def batch_norm(self, x, name):
        return batch_normalization(name, self.dtype)(x)

    def relu(self, x, name):
        return keras.layers.ReLU(dtype=self.dtype, name=official_name(name))(x)

    def add(self, tensors, name):
        return keras.layers.Add(dtype=self.dtype, name=official_name(name))(tensors)

    def add_relu(self, tensors, add_name, relu_name):
        return self.relu(self.add(tensors, add_name), relu_name)
