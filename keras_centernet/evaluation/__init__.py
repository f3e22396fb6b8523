"""evaluation of keras_centernet."""
