"""Backend-agnostic operations (`keras.ops` only)."""

from keras_centernet.ops.deform_conv import deform_conv2d

__all__ = ["deform_conv2d"]
