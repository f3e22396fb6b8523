"""targets of keras_centernet."""
