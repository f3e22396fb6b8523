"""Keras layers of CenterNet."""

from keras_centernet.layers.deformable_conv2d import DeformableConv2D
from keras_centernet.layers.prediction_head import PredictionHead
from keras_centernet.layers.preprocessing import ImageNormalization

__all__ = ["DeformableConv2D", "ImageNormalization", "PredictionHead"]
