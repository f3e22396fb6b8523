"""keras_centernet: CenterNet ("Objects as Points") in Keras 3."""

from keras_centernet import convert
from keras_centernet import layers
from keras_centernet import models
from keras_centernet import ops
from keras_centernet.models import CenterNet
from keras_centernet.version import __version__

__all__ = ["CenterNet", "__version__", "convert", "layers", "models", "ops"]
