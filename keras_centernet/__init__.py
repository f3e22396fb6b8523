"""keras_centernet: CenterNet ("Objects as Points") in Keras 3."""

import importlib

from keras_centernet import backbones
from keras_centernet import convert
from keras_centernet import evaluation
from keras_centernet import layers
from keras_centernet import losses
from keras_centernet import models
from keras_centernet import necks
from keras_centernet import ops
from keras_centernet import targets
from keras_centernet.models import CenterNet
from keras_centernet.models import CenterNet3D
from keras_centernet.models import CenterNetPose
from keras_centernet.models import CenterNetTriplets
from keras_centernet.version import __version__

# TensorFlow-only parts (DESIGN.md, principle 1) load on first use, so that
# the model code imports on machines without TensorFlow (JAX or PyTorch only).
_LAZY_MODULES = ("data", "export", "visualization")


def __getattr__(name):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"keras_centernet.{name}")
    raise AttributeError(f"module 'keras_centernet' has no attribute {name!r}")


__all__ = [
    "CenterNet",
    "CenterNet3D",
    "CenterNetPose",
    "CenterNetTriplets",
    "__version__",
    "backbones",
    "convert",
    "data",
    "evaluation",
    "export",
    "layers",
    "losses",
    "models",
    "necks",
    "ops",
    "targets",
    "visualization",
]
