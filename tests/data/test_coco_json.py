import json
import os

import numpy as np
import pytest
import tensorflow as tf

import keras_centernet as kc  # noqa: F401  (the package must import with data)
from keras_centernet.data import coco_json
from keras_centernet.data import to_original_boxes
from tests.data.coco_folders import simple_folder
from tests.data.coco_folders import square_image
from tests.data.coco_folders import write_coco_folder
from tests.data.images import jpeg_bytes
from tests.data.images import png_bytes


def _all(dataset):
    return list(dataset.as_numpy_iterator())


def _red_extent(image):
    red = (image[..., 0] > 127) & (image[..., 1] < 127)
    rows, cols = np.nonzero(red.any(axis=1))[0], np.nonzero(red.any(axis=0))[0]
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def test_labels_class_names_and_eval_structure(tmp_path):
    image = png_bytes(square_image(48, 64, (10, 12, 30, 40)))
    images_dir, path = write_coco_folder(
        tmp_path,
        {"a.png": image, "b.png": image},
        [(0, 12, [10, 12, 20, 28]), (0, 3, [0, 0, 5, 5]), (1, 7, [1, 2, 3, 4])],
        [(7, "cat"), (3, "bird"), (12, "dog")],
    )
    ds = coco_json(images_dir, path, batch_size=2, training=False, eval_resize=False)
    assert ds.class_names == ["bird", "cat", "dog"]
    assert ds.category_ids == [3, 7, 12] and ds.num_classes == 3
    assert ds.info.category_id_to_label == {3: 0, 7: 1, 12: 2}
    ((images, y),) = _all(ds)
    # 48 x 64 padded as officially to 64 x 96, centred: offset (16, 8).
    assert images.shape == (2, 64, 96, 3) and images.dtype == np.float32
    assert y["boxes"].shape == (2, 128, 4) and y["labels"].dtype == np.int32
    np.testing.assert_array_equal(y["labels"][0, :3], [2, 0, -1])
    np.testing.assert_allclose(y["boxes"][0, 0], [26, 20, 46, 48])
    np.testing.assert_allclose(y["boxes"][0, 1], [16, 8, 21, 13])
    np.testing.assert_array_equal(y["image_id"], [1, 2])
    np.testing.assert_array_equal(y["original_size"], [[48, 64], [48, 64]])
    np.testing.assert_allclose(y["transform"][0], [[1, 0, 16], [0, 1, 8]])
    np.testing.assert_allclose(_red_extent(images[0]), [26, 20, 46, 48])
    np.testing.assert_allclose(
        to_original_boxes(y["boxes"][:, :2], y["transform"])[0], [[10, 12, 30, 40], [0, 0, 5, 5]]
    )
    assert ds.info.ground_truth["categories"][0] == {"id": 7, "name": "cat"}


def test_eval_resize_maps_back_to_original_pixels(tmp_path):
    images_dir, path = simple_folder(tmp_path, num_images=3, size=(48, 80))
    ds = coco_json(images_dir, path, batch_size=2, training=False, image_size=64)
    batches = _all(ds)
    assert [b[0].shape for b in batches] == [(2, 64, 64, 3), (1, 64, 64, 3)]
    for images, y in batches:
        for b in range(len(images)):
            # The resized red square is where the transformed box says.
            np.testing.assert_allclose(_red_extent(images[b]), y["boxes"][b, 0], atol=1.0)
    annotations = json.load(open(path))["annotations"]
    expected = np.array([[x, y_, x + w, y_ + h] for x, y_, w, h in (a["bbox"] for a in annotations)])
    got = np.concatenate(
        [to_original_boxes(y["boxes"][:, :1], y["transform"])[:, 0] for _, y in batches]
    )
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_training_batches_are_seeded_and_change_every_pass(tmp_path):
    images_dir, path = simple_folder(tmp_path, num_images=5)
    first = coco_json(images_dir, path, batch_size=2, image_size=64, seed=3)
    second = coco_json(images_dir, path, batch_size=2, image_size=64, seed=3)
    pass_1, pass_2 = _all(first), _all(first)
    assert len(pass_1) == 2  # 5 images, batches of 2, the incomplete one dropped
    images, y = pass_1[0]
    assert images.shape == (2, 64, 64, 3) and set(y) == {"boxes", "labels"}
    for (a, ya), (b, yb) in zip(pass_1, _all(second)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya["boxes"], yb["boxes"])
    assert not np.array_equal(pass_1[0][0], pass_2[0][0])


def test_unreadable_images_are_skipped_with_warnings(tmp_path, capfd):
    good = png_bytes(square_image(40, 40, (5, 5, 20, 20)))
    images = {
        "good_0.png": good,
        "missing.jpg": None,
        "corrupt.jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
        "truncated.png": good[: len(good) // 2],
        "empty.png": b"",
        "good_1.png": good,
    }
    annotations = [(i, 1, [5, 5, 15, 15]) for i in range(len(images))]
    images_dir, path = write_coco_folder(tmp_path, images, annotations, [(1, "square")])
    for training in (False, True):
        ds = coco_json(images_dir, path, batch_size=1, training=training, image_size=32, seed=0)
        for _ in range(2):
            batches = _all(ds)
            assert len(batches) == 2
            ours = [
                line for line in capfd.readouterr().err.splitlines()
                if line.startswith("WARNING keras_centernet.data")
            ]
            for name in ("missing.jpg", "corrupt.jpg", "truncated.png", "empty.png"):
                assert sum(name in line for line in ours) == 1, (name, ours)
            assert len(ours) == 5 and "skipped 4 unreadable image(s)" in ours[-1]
    ids = [y["image_id"][0] for _, y in _all(coco_json(images_dir, path, batch_size=1,
                                                        training=False, image_size=32))]
    assert ids == [1, 6]


def test_grayscale_rgba_16bit_cmyk_and_exif_images(tmp_path):
    box = (8, 6, 28, 22)
    color = square_image(32, 40, box)
    gray = (square_image(32, 40, box, color=(255, 255, 255))[..., 0])
    rgba = np.concatenate([color, np.full((32, 40, 1), 128, np.uint8)], axis=-1)
    deep = color.astype(np.uint16) * 257
    # Stored rotated by 90 degrees counter-clockwise, tagged 6 ("rotate 90
    # clockwise to view"): the annotation is in upright pixels.
    stored = np.ascontiguousarray(np.rot90(color))
    images = {
        "gray.png": png_bytes(gray),
        "rgba.png": png_bytes(rgba, mode="RGBA"),
        "deep.png": png_bytes(deep),
        "cmyk.jpg": jpeg_bytes(color, mode="CMYK", quality=100),
        "rotated.jpg": jpeg_bytes(stored, exif_orientation=6, quality=100),
    }
    x1, y1, x2, y2 = box
    annotations = [(i, 1, [x1, y1, x2 - x1, y2 - y1]) for i in range(len(images))]
    images_dir, path = write_coco_folder(tmp_path, images, annotations, [(1, "square")])
    ds = coco_json(images_dir, path, batch_size=5, training=False, eval_resize=False)
    ((batch, y),) = _all(ds)
    np.testing.assert_array_equal(y["original_size"], [[32, 40]] * 5)
    for b, name in enumerate(images):
        expected = y["boxes"][b, 0]
        image = batch[b]
        if name == "gray.png":
            mask = image[..., 0] > 127
            rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            extent = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        else:
            extent = _red_extent(image)
        np.testing.assert_allclose(extent, expected, atol=0.5, err_msg=name)


def test_bad_boxes_are_dropped_or_clipped(tmp_path):
    image = png_bytes(square_image(40, 50, (0, 0, 1, 1)))
    annotations = [
        (0, 1, [10, 10, 20, 10]),  # fine
        (0, 1, [5, 5, 0, 10]),  # zero width
        (0, 1, [5, 5, 10, -3]),  # negative height
        {"image_id": 1, "category_id": 1, "bbox": [1, 2, float("nan"), 4]},
        (0, 1, [40, -5, 20, 15]),  # partly outside: clipped to [40, 0, 50, 10]
        (0, 1, [60, 10, 10, 10]),  # wholly outside: dropped after clipping
    ]
    images_dir, path = write_coco_folder(tmp_path, {"a.png": image}, annotations, [(1, "x")])
    with pytest.warns(UserWarning, match=r"dropped 3 annotation\(s\) with a non-finite"):
        ds = coco_json(images_dir, path, batch_size=1, training=False, eval_resize=False)
    ((_, y),) = _all(ds)
    offset = y["transform"][0, :, 2]
    kept = y["boxes"][0][y["labels"][0] >= 0] - np.tile(offset, 2)
    np.testing.assert_allclose(kept, [[10, 10, 30, 20], [40, 0, 50, 10]])


def test_more_than_max_objects_keeps_the_largest(tmp_path):
    image = png_bytes(square_image(64, 64, (0, 0, 1, 1)))
    sizes = [3, 9, 5, 12, 7, 2]
    annotations = [(0, 1, [i, i, s, s]) for i, s in enumerate(sizes)]
    images_dir, path = write_coco_folder(tmp_path, {"a.png": image}, annotations, [(1, "x")])
    ds = coco_json(images_dir, path, batch_size=1, training=False, max_objects=3, image_size=64)
    ((_, y),) = _all(ds)
    assert y["boxes"].shape == (1, 3, 4)
    widths = y["boxes"][0, :, 2] - y["boxes"][0, :, 0]
    np.testing.assert_allclose(widths, [12, 9, 7])


def test_images_without_objects_kept_or_dropped(tmp_path):
    image = png_bytes(square_image(32, 32, (0, 0, 1, 1)))
    images_dir, path = write_coco_folder(
        tmp_path, {"a.png": image, "b.png": image}, [(1, 1, [2, 2, 10, 10])], [(1, "x")]
    )
    kept = _all(coco_json(images_dir, path, batch_size=2, training=False, image_size=32))
    np.testing.assert_array_equal(kept[0][1]["labels"][:, 0], [-1, 0])
    dropped = coco_json(images_dir, path, batch_size=2, training=False, drop_empty=True)
    assert dropped.info.num_examples == 1
    np.testing.assert_array_equal(_all(dropped)[0][1]["image_id"], [2])


def test_crowd_annotations_follow_the_official_code_by_default(tmp_path):
    image = png_bytes(square_image(32, 32, (0, 0, 1, 1)))
    annotations = [
        (0, 1, [2, 2, 10, 10]),
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "iscrowd": 1},
    ]
    images_dir, path = write_coco_folder(tmp_path, {"a.png": image}, annotations, [(1, "x")])
    with_crowd = _all(coco_json(images_dir, path, batch_size=1, training=False, image_size=32))
    assert (with_crowd[0][1]["labels"] >= 0).sum() == 2
    without = _all(coco_json(images_dir, path, batch_size=1, training=False, image_size=32,
                             include_crowd=False))
    assert (without[0][1]["labels"] >= 0).sum() == 1


def test_unknown_category_ids_and_category_selection(tmp_path):
    image = png_bytes(square_image(32, 32, (0, 0, 1, 1)))
    annotations = [(0, 1, [2, 2, 10, 10]), (0, 2, [3, 3, 5, 5]), (0, 99, [1, 1, 4, 4])]
    images_dir, path = write_coco_folder(
        tmp_path, {"a.png": image}, annotations, [(1, "one"), (2, "two")]
    )
    with pytest.warns(UserWarning, match=r"dropped 1 annotation\(s\) of a category id.*99"):
        ds = coco_json(images_dir, path, batch_size=1, training=False, image_size=32)
    assert (_all(ds)[0][1]["labels"] >= 0).sum() == 2
    only_two = coco_json(images_dir, path, batch_size=1, training=False, image_size=32,
                         categories=["two"])
    assert only_two.class_names == ["two"] and only_two.category_ids == [2]
    labels = _all(only_two)[0][1]["labels"][0]
    np.testing.assert_array_equal(labels[:2], [0, -1])
    gt = only_two.info.ground_truth
    assert gt["categories"] == [{"id": 2, "name": "two"}]
    assert [a["category_id"] for a in gt["annotations"]] == [2]
    with pytest.raises(ValueError, match="Category name 'three'"):
        coco_json(images_dir, path, categories=["three"])


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("images"), "`images` is missing"),
        (lambda d: d.update(annotations={}), "`annotations` must be a list"),
        (lambda d: d["images"][0].pop("file_name"), "`images[0].file_name` is missing"),
        (lambda d: d["images"][0].update(id="1"), "`images[0].id` must be an integer"),
        (lambda d: d["images"].append(dict(d["images"][0])), "`images[3].id` repeats"),
        (lambda d: d["annotations"][1].pop("bbox"), "`annotations[1].bbox` is missing"),
        (lambda d: d["annotations"][2].update(bbox=[1, 2, 3]), "`annotations[2].bbox` must be 4"),
        (lambda d: d["annotations"][0].update(category_id=None), "`annotations[0].category_id`"),
        (lambda d: d["categories"][0].pop("name"), "`categories[0].name` is missing"),
    ],
)
def test_malformed_annotations_fail_naming_file_and_field(tmp_path, mutate, field):
    images_dir, path = simple_folder(tmp_path)
    data = json.load(open(path))
    mutate(data)
    json.dump(data, open(path, "w"))
    with pytest.raises(ValueError) as error:
        coco_json(images_dir, path)
    assert path in str(error.value) and field in str(error.value)


def test_invalid_json_and_missing_paths(tmp_path):
    images_dir, path = simple_folder(tmp_path)
    with open(path, "w") as file:
        file.write('{"images": [\n  {"id": 1,, }\n]}')
    with pytest.raises(ValueError, match=r"not valid JSON .* line 2"):
        coco_json(images_dir, path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        coco_json(images_dir, os.path.join(str(tmp_path), "nope.json"))
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        coco_json(os.path.join(str(tmp_path), "no_such_dir"), path)


def test_bounding_box_format_and_argument_checks(tmp_path):
    images_dir, path = simple_folder(tmp_path, num_images=1, size=(48, 64))
    ds = coco_json(images_dir, path, batch_size=1, training=False, eval_resize=False,
                   bounding_box_format="xywh")
    ((_, y),) = _all(ds)
    # Box (4, 6, 24, 30) shifted by (16, 8), as x, y, width, height.
    np.testing.assert_allclose(y["boxes"][0, 0], [20, 14, 20, 24])
    np.testing.assert_array_equal(y["boxes"][0, 1], [0, 0, 0, 0])
    with pytest.raises(ValueError, match="bounding_box_format"):
        coco_json(images_dir, path, bounding_box_format="xyz")
    with pytest.raises(ValueError, match="batch_size"):
        coco_json(images_dir, path, batch_size=0)
    with pytest.raises(ValueError, match="image_size"):
        coco_json(images_dir, path, image_size=(0, 5))


def test_pixels_are_rgb_0_255_float32(tmp_path):
    images_dir, path = simple_folder(tmp_path, num_images=1, size=(32, 32))
    ((images, _),) = _all(coco_json(images_dir, path, batch_size=1, training=False,
                                    image_size=32))
    assert images.dtype == np.float32
    assert images.max() == 255.0 and images.min() == 0.0
    assert isinstance(images, np.ndarray) and tf.is_tensor(tf.constant(images))


def test_accelerator_mode_yields_canvases_with_boxes_on_them(tmp_path, capfd):
    images = {
        "wide.png": png_bytes(square_image(40, 56, (4, 6, 24, 30))),
        "missing.jpg": None,
        "large.png": png_bytes(square_image(100, 80, (10, 20, 50, 60))),
    }
    annotations = [(0, 1, [4, 6, 20, 24]), (1, 1, [1, 1, 5, 5]), (2, 1, [10, 20, 40, 40])]
    images_dir, path = write_coco_folder(tmp_path, images, annotations, [(1, "square")])
    ds = coco_json(images_dir, path, batch_size=2, image_size=32, seed=0, max_objects=4,
                   augment_on="accelerator", canvas_size=64)
    (canvases, targets), = _all(ds)
    assert canvases.shape == (2, 64, 64, 4) and canvases.dtype == np.uint8
    # The missing file is skipped, as on the CPU path.
    assert "missing.jpg" in capfd.readouterr().err
    by_width = {int((c[..., 3] > 0).any(axis=0).sum()): (c, b, l)
                for c, b, l in zip(canvases, targets["boxes"], targets["labels"])}
    # A 56 x 40 image fits: its pixels unscaled at the top left, alpha 255 on it.
    canvas, boxes, labels = by_width[56]
    assert (canvas[:40, :56, 3] == 255).all() and (canvas[40:, :, 3] == 0).all()
    np.testing.assert_array_equal(canvas[6:30, 4:24, 0], 255)
    np.testing.assert_allclose(boxes[0], [4, 6, 24, 30])
    np.testing.assert_array_equal(labels, [0, -1, -1, -1])
    # 80 x 100 is resized by 0.64 to 51 x 64, boxes with it.
    canvas, boxes, _ = by_width[51]
    np.testing.assert_allclose(boxes[0], [10 * 0.6375, 20 * 0.64, 50 * 0.6375, 60 * 0.64],
                               atol=1e-4)
    np.testing.assert_allclose(_red_extent(canvas), [6, 13, 32, 38], atol=1)
    with pytest.raises(ValueError, match="augment_on"):
        coco_json(images_dir, path, augment_on="gpu")
    with pytest.raises(ValueError, match="BatchAugmentation"):
        coco_json(images_dir, path, augment_on="accelerator",
                  augmentation=kc.data.Augmentation())
    # Evaluation is the same in both modes.
    plain = _all(coco_json(images_dir, path, batch_size=2, training=False, image_size=32))
    accelerated = _all(coco_json(images_dir, path, batch_size=2, training=False, image_size=32,
                                 augment_on="accelerator"))
    np.testing.assert_array_equal(plain[0][0], accelerated[0][0])
