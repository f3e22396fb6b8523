"""Drawing detections on images (Pillow), for the CLI, the notebooks and quick looks."""

import colorsys

import numpy as np


def class_colors(num_classes):
    """`num_classes` distinct RGB colours (evenly spaced hues), one per class for drawing.

    Args:
        num_classes: int.

    Returns:
        list of `(r, g, b)` int tuples, 0..255.

    Example:

    >>> class_colors(2)
    [(255, 38, 38), (38, 255, 255)]
    """
    return [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(num_classes, 1), 0.85, 1.0))
        for i in range(num_classes)
    ]


def draw_detections(
    image, boxes, scores=None, labels=None, class_names=None, score_threshold=0.3, num_classes=None,
    line_width=2,
):
    """Draws `xyxy` boxes with class names and scores on an RGB image.

    Args:
        image: array `(H, W, 3)`, RGB, 0..255.
        boxes: array `(K, 4)`, `xyxy` in the image's pixels.
        scores: array `(K,)` or None (ground truth: every box drawn).
        labels: int array `(K,)` or None; negative labels are padding.
        class_names: list of str, indexed by label.
        score_threshold: float. Boxes scoring below are not drawn.
            Defaults to 0.3.
        num_classes: int. For the colours; defaults to `len(class_names)`.
        line_width: int. Defaults to 2.

    Returns:
        uint8 array `(H, W, 3)`.

    Example:

    >>> dets = model.predict(images)
    >>> picture = draw_detections(images[0], dets["boxes"][0], dets["scores"][0],
    ...                           dets["labels"][0], class_names=ds.info.class_names)
    """
    from PIL import Image
    from PIL import ImageDraw

    image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must be (H, W, 3); received shape {image.shape}.")
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    count = len(boxes)
    show_scores = scores is not None
    scores = np.ones(count) if scores is None else np.asarray(scores).reshape(-1)
    labels = np.zeros(count, int) if labels is None else np.asarray(labels).reshape(-1).astype(int)
    if num_classes is None:
        num_classes = len(class_names) if class_names else int(labels.max(initial=0)) + 1
    colors = class_colors(max(num_classes, 1))
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    for box, score, label in zip(boxes, scores, labels):
        if label < 0 or score < score_threshold or not np.all(np.isfinite(box)):
            continue
        if box[2] < box[0] or box[3] < box[1]:
            continue  # an inverted box (an untrained model's) has nothing to draw
        color = colors[label % len(colors)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line_width)
        name = class_names[label] if class_names and label < len(class_names) else str(label)
        text = f"{name} {score:.2f}" if show_scores else name
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        top_y = max(0.0, y1 - (bottom - top) - 2)
        draw.rectangle([x1, top_y, x1 + (right - left) + 4, top_y + (bottom - top) + 2], fill=color)
        draw.text((x1 + 2, top_y), text, fill=(0, 0, 0))
    return np.asarray(picture)


def image_grid(images, columns=4):
    """Tiles equally sized `(H, W, 3)` uint8 images into one picture, row by row.

    Args:
        images: list of `(H, W, 3)` arrays (cast to uint8).
        columns: int. Images per row. Defaults to 4.

    Returns:
        uint8 array `(rows * H, min(columns, N) * W, 3)`; empty cells white.

    Example:

    >>> image_grid([np.zeros((8, 8, 3))] * 5, columns=4).shape
    (16, 32, 3)
    """
    images = [np.asarray(image, np.uint8) for image in images]
    if not images:
        raise ValueError("No images to tile.")
    height, width = images[0].shape[:2]
    rows = (len(images) + columns - 1) // columns
    grid = np.full((rows * height, min(columns, len(images)) * width, 3), 255, np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * height:(row + 1) * height, column * width:(column + 1) * width] = image
    return grid


def save_image(path, image):
    """Writes an RGB uint8 image as PNG or JPEG (by the extension of `path`).

    Args:
        path: str, ending in `.png`, `.jpg` or `.jpeg`.
        image: `(H, W, 3)` array (cast to uint8).

    Example:

    >>> save_image("detections.png", draw_detections(image, boxes, scores, labels))
    """
    from PIL import Image

    Image.fromarray(np.asarray(image, np.uint8)).save(path)
