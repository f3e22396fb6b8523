"""backbones of keras_centernet."""
from keras_centernet.backbones.hourglass import HourglassBackbone
