"""backbones of keras_centernet."""
