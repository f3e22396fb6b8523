"""export of keras_centernet."""
