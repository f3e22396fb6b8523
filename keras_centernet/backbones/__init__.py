"""Backbones of CenterNet: feature pyramids (ResNet, DLA) and stacked hourglasses."""

from keras_centernet.backbones.applications import ApplicationBackbone
from keras_centernet.backbones.base import Backbone
from keras_centernet.backbones.dla import DLABackbone
from keras_centernet.backbones.hourglass import HourglassBackbone
from keras_centernet.backbones.resnet import ResNetBackbone

__all__ = ["ApplicationBackbone", "Backbone", "DLABackbone", "HourglassBackbone", "ResNetBackbone"]
