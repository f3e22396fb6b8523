"""Writes tiny COCO-format folders for the reader tests."""

import json
import os

import numpy as np

from tests.data.images import png_bytes


def square_image(height, width, box, color=(255, 0, 0), background=(0, 0, 0)):
    """uint8 image of `background` with a `color` rectangle covering `box` (x1, y1, x2, y2)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[...] = background
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = color
    return image


def write_coco_folder(root, images, annotations, categories, extra=None):
    """Writes `images` (file name -> bytes or None for a missing file) and the JSON.

    `images` entries become `images[i]` with ids `i + 1`; `annotations` are
    `(image index, category id, [x, y, w, h])` or full dicts.

    Returns:
        `(images_dir, annotations_json)`.
    """
    images_dir = os.path.join(str(root), "images")
    os.makedirs(images_dir, exist_ok=True)
    image_entries = []
    for i, (name, contents) in enumerate(images.items()):
        if contents is not None:
            with open(os.path.join(images_dir, name), "wb") as file:
                file.write(contents)
        image_entries.append({"id": i + 1, "file_name": name, "width": 0, "height": 0})
    annotation_entries = []
    for j, annotation in enumerate(annotations):
        if isinstance(annotation, dict):
            entry = {"id": j + 1, **annotation}
        else:
            index, category_id, bbox = annotation
            entry = {"id": j + 1, "image_id": index + 1, "category_id": category_id,
                     "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
        annotation_entries.append(entry)
    data = {
        "images": image_entries,
        "annotations": annotation_entries,
        "categories": [{"id": i, "name": n} for i, n in categories],
    }
    data.update(extra or {})
    path = os.path.join(str(root), "annotations.json")
    with open(path, "w") as file:
        json.dump(data, file)
    return images_dir, path


def simple_folder(root, num_images=3, size=(48, 64)):
    """`num_images` PNGs, each with one red square of category 5 ("square")."""
    height, width = size
    images, annotations = {}, []
    for i in range(num_images):
        box = (4 + 3 * i, 6 + 2 * i, 24 + 3 * i, 30 + 2 * i)
        images[f"image_{i}.png"] = png_bytes(square_image(height, width, box))
        x1, y1, x2, y2 = box
        annotations.append((i, 5, [x1, y1, x2 - x1, y2 - y1]))
    return write_coco_folder(root, images, annotations, [(5, "square")])
