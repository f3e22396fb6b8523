"""data of keras_centernet."""
