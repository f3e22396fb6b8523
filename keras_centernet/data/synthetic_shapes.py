"""The built-in synthetic detection dataset: shapes on textured backgrounds.

TensorFlow-only code, confined to `keras_centernet.data`: images are rendered
with TF ops inside a `tf.data` map (no Python per pixel), and the dataset feeds
`model.fit` on every Keras backend.

Each image has a textured background (a smooth random colour field, stripes
and grain), a few thin lines of clutter, and 1 to 10 shapes of five classes
(rectangle, ellipse, triangle, ring, cross) in random colours with a shading
gradient, sized log-uniformly from 8 to 200 pixels at 512 px (scaled with the
image, never under 4 pixels), painted back to front so that they occlude each
other. A shape's box is the extent of its visible part (snapped to the exact
shape edge where that edge is visible); a shape less than 30% visible is left
unannotated, as annotators would. Everything is drawn from stateless random
ops seeded by `(seed, image index)`: the same seed gives the same images.

Rendering costs more than decoding a JPEG (12 to 25 ms per 512 px image and
core on a shared 2-core machine, against 1.5 to 3 ms for a 640x480 JPEG), so a
fixed-size set keeps its rendered images in memory by default (`cache`): later
passes, and the evaluation after the ground truth was built, only augment
(`benchmarks/results/data_pipeline.md`).
"""

import math

import numpy as np
import tensorflow as tf

from keras_centernet.data.pipeline import DatasetInfo
from keras_centernet.data.pipeline import Source
from keras_centernet.data.pipeline import attach_info
from keras_centernet.data.pipeline import build_dataset
from keras_centernet.data.pipeline import normalize_image_size
from keras_centernet.data.pipeline import validate_common

SHAPE_NAMES = ("rectangle", "ellipse", "triangle", "ring", "cross")
_LINE = len(SHAPE_NAMES)
# The colours of `class_colors=True` (an easier set, where colour tells the class).
CLASS_COLORS = ((225, 35, 35), (35, 80, 235), (30, 200, 60), (240, 210, 30), (180, 50, 220))
_REFERENCE_SIZE = 512.0
_MIN_OBJECT_PIXELS = 4.0
_MAX_CLUTTER_LINES = 6
# Rendered images kept in memory by default up to this size (`cache=None`).
_AUTO_CACHE_BYTES = 4 * 2**30


def _edge_distance(x, y, ax, ay, bx, by):
    """Signed distance to the line a->b, positive on its left (inside, for our triangles)."""
    length = tf.maximum(tf.sqrt((bx - ax) ** 2 + (by - ay) ** 2), 1e-6)
    return ((bx - ax) * (y - ay) - (by - ay) * (x - ax)) / length


def _shape_distance(kind, x, y, params):
    """Signed pixel distance to the shape's outline, positive inside.

    `x` `(1, w)` and `y` `(h, 1)` are pixel centres of the shape's crop;
    `params` holds the box `x0, y0, x1, y1` and the shape's own numbers.
    """
    x0, y0, x1, y1 = params[0], params[1], params[2], params[3]
    detail, apex, flip = params[4], params[5], params[6]
    center_x, center_y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    half_w, half_h = (x1 - x0) / 2.0, (y1 - y0) / 2.0
    radius_scale = tf.minimum(half_w, half_h)

    def box_distance(left, top, right, bottom):
        return tf.minimum(tf.minimum(x - left, right - x), tf.minimum(y - top, bottom - y))

    def rectangle():
        return box_distance(x0, y0, x1, y1)

    def normalized_radius():
        return tf.sqrt(((x - center_x) / half_w) ** 2 + ((y - center_y) / half_h) ** 2)

    def ellipse():
        return (1.0 - normalized_radius()) * radius_scale

    def triangle():
        # Apex on the top edge (bottom when flipped), base on the opposite edge.
        ys = tf.where(flip > 0.5, y0 + y1 - y, y)
        apex_x = x0 + apex * (x1 - x0)
        left = _edge_distance(x, ys, x0, y1, apex_x, y0)
        right = _edge_distance(x, ys, apex_x, y0, x1, y1)
        return tf.minimum(tf.minimum(left, right), y1 - ys)

    def ring():
        r = normalized_radius()
        return tf.minimum(1.0 - r, r - detail) * radius_scale

    def cross():
        bar_w = detail * (x1 - x0) / 2.0
        bar_h = detail * (y1 - y0) / 2.0
        horizontal = box_distance(x0, center_y - bar_h, x1, center_y + bar_h)
        vertical = box_distance(center_x - bar_w, y0, center_x + bar_w, y1)
        return tf.maximum(horizontal, vertical)

    def line():
        # A segment from (x0, y0) to (x1, y1) if `flip` is 0, else from
        # (x0, y1) to (x1, y0); `detail` is its width.
        start_y = tf.where(flip > 0.5, y1, y0)
        end_y = tf.where(flip > 0.5, y0, y1)
        dx, dy = x1 - x0, end_y - start_y
        t = ((x - x0) * dx + (y - start_y) * dy) / tf.maximum(dx * dx + dy * dy, 1e-6)
        t = tf.clip_by_value(t, 0.0, 1.0)
        distance = tf.sqrt((x - x0 - t * dx) ** 2 + (y - start_y - t * dy) ** 2)
        return detail / 2.0 - distance

    distance = tf.switch_case(kind, [rectangle, ellipse, triangle, ring, cross, line])
    return tf.broadcast_to(distance, [tf.shape(y)[0], tf.shape(x)[1]])


def _background(seed, height, width):
    field_seed, base_seed, stripe_seed, grain_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)
    )
    # A base colour with a smooth variation of +-70 around it.
    base = tf.random.stateless_uniform([3], base_seed, 40.0, 215.0)
    coarse = tf.random.stateless_uniform([1, 4, 4, 3], field_seed, -70.0, 70.0)
    field = base + tf.image.resize(coarse, [height, width], method="bilinear")[0]
    stripe = tf.random.stateless_uniform([4], stripe_seed)
    angle = stripe[0] * math.pi
    period = 4.0 + 28.0 * stripe[1]
    amplitude = 30.0 * stripe[2] * tf.cast(stripe[3] < 0.6, tf.float32)
    frequency = 2.0 * math.pi / period
    phase_x = tf.cos(angle) * frequency * tf.range(width, dtype=tf.float32)[None, :]
    phase_y = tf.sin(angle) * frequency * tf.range(height, dtype=tf.float32)[:, None]
    # sin(a + b) from per-row and per-column terms: 2 (H + W) sines, not H W.
    stripes = tf.sin(phase_x) * tf.cos(phase_y) + tf.cos(phase_x) * tf.sin(phase_y)
    grain = tf.random.stateless_uniform([height, width], grain_seed, -12.0, 12.0)
    return field + (amplitude * stripes + grain)[..., None]


def render_image(seed, image_size, num_classes=5, objects_per_image=(1, 10),
                 object_size=(8, 200), min_visible=0.3, class_colors=False):
    """Renders one synthetic image and its annotations.

    Args:
        seed: int tensor `(2,)`, the stateless seed of this image.
        image_size: `(height, width)`.
        num_classes: int, 1 to 5: the first shape classes used.
        objects_per_image: `(min, max)` number of shapes.
        object_size: `(min, max)` shape size in pixels at 512 px.
        min_visible: float. Shapes less visible than this are not annotated.
        class_colors: bool. Each class painted in its own colour (`CLASS_COLORS`,
            +-30 per channel) instead of any colour. Defaults to False.

    Returns:
        dict: `image` uint8 `(H, W, 3)`, `boxes` float32 `(N, 4)` xyxy,
        `labels` int32 `(N,)`, `areas` float32 `(N,)` (visible pixels).
    """
    height, width = image_size
    seed = tf.cast(seed, tf.int64)
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 12))
    max_shapes = objects_per_image[1]
    scale = min(height, width) / _REFERENCE_SIZE
    min_size = max(object_size[0] * scale, _MIN_OBJECT_PIXELS)
    max_size = max(min(object_size[1] * scale, 0.9 * min(height, width)), min_size)

    num_shapes = tf.random.stateless_uniform(
        [], seeds[0], objects_per_image[0], max_shapes + 1, dtype=tf.int32
    )
    num_lines = tf.random.stateless_uniform([], seeds[1], 0, _MAX_CLUTTER_LINES + 1, dtype=tf.int32)
    classes = tf.random.stateless_uniform([max_shapes], seeds[2], 0, num_classes, dtype=tf.int32)
    log_size = tf.random.stateless_uniform(
        [max_shapes], seeds[3], math.log(min_size), math.log(max_size)
    )
    log_aspect = tf.random.stateless_uniform([max_shapes], seeds[4], -math.log(2.0), math.log(2.0))
    box_w = tf.clip_by_value(tf.exp(log_size + log_aspect / 2), min_size * 0.7, width - 1.0)
    box_h = tf.clip_by_value(tf.exp(log_size - log_aspect / 2), min_size * 0.7, height - 1.0)
    position = tf.random.stateless_uniform([max_shapes, 2], seeds[5])
    x0 = position[:, 0] * (width - box_w)
    y0 = position[:, 1] * (height - box_h)
    shape_params = tf.random.stateless_uniform([max_shapes, 3], seeds[6])
    # Ring inner radius 0.45-0.7, cross bar 0.25-0.45 of the size.
    detail = tf.where(
        tf.equal(classes, 3), 0.45 + 0.25 * shape_params[:, 0], 0.25 + 0.2 * shape_params[:, 0]
    )
    shapes = tf.stack(
        [x0, y0, x0 + box_w, y0 + box_h, detail, shape_params[:, 1],
         tf.cast(shape_params[:, 2] < 0.5, tf.float32)],
        axis=1,
    )

    line_points = tf.random.stateless_uniform([_MAX_CLUTTER_LINES, 4], seeds[7])
    line_x = tf.sort(line_points[:, :2] * width, axis=1)
    line_y = tf.sort(line_points[:, 2:] * height, axis=1)
    line_extra = tf.random.stateless_uniform([_MAX_CLUTTER_LINES, 2], seeds[8])
    line_width = 1.0 + 2.0 * line_extra[:, 0]
    lines = tf.stack(
        [line_x[:, 0], line_y[:, 0], line_x[:, 1], line_y[:, 1], line_width,
         tf.zeros([_MAX_CLUTTER_LINES]), tf.cast(line_extra[:, 1] < 0.5, tf.float32)],
        axis=1,
    )

    # Painted back to front: clutter lines, then shapes 0 .. n-1.
    items = tf.concat([lines[:num_lines], shapes[:num_shapes]], axis=0)
    kinds = tf.concat([tf.fill([num_lines], _LINE), classes[:num_shapes]], axis=0)
    colors = tf.random.stateless_uniform([num_lines + num_shapes, 3], seeds[9], 0.0, 255.0)
    if class_colors:
        # Shapes (not the clutter lines) in their class's colour, varied a little.
        palette = tf.gather(tf.constant(CLASS_COLORS, tf.float32), classes[:num_shapes])
        varied = tf.clip_by_value(palette + (colors[num_lines:] - 127.5) * (30.0 / 127.5), 0.0, 255.0)
        colors = tf.concat([colors[:num_lines], varied], axis=0)
    gradients = tf.random.stateless_uniform([num_lines + num_shapes, 3], seeds[10], -1.0, 1.0)
    num_items = num_lines + num_shapes

    def body(i, canvas, visible_boxes, visible_areas):
        # Front to back: item i is occluded by the items painted after it.
        # `canvas` holds the painted colour (premultiplied) and the coverage;
        # only the item's crop is read and written.
        item = items[i]
        # The crop holds the anti-aliased edge (and a line's width).
        margin = tf.maximum(item[4], 1.0)
        left = tf.maximum(tf.cast(tf.floor(item[0] - margin), tf.int32), 0)
        top = tf.maximum(tf.cast(tf.floor(item[1] - margin), tf.int32), 0)
        right = tf.minimum(tf.cast(tf.math.ceil(item[2] + margin), tf.int32), width)
        bottom = tf.minimum(tf.cast(tf.math.ceil(item[3] + margin), tf.int32), height)
        xs = (tf.cast(tf.range(left, right), tf.float32) + 0.5)[None, :]
        ys = (tf.cast(tf.range(top, bottom), tf.float32) + 0.5)[:, None]
        alpha = tf.clip_by_value(_shape_distance(kinds[i], xs, ys, item) + 0.5, 0.0, 1.0)
        crop = canvas[top:bottom, left:right]
        visible = alpha * (1.0 - crop[..., 3])

        # Shading: the colour varies by up to 25% along a random direction.
        gradient = gradients[i]
        span_x = tf.maximum(item[2] - item[0], 1.0)
        span_y = tf.maximum(item[3] - item[1], 1.0)
        ramp = gradient[0] * (xs - item[0]) / span_x + gradient[1] * (ys - item[1]) / span_y
        shade = 1.0 + 0.25 * gradient[2] * (ramp - 0.5 * (gradient[0] + gradient[1]))
        color = colors[i] * shade[..., None]

        update = tf.concat([visible[..., None] * color, visible[..., None]], axis=-1)
        # In place when the loop owns the buffer: a full-image add per item
        # made rendering four times slower.
        canvas = tf.raw_ops.TensorStridedSliceUpdate(
            input=canvas, begin=tf.stack([top, left, 0]), end=tf.stack([bottom, right, 4]),
            strides=[1, 1, 1], value=crop + update,
        )

        mask = visible > 0.5
        rows = tf.reduce_any(mask, axis=1)
        cols = tf.reduce_any(mask, axis=0)
        first_row = tf.cast(tf.argmax(tf.cast(rows, tf.int32)), tf.int32)
        last_row = tf.shape(rows)[0] - tf.cast(tf.argmax(tf.cast(rows[::-1], tf.int32)), tf.int32)
        first_col = tf.cast(tf.argmax(tf.cast(cols, tf.int32)), tf.int32)
        last_col = tf.shape(cols)[0] - tf.cast(tf.argmax(tf.cast(cols[::-1], tf.int32)), tf.int32)
        pixel_box = tf.cast(
            tf.stack([left + first_col, top + first_row, left + last_col, top + last_row]),
            tf.float32,
        )
        exact_box = item[:4]
        box = tf.where(tf.abs(pixel_box - exact_box) <= 1.0, exact_box, pixel_box)
        area = tf.reduce_sum(visible)
        fraction = area / tf.maximum(tf.reduce_sum(alpha), 1e-6)
        keep = tf.reduce_any(mask) & (fraction >= min_visible)
        visible_boxes = visible_boxes.write(i, box)
        visible_areas = visible_areas.write(i, tf.where(keep, area, -1.0))
        return i - 1, canvas, visible_boxes, visible_areas

    _, canvas, visible_boxes, visible_areas = tf.while_loop(
        lambda i, *_: i >= 0,
        body,
        [
            num_items - 1,
            tf.zeros([height, width, 4]),
            tf.TensorArray(tf.float32, size=num_items, element_shape=[4]),
            tf.TensorArray(tf.float32, size=num_items, element_shape=[]),
        ],
    )
    background = _background(seeds[11], height, width)
    image = canvas[..., :3] + (1.0 - canvas[..., 3:]) * background
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)

    boxes = visible_boxes.stack()[num_lines:]
    areas = visible_areas.stack()[num_lines:]
    labels = classes[:num_shapes]
    keep = areas >= 0
    return {
        "image": tf.ensure_shape(image, [height, width, 3]),
        "boxes": tf.reshape(tf.boolean_mask(boxes, keep), [-1, 4]),
        "labels": tf.boolean_mask(labels, keep),
        "areas": tf.boolean_mask(areas, keep),
    }


def coco_ground_truth(objects_per_image, image_size, categories):
    """The pycocotools dict of a synthetic set of fixed-size images.

    Image `index` gets id `index + 1` and file name `synthetic_{index:06d}.png`;
    annotations are numbered from 1 in order, none a crowd.

    Args:
        objects_per_image: iterable, one item per image in order, each an
            iterable of dicts with `box` (`xyxy` pixels), `category_id`,
            `area` and optionally `fields`, further COCO fields of the
            annotation (e.g. `keypoints`).
        image_size: `(height, width)`.
        categories: list of COCO category dicts.

    Returns:
        dict with `images`, `annotations` (`bbox` `xywh`) and `categories`.
    """
    height, width = image_size
    images, annotations = [], []
    for index, objects in enumerate(objects_per_image):
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": f"synthetic_{index:06d}.png",
             "width": width, "height": height}
        )
        for item in objects:
            x1, y1, x2, y2 = (float(v) for v in item["box"])
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id,
                 "category_id": int(item["category_id"]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "area": float(item["area"]), "iscrowd": 0, **item.get("fields", {})}
            )
    return {"images": images, "annotations": annotations, "categories": categories}


def _ground_truth(examples, image_size, class_names):
    """The pycocotools dict of a fixed-size synthetic set from its examples in order."""
    objects_per_image = (
        [
            {"box": box, "category_id": int(label) + 1, "area": area}
            for box, label, area in zip(example["boxes"], example["labels"], example["areas"])
        ]
        for example in examples.as_numpy_iterator()
    )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(class_names)
    ]
    return coco_ground_truth(objects_per_image, image_size, categories)


def synthetic(
    num_images=None,
    image_size=512,
    batch_size=8,
    seed=0,
    num_classes=5,
    training=True,
    max_objects=128,
    objects_per_image=(1, 10),
    object_size=(8, 200),
    min_visible=0.3,
    class_colors=False,
    augmentation=None,
    bounding_box_format="xyxy",
    repeat=False,
    cache=None,
    augment_on="cpu",
    canvas_size=None,
):
    """The built-in synthetic detection dataset (no download).

    Shapes of `num_classes` classes (rectangle, ellipse, triangle, ring, cross)
    on textured backgrounds with clutter and occlusion (see the module
    docstring). Image `i` is the same for a given `seed`, whatever the batch
    size or parallelism. In training the official augmentation runs on top;
    in evaluation images are yielded as rendered (the transform is the
    identity) with the metadata of `keras_centernet.data`'s eval structure,
    and `dataset.info.ground_truth` is the matching pycocotools dict (image
    ids `index + 1`, category ids `label + 1`, rendered on first access).

    Args:
        num_images: int or None. Images in one pass; None for an endless
            stream of new images (then there is no ground truth).
            Defaults to None.
        image_size: int or `(height, width)`. Defaults to 512.
        batch_size: int. Defaults to 8.
        seed: int. Seeds the images (and the order and augmentation).
            Defaults to 0.
        num_classes: int, 1 to 5. Defaults to 5.
        training: bool. Augmented training batches `(images, {"boxes",
            "labels"})`, or evaluation batches. Defaults to True.
        max_objects: int. Objects per image after padding. Defaults to 128.
        objects_per_image: `(min, max)` shapes per image. Defaults to (1, 10).
        object_size: `(min, max)` shape size in pixels for 512 px images,
            scaled with the image. Defaults to (8, 200).
        min_visible: float. Fraction of a shape that must be visible for it
            to be annotated. Defaults to 0.3.
        class_colors: bool. Paint each class in its own colour (red
            rectangles, blue ellipses, green triangles, yellow rings, purple
            crosses, each varied by +-30 per channel): an easier set, where
            colour as well as shape tells the class. Defaults to False (any
            colour: only the shape tells).
        augmentation: `Augmentation` or None (the official default); used in
            training. Defaults to None.
        bounding_box_format: str. Format of the yielded boxes. Defaults to
            `"xyxy"`.
        repeat: bool. With `num_images`, repeat passes endlessly (training).
            Defaults to False.
        cache: bool or None. Keep a fixed-size set's rendered images in
            memory (uint8, `num_images * height * width * 3` bytes: 1.5 GiB
            for 2000 images of 512 px), so that rendering, the slow part, runs
            once and later passes only augment. None caches when that is at
            most 4 GiB. Needs `num_images`. Defaults to None.
        augment_on: `"cpu"` or `"accelerator"`. Where the training
            augmentation runs. `"accelerator"`: the CPU only decodes and puts
            each image on a fixed canvas; batches are `(canvases uint8 (B,
            h, w, 4) RGBA, {"boxes", "labels"} on the canvas)` for a model
            with `augmentation=kc.layers.BatchAugmentation(image_size)`,
            which augments them in its training step (see
            `keras_centernet.data`). Evaluation is the same in both modes.
            Defaults to `"cpu"`.
        canvas_size: int, `(height, width)` or None. The canvas of
            `augment_on="accelerator"`. Defaults to None: the input size (the images are made at it).

    Returns:
        A `tf.data.Dataset` with `.info` (`DatasetInfo`), `.class_names`,
        `.category_ids` and `.num_classes`.

    Example:

    >>> import keras_centernet as kc
    >>> ds = kc.data.synthetic(num_images=4, image_size=64, batch_size=2, seed=0)
    >>> images, targets = next(iter(ds))
    >>> tuple(images.shape), tuple(targets["boxes"].shape)
    ((2, 64, 64, 3), (2, 128, 4))
    >>> ds.class_names
    ['rectangle', 'ellipse', 'triangle', 'ring', 'cross']
    """
    image_size = normalize_image_size(image_size)
    validate_common(batch_size, max_objects, bounding_box_format)
    if not isinstance(num_classes, (int, np.integer)) or not 1 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(
            f"`num_classes` must be an int from 1 to {len(SHAPE_NAMES)}; received {num_classes!r}."
        )
    if num_images is not None and (not isinstance(num_images, (int, np.integer)) or num_images < 1):
        raise ValueError(f"`num_images` must be None or a positive int; received {num_images!r}.")
    low, high = objects_per_image
    if not 0 <= low <= high or high < 1:
        raise ValueError(
            f"`objects_per_image` must be (min, max) with 0 <= min <= max, max >= 1; "
            f"received {objects_per_image!r}."
        )
    if not 0 < object_size[0] <= object_size[1]:
        raise ValueError(f"`object_size` must be (min, max) with 0 < min <= max; "
                         f"received {object_size!r}.")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    if cache is None:
        height, width = image_size
        cache = num_images is not None and num_images * height * width * 3 <= _AUTO_CACHE_BYTES
    elif cache and num_images is None:
        raise ValueError("`cache=True` needs `num_images`: an endless stream cannot be cached.")

    class_names = list(SHAPE_NAMES[:num_classes])

    def load(index):
        example = render_image(
            tf.stack([tf.constant(seed, tf.int64), index]), image_size, num_classes,
            (int(low), int(high)), tuple(object_size), min_visible, bool(class_colors),
        )
        example["image_id"] = index + 1
        example["index"] = index
        return example

    if num_images is not None:
        # Every image once, in index order (the ground truth's order too).
        rendered = tf.data.Dataset.range(num_images).map(
            load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        if cache:
            # Filled by the first complete pass (or the ground truth), then
            # shared by every later pass.
            rendered = rendered.cache()
    if cache:

        def elements(pass_seed, shuffle):
            if not shuffle:
                return rendered
            # A seeded new order on every pass; the augmentation stays seeded
            # by `(pass seed, index)`.
            return rendered.shuffle(num_images, seed=seed, reshuffle_each_iteration=True)

        source = Source(num_images, lambda example: example, at_input_size=True,
                        elements=elements)
    else:
        source = Source(num_images, load, at_input_size=True)
    dataset = build_dataset(
        source,
        training=training,
        batch_size=batch_size,
        image_size=image_size,
        max_objects=max_objects,
        augmentation=augmentation,
        seed=seed,
        bounding_box_format=bounding_box_format,
        repeat=repeat,
        augment_on=augment_on,
        canvas_size=canvas_size,
    )
    ground_truth = None
    if num_images is not None:
        def ground_truth():
            return _ground_truth(rendered, image_size, class_names)
    info = DatasetInfo(
        class_names,
        list(range(1, num_classes + 1)),
        num_examples=num_images,
        ground_truth=ground_truth,
        source=f"synthetic(seed={seed}, image_size={image_size})",
    )
    return attach_info(dataset, info)
