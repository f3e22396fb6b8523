"""Official PyTorch CenterNet checkpoints -> Keras models."""

from keras_centernet.convert.official import from_official_checkpoint
from keras_centernet.convert.official import load_official_weights
from keras_centernet.convert.official import read_checkpoint

__all__ = ["from_official_checkpoint", "load_official_weights", "read_checkpoint"]
