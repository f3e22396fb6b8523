"""necks of keras_centernet."""
