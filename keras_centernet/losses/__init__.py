"""losses of keras_centernet."""
