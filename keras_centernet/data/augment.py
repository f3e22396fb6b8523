"""The official CenterNet augmentation and evaluation preprocessing (TensorFlow ops).

TensorFlow-only code, confined to `keras_centernet.data`: these functions run
inside `tf.data` maps whatever the Keras backend.

Training follows `src/lib/datasets/sample/ctdet.py` of the official code: one
affine warp to the input size whose scale `s` and centre `c` are random
("random crop": `s = max(h, w) * choice(0.6, 0.7, ..., 1.3)`, `c` uniform in
the image less a border; or the `not_rand_crop` variant: `s` scaled by
`N(1, 0.4)` clipped to [0.6, 1.4], `c` shifted by `s * N(0, 0.1)` clipped to
+-0.2 s), a horizontal flip with probability 0.5, and `color_aug` of
`src/lib/utils/image.py`: brightness, contrast and saturation factors
`1 + U(-0.4, 0.4)` in random order, then PCA lighting `N(0, 0.1)` along the
COCO eigenvectors. Evaluation follows the official `pre_process` of the
detectors: a centred resize of the longer side to the input size (the default,
`fix_res`) or, with `keep_res`, the image kept at scale 1 and centred in a
canvas padded to a multiple of 32.

Two deliberate differences from the official code, both sub-pixel or
geometric bookkeeping, not the augmentation's distribution:
- Coordinates are continuous (pixel `j` spans `[j, j + 1]`, as COCO boxes),
  so a flip maps `x` to `W - x` (the official `W - 1 - x` moves boxes one
  pixel against the flipped image), and the warp samples pixel centres
  consistently with the box transform.
- The warp and colour operations work on RGB 0-255 values; the official code
  works on BGR 0-1 values, so the lighting eigenvectors' rows are reordered to
  RGB and the lighting offset is scaled by 255. As officially, the result is
  not clipped to [0, 255].
"""

import tensorflow as tf

from keras_centernet.data.boxes import transform_boxes

# The official constants and the pure-math parts of the rules are shared with
# the batched version on the accelerator (`kc.layers.BatchAugmentation`).
from keras_centernet.layers.batch_augmentation import COCO_EIGENVALUES  # noqa: F401
from keras_centernet.layers.batch_augmentation import COCO_EIGENVECTORS_RGB  # noqa: F401
from keras_centernet.layers.batch_augmentation import GRAY_WEIGHTS_RGB
from keras_centernet.layers.batch_augmentation import OFFICIAL_CROP_SCALES
from keras_centernet.layers.batch_augmentation import checked_augmentation_arguments
from keras_centernet.layers.batch_augmentation import color_coefficients
from keras_centernet.layers.batch_augmentation import crop_affine
from keras_centernet.layers.batch_augmentation import lighting_offsets
from keras_centernet.layers.batch_augmentation import not_rand_crop
from keras_centernet.layers.batch_augmentation import official_border as shared_official_border


class Augmentation:
    """The official CenterNet training augmentation, as one object.

    Call it on one decoded image and its boxes; it returns the image warped to
    `output_size` and the boxes transformed with it (not yet clipped). Random
    numbers come from stateless ops seeded by `seed`, so the same seed gives
    the same result.

    Args:
        random_crop: bool. The official default "random crop" (True) or the
            `not_rand_crop` shift-and-scale variant (False). Defaults to True.
        crop_scales: sequence of floats. Scales of the random crop, times the
            longer image side. Defaults to the official 0.6, 0.7, ..., 1.3.
        border: int. The official border (128) kept free of crop centres,
            halved until it fits the image (`_get_border`). Defaults to 128.
        scale: float. Standard deviation of the `not_rand_crop` scale factor,
            clipped to `1 +- scale`. Defaults to 0.4.
        shift: float. Standard deviation of the `not_rand_crop` shift in units
            of the scale, clipped to `+-2 shift`. Defaults to 0.1.
        flip_probability: float. Probability of a horizontal flip. Defaults
            to 0.5.
        color: bool. Whether to apply the colour augmentation. Defaults to True.
        color_strength: float. Range of the brightness, contrast and saturation
            factors `1 + U(-strength, strength)`. Defaults to 0.4.
        lighting_std: float. Standard deviation of the PCA lighting
            coefficients. Defaults to 0.1.

    Example:

    >>> import tensorflow as tf
    >>> augmentation = Augmentation()
    >>> image = tf.zeros((48, 64, 3), tf.uint8)
    >>> boxes = tf.constant([[8.0, 8.0, 24.0, 32.0]])
    >>> out, out_boxes, matrix = augmentation(image, boxes, (64, 64), seed=[0, 1])
    >>> tuple(out.shape)
    (64, 64, 3)
    """

    def __init__(
        self,
        random_crop=True,
        crop_scales=OFFICIAL_CROP_SCALES,
        border=128,
        scale=0.4,
        shift=0.1,
        flip_probability=0.5,
        color=True,
        color_strength=0.4,
        lighting_std=0.1,
    ):
        arguments = checked_augmentation_arguments(
            random_crop, crop_scales, border, scale, shift, flip_probability, color,
            color_strength, lighting_std,
        )
        for name, value in arguments.items():
            setattr(self, name, value)

    def get_config(self):
        return {
            "random_crop": self.random_crop,
            "crop_scales": self.crop_scales,
            "border": self.border,
            "scale": self.scale,
            "shift": self.shift,
            "flip_probability": self.flip_probability,
            "color": self.color,
            "color_strength": self.color_strength,
            "lighting_std": self.lighting_std,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"Augmentation({args})"

    def sample_matrix(self, height, width, output_size, seed):
        """The random affine map (2x3, original to output pixels) and whether it flips."""
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        height_f = tf.cast(height, tf.float32)
        width_f = tf.cast(width, tf.float32)
        longer = tf.maximum(height_f, width_f)
        if self.random_crop:
            scale_seed, x_seed, y_seed = tf.unstack(
                tf.random.experimental.stateless_split(crop_seed, 3)
            )
            choice = tf.random.stateless_uniform(
                [], scale_seed, 0, len(self.crop_scales), dtype=tf.int32
            )
            size = longer * tf.gather(tf.constant(self.crop_scales, tf.float32), choice)
            center_x = _random_center(width, self.border, x_seed)
            center_y = _random_center(height, self.border, y_seed)
        else:
            center_x, center_y, size = not_rand_crop(
                width_f, height_f, longer, tf.unstack(tf.random.stateless_normal([3], crop_seed)),
                self.scale, self.shift, tf.clip_by_value,
            )
        flipped = tf.random.stateless_uniform([], flip_seed) < self.flip_probability
        # The official code flips the image and mirrors the centre: the same
        # window, its content mirrored (see `crop_affine`).
        scale_x, shift_x, scale_y, shift_y = crop_affine(
            center_x, center_y, size, flipped, output_size, tf.where
        )
        return _axis_aligned_matrix(scale_x, shift_x, scale_y, shift_y), flipped

    def __call__(self, image, boxes, output_size, seed):
        """Augments one image.

        Args:
            image: uint8 or float tensor `(H, W, 3)`, RGB 0-255.
            boxes: float32 tensor `(N, 4)`, `xyxy` in the image's pixels.
            output_size: `(height, width)` of the result.
            seed: int tensor `(2,)`, the stateless seed.

        Returns:
            `(image (out_h, out_w, 3) float32, boxes (N, 4) xyxy in output
            pixels, unclipped, matrix (2, 3) original to output pixels)`.
        """
        seed = tf.cast(seed, tf.int64)
        warp_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        shape = tf.shape(image)
        matrix, _ = self.sample_matrix(shape[0], shape[1], output_size, warp_seed)
        warped = warp_affine(image, matrix, output_size)
        if self.color:
            warped = color_augment(
                warped, color_seed, strength=self.color_strength, lighting_std=self.lighting_std
            )
        return warped, transform_boxes(boxes, matrix), matrix


def _random_center(size, border, seed):
    """`np.random.randint(b, size - b)` with `b = _get_border(border, size)`."""
    size = tf.cast(size, tf.int32)
    border = official_border(border, size)
    return tf.cast(
        tf.random.stateless_uniform([], seed, border, size - border, dtype=tf.int32), tf.float32
    )


def official_border(border, size):
    """The official `_get_border`: halve `border` until `size - b > b`."""
    return shared_official_border(border, tf.cast(size, tf.int32), tf.where)


def center_scale_matrix(center_x, center_y, size, output_size):
    """The official `get_affine_transform(c, s, 0, output_size)` (no rotation).

    It maps the centre `c` to the output's centre and scales by
    `output_width / s` (the official code scales by the width in both axes).
    """
    return _axis_aligned_matrix(
        *crop_affine(center_x, center_y, tf.cast(size, tf.float32), False, output_size, tf.where)
    )


def _axis_aligned_matrix(scale_x, shift_x, scale_y, shift_y):
    return tf.stack([tf.stack([scale_x, 0.0, shift_x]), tf.stack([0.0, scale_y, shift_y])])


def warp_affine(image, matrix, output_size):
    """Warps `image` with an axis-aligned affine `matrix` (bilinear, zeros outside).

    `matrix` maps continuous original coordinates to continuous output
    coordinates and has no rotation or shear (`matrix[0, 1] = matrix[1, 0] =
    0`; the official `ctdet.py` never rotates); a negative scale mirrors. The
    output pixel centred at `p + 0.5` samples the input at
    `matrix^-1 (p + 0.5) - 0.5` in pixel-index units, which is
    `cv2.warpAffine(..., INTER_LINEAR, BORDER_CONSTANT)` up to that half-pixel
    convention: pixels next to the border blend with the zero fill.

    A scale-and-shift warp is a crop and a resize, so it runs as one
    `crop_and_resize` (separable interpolation weights), about three times
    faster on CPU than the general `ImageProjectiveTransformV3`.

    Args:
        image: tensor `(H, W, 3)`, any real dtype.
        matrix: float32 `(2, 3)`, original to output pixels, axis-aligned.
        output_size: `(height, width)`.

    Returns:
        float32 tensor `(height, width, 3)`.

    Example:

    >>> image = tf.reshape(tf.range(16.0), (4, 4, 1)) * tf.ones((1, 1, 3))
    >>> halved = warp_affine(image, [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]], (2, 2))
    >>> halved[..., 0].numpy().tolist()  # each output pixel samples between 4 inputs
    [[2.5, 4.5], [10.5, 12.5]]
    """
    output_height, output_width = output_size
    if output_height < 2 or output_width < 2:
        raise ValueError(f"`output_size` must be at least 2 x 2; received {output_size}.")
    matrix = tf.cast(matrix, tf.float32)
    # One pixel of zeros around the image: samples within a pixel of the
    # border blend with the fill as cv2's do, instead of jumping to it.
    padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]])
    shape = tf.shape(padded)
    padded_height = tf.cast(shape[0], tf.float32)
    padded_width = tf.cast(shape[1], tf.float32)

    def sample_range(scale, shift, output_length):
        # Pixel-index positions (in the padded image) of the first and last
        # output pixel centres along one axis.
        first = (0.5 - shift) / scale + 0.5
        last = (output_length - 0.5 - shift) / scale + 0.5
        return first, last

    x_first, x_last = sample_range(matrix[0, 0], matrix[0, 2], output_width)
    y_first, y_last = sample_range(matrix[1, 1], matrix[1, 2], output_height)
    # `crop_and_resize` puts the first and last samples at `box * (size - 1)`
    # and extrapolates with zeros beyond the (padded) image.
    box = tf.stack(
        [
            y_first / (padded_height - 1.0),
            x_first / (padded_width - 1.0),
            y_last / (padded_height - 1.0),
            x_last / (padded_width - 1.0),
        ]
    )
    warped = tf.image.crop_and_resize(
        padded[None], box[None], [0], [output_height, output_width], extrapolation_value=0.0
    )[0]
    return tf.ensure_shape(warped, [output_height, output_width, 3])


def color_augment(image, seed, strength=0.4, lighting_std=0.1):
    """The official `color_aug` on an RGB 0-255 float image, with stateless randomness.

    Draws the three factors `1 + U(-strength, strength)`, a random order of
    brightness, contrast and saturation, and the lighting coefficients
    `N(0, lighting_std)`, then calls `apply_color_transform`.

    Args:
        image: float tensor `(H, W, 3)`, RGB 0-255.
        seed: int tensor `(2,)`, the stateless seed (the same seed gives the
            same jitter).
        strength: float. The range of the three factors. Defaults to 0.4
            (official).
        lighting_std: float. The standard deviation of the PCA lighting
            coefficients. Defaults to 0.1 (official).

    Returns:
        float tensor `(H, W, 3)`, not clipped (as officially).

    Example:

    >>> image = tf.fill((4, 4, 3), 128.0)
    >>> same = color_augment(image, [1, 2]), color_augment(image, [1, 2])
    >>> bool(tf.reduce_all(same[0] == same[1]))
    True
    """
    order_seed, factor_seed, lighting_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    )
    factors = 1.0 + tf.random.stateless_uniform([3], factor_seed, -strength, strength)
    order = tf.argsort(tf.random.stateless_uniform([3], order_seed))
    lighting = tf.random.stateless_normal([3], lighting_seed) * lighting_std
    return apply_color_transform(image, factors, order, lighting)


def apply_color_transform(image, factors, order, lighting):
    """The official colour operations with given random numbers.

    Brightness `x a`, contrast (blend with the mean gray level) and saturation
    (blend with the per-pixel gray level), each with its factor, applied in
    `order` (0 brightness, 1 contrast, 2 saturation); the gray image is the
    input's, computed once, as officially. Then PCA lighting adds
    `255 * eigenvectors @ (eigenvalues * lighting)` to every pixel.

    Every step is affine in the pixel and its (fixed) gray level, so the
    three compose to `alpha x + beta gray + gamma`: one 3x3 colour matrix and
    a bias, applied in a single pass over the image.

    Args:
        image: float32 `(H, W, 3)`, RGB 0-255.
        factors: float32 `(3,)`: brightness, contrast, saturation factors.
        order: int32 `(3,)`, a permutation of 0, 1, 2.
        lighting: float32 `(3,)`, the PCA coefficients (the official `alpha`).

    Returns:
        float32 `(H, W, 3)`.
    """
    image = tf.cast(image, tf.float32)
    factors = tf.cast(factors, tf.float32)
    gray_weights = tf.constant(GRAY_WEIGHTS_RGB, tf.float32)
    gray_mean = tf.tensordot(tf.reduce_mean(image, axis=[0, 1]), gray_weights, 1)
    steps = [
        (
            tf.gather(factors, order[step]),
            tf.cast(tf.equal(order[step], 1), tf.float32),
            tf.cast(tf.equal(order[step], 2), tf.float32),
        )
        for step in range(3)
    ]
    alpha, beta, gamma = color_coefficients(steps, gray_mean)
    # Rows are input channels: out_c = alpha x_c + beta sum_k w_k x_k.
    color_matrix = alpha * tf.eye(3) + beta * gray_weights[:, None] * tf.ones([1, 3])
    lighting = tf.unstack(tf.cast(lighting, tf.float32))
    bias = gamma + tf.stack(lighting_offsets(lighting))
    pixels = tf.matmul(tf.reshape(image, [-1, 3]), color_matrix) + bias
    return tf.reshape(pixels, tf.shape(image))


def eval_transform(height, width, output_size=None, size_divisor=32):
    """The official evaluation preprocessing as an affine map and its output size.

    With `output_size` (the official default, `fix_res`), the longer side is
    resized to the output width around the image centre. With
    `output_size=None` (`keep_res`), the image is kept at scale 1 and placed
    at the centre of a canvas of `(h // d + 1) * d` by `(w // d + 1) * d`
    pixels, `d = size_divisor` (the official `(h | 31) + 1`, which adds a
    full 32 when `h` is already a multiple).

    Returns:
        `(matrix (2, 3) float32 original to input pixels, (out_h, out_w) int32)`.
    """
    height_f = tf.cast(height, tf.float32)
    width_f = tf.cast(width, tf.float32)
    if output_size is not None:
        matrix = center_scale_matrix(
            width_f / 2.0, height_f / 2.0, tf.maximum(height_f, width_f), output_size
        )
        return matrix, tf.constant(output_size, tf.int32)
    out_height = (tf.cast(height, tf.int32) // size_divisor + 1) * size_divisor
    out_width = (tf.cast(width, tf.int32) // size_divisor + 1) * size_divisor
    # Official centre `(w // 2, h // 2)` mapped to `(out_w / 2, out_h / 2)`:
    # an integer translation, so the pixels are copied exactly.
    offset_x = out_width // 2 - tf.cast(width, tf.int32) // 2
    offset_y = out_height // 2 - tf.cast(height, tf.int32) // 2
    matrix = tf.stack(
        [
            tf.stack([1.0, 0.0, tf.cast(offset_x, tf.float32)]),
            tf.stack([0.0, 1.0, tf.cast(offset_y, tf.float32)]),
        ]
    )
    return matrix, tf.stack([out_height, out_width])


def eval_preprocess(image, output_size=None, size_divisor=32):
    """Applies `eval_transform` to one image.

    With `output_size`, the image is letterboxed into it (the official
    `fix_res` evaluation); without, it is zero-padded to the next multiple of
    `size_divisor` (the official `keep_res`).

    Args:
        image: tensor `(H, W, 3)`, RGB.
        output_size: `(height, width)` or None. Defaults to None.
        size_divisor: int. The network's stride, used without
            `output_size`. Defaults to 32.

    Returns:
        `(image float32 (out_h, out_w, 3), matrix (2, 3) original to input pixels)`.

    Example:

    >>> image, matrix = eval_preprocess(tf.zeros((100, 50, 3), tf.uint8), (64, 64))
    >>> tuple(image.shape), matrix.numpy().astype("float64").round(2).tolist()
    ((64, 64, 3), [[0.64, 0.0, 16.0], [0.0, 0.64, 0.0]])
    """
    shape = tf.shape(image)
    matrix, out_size = eval_transform(shape[0], shape[1], output_size, size_divisor)
    if output_size is not None:
        return warp_affine(image, matrix, output_size), matrix
    padded = tf.image.pad_to_bounding_box(
        tf.cast(image, tf.float32),
        tf.cast(matrix[1, 2], tf.int32),
        tf.cast(matrix[0, 2], tf.int32),
        out_size[0],
        out_size[1],
    )
    return padded, matrix


def place_on_canvas(image, canvas_size):
    """Puts an image at the top left of a fixed RGBA canvas, for the augmentation on the accelerator.

    What the CPU does with `augment_on="accelerator"`: the image keeps its
    pixels when it fits (the official augmentation then runs on exactly the
    official input); a larger one is resized (bilinear, keeping its aspect,
    to integer sides) to fit. The alpha channel is 255 on the image and 0 on
    the padding, which is black, so that `kc.layers.BatchAugmentation` knows
    the image's size: the official crop depends on it.

    Args:
        image: uint8 tensor `(H, W, 3)`.
        canvas_size: `(height, width)`, Python ints.

    Returns:
        `(canvas uint8 (height, width, 4), matrix (2, 3) float32 original to
        canvas pixels)`.
    """
    canvas_height, canvas_width = canvas_size
    shape = tf.shape(image)
    height_f = tf.cast(shape[0], tf.float32)
    width_f = tf.cast(shape[1], tf.float32)
    factor = tf.minimum(1.0, tf.minimum(canvas_height / height_f, canvas_width / width_f))
    new_height = tf.clip_by_value(tf.cast(tf.round(height_f * factor), tf.int32), 1, canvas_height)
    new_width = tf.clip_by_value(tf.cast(tf.round(width_f * factor), tf.int32), 1, canvas_width)

    def resized():
        pixels = tf.image.resize(image, tf.stack([new_height, new_width]), method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)

    image = tf.cond(factor < 1.0, resized, lambda: tf.cast(image, tf.uint8))
    alpha = tf.fill(tf.stack([new_height, new_width, 1]), tf.constant(255, tf.uint8))
    canvas = tf.image.pad_to_bounding_box(
        tf.concat([image, alpha], axis=-1), 0, 0, canvas_height, canvas_width
    )
    scale_x = tf.cast(new_width, tf.float32) / width_f
    scale_y = tf.cast(new_height, tf.float32) / height_f
    return tf.ensure_shape(canvas, [canvas_height, canvas_width, 4]), _axis_aligned_matrix(
        scale_x, 0.0, scale_y, 0.0
    )
