"""Necks of CenterNet: from a feature pyramid to one stride-4 map."""

from keras_centernet.necks.upconv import UpConvNeck

__all__ = ["UpConvNeck"]
