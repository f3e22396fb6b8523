"""The official CenterNet training augmentation, batched on the accelerator (keras.ops).

The same augmentation as `keras_centernet.data.Augmentation` (the official
`ctdet.py`: a random-crop affine warp, a horizontal flip, `color_aug`), drawn
per image but computed for a whole batch inside the compiled training step,
so that the CPU only decodes (DESIGN.md, principle 3). Backend-agnostic: it
runs under TensorFlow, JAX and PyTorch, in `jit`/XLA, with its randomness from
a `keras.random.SeedGenerator`.

The pure-math parts of the official rules (crop border, crop matrix, colour
composition, PCA lighting) are written with Python operators here and shared
with the per-image TensorFlow version in `keras_centernet/data/augment.py`,
so both follow one formula.

Images come on a fixed canvas: `(B, H, W, 3)` (the whole canvas is the image)
or `(B, H, W, 4)` whose last channel (alpha) is positive inside the image and
0 in the canvas padding, as the input pipeline's `augment_on="accelerator"`
mode makes them. The official sampling rules depend on the image's own size
(the crop scale is a multiple of its longer side, the crop centre is drawn
inside it less a border), so the alpha channel says where each image lies.
"""

import keras
from keras import ops

# `np.arange(0.6, 1.4, 0.1)` of the official random crop.
OFFICIAL_CROP_SCALES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
# The official COCO PCA of pixel colours (`datasets/dataset/coco.py`). The
# eigenvector rows are colour channels, given there for BGR images; reversed
# here to RGB.
COCO_EIGENVALUES = (0.2141788, 0.01817699, 0.00341571)
COCO_EIGENVECTORS_RGB = (
    (-0.56089297, 0.71832671, 0.41158938),
    (-0.5832747, 0.00994535, -0.81221408),
    (-0.58752847, -0.69563484, 0.41340352),
)
# `cv2.cvtColor(BGR2GRAY)` weights, written for RGB.
GRAY_WEIGHTS_RGB = (0.299, 0.587, 0.114)


# === Official rules shared with `data/augment.py` (any tensor type) ===


def official_border(border, size, where):
    """The official `_get_border`: halve `border` until `size - b > b`.

    Args:
        border: int. The official 128.
        size: int tensor of image sizes (any shape).
        where: the backend's `where(condition, x, y)` (`tf.where`,
            `keras.ops.where`).
    """
    value = border
    # `border` halves to 0 in `bit_length` steps; a halving is kept only
    # where the border does not fit yet.
    for _ in range(int(border).bit_length()):
        value = where(size - value <= value, value // 2, value)
    return value


def crop_affine(center_x, center_y, size, flipped, output_size, where):
    """The official crop `get_affine_transform(c, s, 0, output_size)`, optionally mirrored.

    The map from image pixels to output pixels is `x -> scale_x x + shift_x`,
    `y -> scale_y y + shift_y`: the centre `c` goes to the output's centre and
    the scale is `output_width / s` in both axes (as officially). A flip, as
    the official code does it (mirror the image, `x -> W - x`, then crop
    around the mirrored centre `W - c_x`), is the same window with its
    content mirrored: `x -> -factor x + output_width / 2 + factor c_x`, in
    which `W` cancels.

    Returns:
        `(scale_x, shift_x, scale_y, shift_y)`.
    """
    output_height, output_width = output_size
    factor = float(output_width) / size
    scale_x = where(flipped, -factor, factor)
    shift_x = output_width / 2.0 - scale_x * center_x
    return scale_x, shift_x, factor, output_height / 2.0 - factor * center_y


def not_rand_crop(width, height, longer, normals, scale, shift, clip):
    """The official `not_rand_crop` centre and size from three standard normals.

    `s = longer * clip(1 + scale n_2, 1 +- scale)`, `c = (w / 2, h / 2) +
    longer * clip(shift n_{0,1}, +-2 shift)`, `longer = max(w, h)`; `clip`
    is the backend's `clip(x, low, high)`.

    Returns:
        `(center_x, center_y, size)`.
    """
    center_x = width / 2.0 + longer * clip(normals[0] * shift, -2 * shift, 2 * shift)
    center_y = height / 2.0 + longer * clip(normals[1] * shift, -2 * shift, 2 * shift)
    size = longer * clip(normals[2] * scale + 1.0, 1.0 - scale, 1.0 + scale)
    return center_x, center_y, size


def color_coefficients(steps, gray_mean):
    """Composes the official brightness, contrast and saturation steps.

    Every step is affine in the pixel `x` and its (fixed, the input's) gray
    level `g`: brightness `a x`, contrast `a x + (1 - a) mean(g)`, saturation
    `a x + (1 - a) g`. Composed in order they give `alpha x + beta g + gamma`.

    Args:
        steps: three `(factor, is_contrast, is_saturation)` in the order
            applied; the indicators are floats 0/1.
        gray_mean: the mean gray level of the image.

    Returns:
        `(alpha, beta, gamma)`.
    """
    alpha, beta, gamma = 1.0, 0.0, 0.0
    for factor, is_contrast, is_saturation in steps:
        alpha = factor * alpha
        beta = factor * beta + (1.0 - factor) * is_saturation
        gamma = factor * gamma + (1.0 - factor) * gray_mean * is_contrast
    return alpha, beta, gamma


def lighting_offsets(coefficients):
    """The official PCA lighting `eigenvectors @ (eigenvalues * alpha)`, per RGB channel, x 255.

    Args:
        coefficients: three tensors, the official `alpha` (`N(0, 0.1)`).

    Returns:
        A list of three tensors, the offsets of R, G and B (0-255 scale).
    """
    return [
        255.0 * sum(row[k] * COCO_EIGENVALUES[k] * coefficients[k] for k in range(3))
        for row in COCO_EIGENVECTORS_RGB
    ]


def gray_level(image):
    """The official gray level (`cv2 BGR2GRAY`) of RGB images, last axis the channels."""
    return sum(weight * image[..., c] for c, weight in enumerate(GRAY_WEIGHTS_RGB))


def checked_augmentation_arguments(
    random_crop, crop_scales, border, scale, shift, flip_probability, color, color_strength,
    lighting_std,
):
    """The validated, normalised arguments of the official augmentation (both versions), as a dict."""
    if not 0.0 <= flip_probability <= 1.0:
        raise ValueError(f"`flip_probability` must be in [0, 1]; received {flip_probability}.")
    crop_scales = tuple(float(s) for s in crop_scales)
    if not crop_scales or min(crop_scales) <= 0:
        raise ValueError(f"`crop_scales` must be positive numbers; received {crop_scales}.")
    if scale < 0 or shift < 0 or border < 0 or color_strength < 0 or lighting_std < 0:
        raise ValueError(
            "`scale`, `shift`, `border`, `color_strength` and `lighting_std` "
            "must not be negative."
        )
    return {
        "random_crop": bool(random_crop),
        "crop_scales": crop_scales,
        "border": int(border),
        "scale": float(scale),
        "shift": float(shift),
        "flip_probability": float(flip_probability),
        "color": bool(color),
        "color_strength": float(color_strength),
        "lighting_std": float(lighting_std),
    }


# === Batched operations (keras.ops) ===


def content_boxes(images):
    """Where each image lies on its canvas: `(B, 4)` float32 `x0, y0, x1, y1` in canvas pixels.

    4-channel images: the extent of the pixels whose alpha is positive (the
    whole canvas if there are none); 3-channel images: the whole canvas.
    """
    shape = ops.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    if images.shape[-1] == 3:
        full = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0], "float32") * ops.cast(
            ops.stack([width, height, width, height]), "float32"
        )
        return ops.tile(full[None], (batch, 1))
    inside = images[..., 3] > 0
    rows = ops.any(inside, axis=2)
    empty = ops.logical_not(ops.any(rows, axis=1))
    rows = ops.cast(rows, "int32")
    cols = ops.cast(ops.any(inside, axis=1), "int32")
    x0 = ops.argmax(cols, axis=1)
    x1 = width - ops.argmax(ops.flip(cols, axis=1), axis=1)
    y0 = ops.argmax(rows, axis=1)
    y1 = height - ops.argmax(ops.flip(rows, axis=1), axis=1)
    boxes = ops.cast(ops.stack([x0, y0, x1, y1], axis=1), "float32")
    full = ops.cast(ops.stack([0, 0, width, height]), "float32")
    return ops.where(empty[:, None], full[None], boxes)


def _axis_samples(scale, shift, output_length, input_length):
    """Bilinear sources of one axis: `(B, n)` lower indices, lower and upper weights.

    Output pixel `p` (centre `p + 0.5`) samples the input at pixel-index
    position `(p + 0.5 - shift) / scale - 0.5`; a neighbour outside the input
    gets weight 0 (zeros outside, as `cv2.warpAffine(BORDER_CONSTANT)`).
    """
    centers = ops.arange(output_length, dtype="float32") + 0.5
    position = (centers[None, :] - shift[:, None]) / scale[:, None] - 0.5
    lower = ops.floor(position)
    upper_weight = position - lower
    lower_weight = 1.0 - upper_weight
    lower = ops.cast(lower, "int32")
    upper = lower + 1
    lower_weight = ops.where((lower >= 0) & (lower < input_length), lower_weight, 0.0)
    upper_weight = ops.where((upper >= 0) & (upper < input_length), upper_weight, 0.0)
    lower = ops.clip(lower, 0, input_length - 1)
    upper = ops.clip(upper, 0, input_length - 1)
    return lower, upper, lower_weight, upper_weight


def _gather_axis1(images, lower, upper, lower_weight, upper_weight):
    """`out[b, i] = wl[b, i] x[b, lower[b, i]] + wu[b, i] x[b, upper[b, i]]` along axis 1."""
    batch, length = ops.shape(images)[0], ops.shape(images)[1]
    flat = ops.reshape(images, (-1,) + tuple(images.shape[2:]))
    offsets = (ops.arange(batch, dtype="int32") * length)[:, None]
    extra = (1,) * (len(images.shape) - 2)
    low = ops.cast(ops.take(flat, lower + offsets, axis=0), "float32")
    high = ops.cast(ops.take(flat, upper + offsets, axis=0), "float32")
    return (
        ops.reshape(lower_weight, ops.shape(lower_weight) + extra) * low
        + ops.reshape(upper_weight, ops.shape(upper_weight) + extra) * high
    )


def warp_images(images, matrices, output_size):
    """Warps a batch of images, each with its axis-aligned affine map (bilinear, zeros outside).

    The batched `keras_centernet.data.warp_affine`: `matrices[b]` maps
    continuous input coordinates to continuous output coordinates and has no
    rotation or shear (a negative scale mirrors); output pixel `p` samples the
    input at `matrix^-1 (p + 0.5) - 0.5` in pixel-index units. A scale-and-
    shift warp is separable, so it runs as two gathers of rows and columns
    with their interpolation weights, linear in the pixels of the output.

    Args:
        images: tensor `(B, H, W, C)`, any real dtype.
        matrices: float32 `(B, 2, 3)`, input to output pixels, axis-aligned.
        output_size: `(height, width)`, Python ints.

    Returns:
        float32 tensor `(B, height, width, C)`.
    """
    output_height, output_width = (int(s) for s in output_size)
    matrices = ops.cast(matrices, "float32")
    height, width = ops.shape(images)[1], ops.shape(images)[2]
    x_samples = _axis_samples(matrices[:, 0, 0], matrices[:, 0, 2], output_width, width)
    y_samples = _axis_samples(matrices[:, 1, 1], matrices[:, 1, 2], output_height, height)
    # Columns first on the (B, W, H, C) transpose, then rows: each gather
    # moves whole rows of pixels.
    columns = _gather_axis1(ops.transpose(images, (0, 2, 1, 3)), *x_samples)
    return _gather_axis1(ops.transpose(columns, (0, 2, 1, 3)), *y_samples)


def color_transform_images(images, factors, order, lighting):
    """The official colour operations on a batch, each image with its random numbers.

    The batched `keras_centernet.data.augment.apply_color_transform`:
    brightness, contrast and saturation with `factors[b]` in `order[b]`
    (0 brightness, 1 contrast, 2 saturation; the gray image is the input's,
    computed once, as officially), then PCA lighting with coefficients
    `lighting[b]`. Not clipped to [0, 255], as officially.

    Args:
        images: float32 `(B, H, W, 3)`, RGB 0-255.
        factors: float32 `(B, 3)`: brightness, contrast, saturation factors.
        order: int `(B, 3)`, a permutation of 0, 1, 2 per image.
        lighting: float32 `(B, 3)`, the PCA coefficients (the official `alpha`).

    Returns:
        float32 `(B, H, W, 3)`.
    """
    images = ops.cast(images, "float32")
    factors = ops.cast(factors, "float32")
    order = ops.cast(order, "int32")
    lighting = ops.cast(lighting, "float32")
    gray = gray_level(images)
    gray_mean = ops.mean(gray, axis=(1, 2))
    steps = []
    for step in range(3):
        operation = order[:, step]
        factor = ops.take_along_axis(factors, operation[:, None], axis=1)[:, 0]
        steps.append(
            (factor, ops.cast(operation == 1, "float32"), ops.cast(operation == 2, "float32"))
        )
    alpha, beta, gamma = color_coefficients(steps, gray_mean)
    bias = ops.stack(lighting_offsets([lighting[:, k] for k in range(3)]), axis=-1)
    bias = bias + gamma[:, None]
    return (
        alpha[:, None, None, None] * images
        + beta[:, None, None, None] * gray[..., None]
        + bias[:, None, None, :]
    )


def transform_box_batch(boxes, labels, matrices, output_size):
    """Maps `xyxy` boxes through per-image axis-aligned maps, clips them, drops the empty ones.

    Args:
        boxes: float `(B, M, 4)`, `xyxy`.
        labels: int `(B, M)`, -1 for padding.
        matrices: float32 `(B, 2, 3)`.
        output_size: `(height, width)`.

    Returns:
        `(boxes (B, M, 4) float32 xyxy clipped to the output, labels (B, M)
        int32)`: a box that is empty, not finite or padding after the map gets
        label -1 and zeros.
    """
    output_height, output_width = output_size
    boxes = ops.cast(boxes, "float32")
    labels = ops.cast(labels, "int32")
    matrices = ops.cast(matrices, "float32")
    scale_x, shift_x = matrices[:, 0, 0][:, None], matrices[:, 0, 2][:, None]
    scale_y, shift_y = matrices[:, 1, 1][:, None], matrices[:, 1, 2][:, None]
    xa = scale_x * boxes[..., 0] + shift_x
    xb = scale_x * boxes[..., 2] + shift_x
    ya = scale_y * boxes[..., 1] + shift_y
    yb = scale_y * boxes[..., 3] + shift_y
    x1 = ops.clip(ops.minimum(xa, xb), 0.0, float(output_width))
    x2 = ops.clip(ops.maximum(xa, xb), 0.0, float(output_width))
    y1 = ops.clip(ops.minimum(ya, yb), 0.0, float(output_height))
    y2 = ops.clip(ops.maximum(ya, yb), 0.0, float(output_height))
    out = ops.stack([x1, y1, x2, y2], axis=-1)
    finite = ops.all(ops.isfinite(out), axis=-1)
    valid = finite & (x2 > x1) & (y2 > y1) & (labels >= 0)
    return ops.where(valid[..., None], out, 0.0), ops.where(valid, labels, -1)


def matrices_from_parameters(scale_x, shift_x, scale_y, shift_y):
    """`(B, 2, 3)` axis-aligned affine maps from their four `(B,)` parameters."""
    zeros = ops.zeros_like(scale_x)
    return ops.stack(
        [
            ops.stack([scale_x, zeros, shift_x], axis=-1),
            ops.stack([zeros, scale_y, shift_y], axis=-1),
        ],
        axis=1,
    )


@keras.saving.register_keras_serializable(package="keras_centernet")
class BatchAugmentation(keras.layers.Layer):
    """The official CenterNet training augmentation for a batch, on the accelerator.

    The same rules and constants as `keras_centernet.data.Augmentation` (the
    official `ctdet.py`), each image drawing its own: the random-crop affine
    (scale `choice(0.6, ..., 1.3) x` the image's longer side, centre uniform
    on the integer pixels of the image less the official border), or the
    `not_rand_crop` variant; a horizontal flip; brightness, contrast and
    saturation `1 + U(-0.4, 0.4)` in random order and PCA lighting
    `N(0, 0.1)` along the COCO eigenvectors. Images are warped in one
    bilinear pass to `output_size`, boxes mapped with them and clipped; a box
    that becomes empty gets label -1.

    Images are `(B, H, W, 3)` (the whole canvas is the image) or
    `(B, H, W, 4)` RGBA canvases whose alpha marks the image (the input
    pipeline's `augment_on="accelerator"`), any real dtype, 0-255.

    Pass it to `CenterNet(augmentation=...)`: the model then augments in
    training only (see `CenterNet`). On its own:
    `images, y = layer(images, {"boxes": boxes, "labels": labels})`.

    Args:
        output_size: int or `(height, width)`. Size of the augmented images
            (the model's input size).
        random_crop: bool. The official "random crop" (True) or
            `not_rand_crop` (False). Defaults to True.
        crop_scales: sequence of floats. Defaults to the official 0.6, ..., 1.3.
        border: int. The official border (128), halved until it fits.
            Defaults to 128.
        scale: float. `not_rand_crop` scale standard deviation. Defaults to 0.4.
        shift: float. `not_rand_crop` shift standard deviation. Defaults to 0.1.
        flip_probability: float. Defaults to 0.5.
        color: bool. Apply the colour augmentation. Defaults to True.
        color_strength: float. Defaults to 0.4.
        lighting_std: float. Defaults to 0.1.
        bounding_box_format: str. Format of `y["boxes"]` in and out (when
            called on its own). Defaults to `"xyxy"`.
        seed: int or None. Seeds the layer's `keras.random.SeedGenerator`.
            Defaults to None.

    Example:

    >>> layer = BatchAugmentation(output_size=64, seed=0)
    >>> images = np.zeros((2, 80, 96, 3), "float32")
    >>> y = {"boxes": np.array([[[8, 8, 40, 40]]] * 2, "float32"),
    ...      "labels": np.zeros((2, 1), "int32")}
    >>> out, out_y = layer(images, y)
    >>> tuple(out.shape)
    (2, 64, 64, 3)

    Reference:
        Zhou, Wang and Krähenbühl, "Objects as Points", arXiv:1904.07850;
        `src/lib/datasets/sample/ctdet.py` of github.com/xingyizhou/CenterNet.
    """

    def __init__(
        self,
        output_size,
        random_crop=True,
        crop_scales=OFFICIAL_CROP_SCALES,
        border=128,
        scale=0.4,
        shift=0.1,
        flip_probability=0.5,
        color=True,
        color_strength=0.4,
        lighting_std=0.1,
        bounding_box_format="xyxy",
        seed=None,
        **kwargs,
    ):
        # Sampling and interpolation stay float32 under mixed precision.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        try:
            output_size = tuple(int(s) for s in output_size)
        except (TypeError, ValueError):
            output_size = ()
        if len(output_size) != 2 or min(output_size) < 2:
            raise ValueError(
                f"`output_size` must be an int or (height, width), at least 2; "
                f"received {output_size!r}."
            )
        arguments = checked_augmentation_arguments(
            random_crop, crop_scales, border, scale, shift, flip_probability, color,
            color_strength, lighting_std,
        )

        # === Config ===
        self.output_size = output_size
        for name, value in arguments.items():
            setattr(self, name, value)
        self.bounding_box_format = bounding_box_format
        self.seed = seed

        # === State ===
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self.built = True

    def sample_parameters(self, images):
        """Draws the augmentation of every image of a batch (see `sample_for_content`)."""
        return self.sample_for_content(content_boxes(images))

    def sample_for_content(self, content):
        """Draws the augmentation of images that lie at `content` on their canvases.

        Args:
            content: float32 `(B, 4)`, `x0, y0, x1, y1` of each image on its
                canvas, in canvas pixels (`content_boxes`).

        Returns:
            dict: `matrix` float32 `(B, 2, 3)` canvas to output pixels;
            `flipped` bool `(B,)`; `color_factors` `(B, 3)`, `color_order`
            int32 `(B, 3)` and `lighting` `(B, 3)` (see
            `color_transform_images`).
        """
        content = ops.cast(content, "float32")
        batch = ops.shape(content)[0]
        x0, y0 = content[:, 0], content[:, 1]
        width, height = content[:, 2] - x0, content[:, 3] - y0
        generator = self.seed_generator
        if self.random_crop:
            choice = keras.random.randint((batch,), 0, len(self.crop_scales), seed=generator)
            scales = ops.convert_to_tensor(self.crop_scales, "float32")
            size = ops.maximum(width, height) * ops.take(scales, choice)
            center_x = self._random_center(width, keras.random.uniform((batch,), seed=generator))
            center_y = self._random_center(height, keras.random.uniform((batch,), seed=generator))
        else:
            normals = keras.random.normal((3, batch), seed=generator)
            center_x, center_y, size = not_rand_crop(
                width, height, ops.maximum(width, height), [normals[0], normals[1], normals[2]],
                self.scale, self.shift, ops.clip,
            )
        flipped = keras.random.uniform((batch,), seed=generator) < self.flip_probability
        scale_x, shift_x, scale_y, shift_y = crop_affine(
            center_x, center_y, size, flipped, self.output_size, ops.where
        )
        # The image lies at (x0, y0) on its canvas.
        matrix = matrices_from_parameters(
            scale_x, shift_x - scale_x * x0, scale_y, shift_y - scale_y * y0
        )
        strength = self.color_strength
        return {
            "matrix": matrix,
            "flipped": flipped,
            "color_factors": 1.0 + keras.random.uniform(
                (batch, 3), -strength, strength, seed=generator
            ),
            "color_order": ops.cast(
                ops.argsort(keras.random.uniform((batch, 3), seed=generator), axis=-1), "int32"
            ),
            "lighting": keras.random.normal((batch, 3), seed=generator) * self.lighting_std,
        }

    def _random_center(self, length, uniform):
        """`np.random.randint(b, length - b)`, `b` the official border of `length`."""
        border = ops.cast(
            official_border(self.border, ops.cast(length, "int32"), ops.where), "float32"
        )
        span = length - 2.0 * border
        # min(): a uniform just below 1 can round to the span itself.
        return border + ops.minimum(ops.floor(uniform * span), span - 1.0)

    def augment_images(self, images, parameters):
        """The warp (with the flip) and the colour augmentation of `sample_parameters`."""
        warped = warp_images(images[..., :3], parameters["matrix"], self.output_size)
        if not self.color:
            return warped
        return color_transform_images(
            warped, parameters["color_factors"], parameters["color_order"], parameters["lighting"]
        )

    def augment_targets(self, y, matrix, canvas_shape, bounding_box_format=None):
        """`y`'s boxes (in `bounding_box_format` on the canvas) mapped to the output.

        Returns `y` with `boxes` in `bounding_box_format` on the output and
        `labels` -1 where a box became empty; other keys unchanged.
        """
        bounding_box_format = bounding_box_format or self.bounding_box_format
        boxes = ops.cast(ops.convert_to_tensor(y["boxes"]), "float32")
        if bounding_box_format != "xyxy":
            boxes = keras.utils.bounding_boxes.convert_format(
                boxes, source=bounding_box_format, target="xyxy",
                height=canvas_shape[1], width=canvas_shape[2],
            )
        output_size = self.output_size
        boxes, labels = transform_box_batch(boxes, y["labels"], matrix, output_size)
        if bounding_box_format != "xyxy":
            boxes = keras.utils.bounding_boxes.convert_format(
                boxes, source="xyxy", target=bounding_box_format,
                height=output_size[0], width=output_size[1],
            )
            boxes = ops.where((labels >= 0)[..., None], boxes, 0.0)
        return {**y, "boxes": boxes, "labels": labels}

    def augment_batch(self, images):
        """Augments a batch and says how: `{"images": (B, h, w, 3) float32, "matrix": (B, 2, 3)}`.

        What `CenterNet.call` returns under `"augmentation"` in training, for
        `compute_loss` to map the targets with `augment_targets`.
        """
        parameters = self.sample_parameters(images)
        return {"images": self.augment_images(images, parameters), "matrix": parameters["matrix"]}

    def call(self, images, y=None):
        augmented = self.augment_batch(images)
        if y is None:
            return augmented["images"]
        return augmented["images"], self.augment_targets(y, augmented["matrix"], images.shape)

    def compute_output_shape(self, images_shape, y_shape=None):
        height, width = self.output_size
        images_shape = (images_shape[0], height, width, 3)
        if y_shape is None:
            return images_shape
        return images_shape, y_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_size": list(self.output_size),
                "random_crop": self.random_crop,
                "crop_scales": list(self.crop_scales),
                "border": self.border,
                "scale": self.scale,
                "shift": self.shift,
                "flip_probability": self.flip_probability,
                "color": self.color,
                "color_strength": self.color_strength,
                "lighting_std": self.lighting_std,
                "bounding_box_format": self.bounding_box_format,
                "seed": self.seed,
            }
        )
        return config
