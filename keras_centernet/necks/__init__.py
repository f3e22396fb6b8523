"""Necks of CenterNet: from a feature pyramid to one stride-4 map."""

from keras_centernet.necks.bifpn import BiFPNNeck
from keras_centernet.necks.dla_up import DLAUpNeck
from keras_centernet.necks.dla_up import IDAUp
from keras_centernet.necks.fpn import FPNNeck
from keras_centernet.necks.ida import IDANeck
from keras_centernet.necks.upconv import UpConvNeck

__all__ = ["BiFPNNeck", "DLAUpNeck", "FPNNeck", "IDANeck", "IDAUp", "UpConvNeck"]
