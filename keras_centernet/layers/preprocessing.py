import keras
from keras import ops

# The official COCO statistics (`opts.py`), given there in BGR order; here in RGB.
COCO_MEAN_RGB = (0.47026115, 0.44719302, 0.40789654)
COCO_STD_RGB = (0.27809835, 0.27408164, 0.28863828)


@keras.saving.register_keras_serializable(package="keras_centernet")
class ImageNormalization(keras.layers.Layer):
    """Scales RGB 0..255 pixels to the official CenterNet input: `(x / 255 - mean) / std`.

    Also checks that height and width are multiples of `size_divisor` (the
    network's total stride), raising a `ValueError` otherwise, so exported
    models take raw pixels and a wrong size fails with a clear message instead
    of a shape error deep in the network.

    Args:
        mean: three floats, RGB mean of pixels scaled to 0..1. Defaults to
            the official COCO mean.
        std: three floats, RGB standard deviation. Defaults to the official
            COCO std.
        size_divisor: int. Height and width must be multiples of it.
            Defaults to 32.

    Example:

    >>> import numpy as np
    >>> layer = ImageNormalization()
    >>> y = layer(np.full((1, 32, 32, 3), 255.0, "float32"))
    >>> tuple(y.shape)
    (1, 32, 32, 3)
    """

    def __init__(self, mean=COCO_MEAN_RGB, std=COCO_STD_RGB, size_divisor=32, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"`mean` and `std` need 3 values; received {mean}, {std}.")
        if not isinstance(size_divisor, int) or size_divisor < 1:
            raise ValueError(f"`size_divisor` must be a positive int; received {size_divisor!r}.")
        self.size_divisor = size_divisor

    def check_input_shape(self, shape):
        if len(shape) != 4 or shape[-1] not in (None, 3):
            raise ValueError(
                "Images must have shape (batch, height, width, 3), RGB; "
                f"received shape {tuple(shape)}."
            )
        for axis, size in (("height", shape[1]), ("width", shape[2])):
            if size is not None and size % self.size_divisor != 0:
                raise ValueError(
                    f"Image {axis} {size} is not a multiple of "
                    f"{self.size_divisor}, the network's stride; resize or pad "
                    f"the images (received shape {tuple(shape)})."
                )

    def build(self, input_shape):
        self.check_input_shape(input_shape)

    def call(self, images):
        self.check_input_shape(tuple(images.shape))
        scale = ops.convert_to_tensor(
            [1.0 / (255.0 * s) for s in self.std], dtype=self.compute_dtype
        )
        shift = ops.convert_to_tensor(
            [m / s for m, s in zip(self.mean, self.std)], dtype=self.compute_dtype
        )
        return ops.cast(images, self.compute_dtype) * scale - shift

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"mean": self.mean, "std": self.std, "size_divisor": self.size_divisor}
        )
        return config
