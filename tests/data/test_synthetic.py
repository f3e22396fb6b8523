import numpy as np
import pytest
import tensorflow as tf
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from keras_centernet.data import SHAPE_NAMES
from keras_centernet.data import synthetic
from keras_centernet.data.synthetic_shapes import _shape_distance
from keras_centernet.data.synthetic_shapes import render_image


def _all(dataset):
    return list(dataset.as_numpy_iterator())


def _inside(kind, points, box=(10.0, 20.0, 50.0, 40.0), detail=0.5, apex=0.5, flip=0.0):
    params = tf.constant([*box, detail, apex, flip], tf.float32)
    values = []
    for x, y in points:
        distance = _shape_distance(
            tf.constant(kind), tf.constant([[x]], tf.float32), tf.constant([[y]], tf.float32),
            params,
        )
        values.append(float(distance[0, 0]) > 0)
    return values


def test_shape_outlines_by_hand():
    # Box x 10..50, y 20..40 (centre (30, 30), half sizes 20 and 10).
    rectangle, ellipse, triangle, ring, cross = range(5)
    assert _inside(rectangle, [(11, 21), (49, 39), (9, 30), (30, 41)]) == [True, True, False, False]
    # The box's corner is outside an ellipse; (30 + 19, 30) is inside.
    assert _inside(ellipse, [(30, 30), (11, 21), (49, 30), (30, 39.5)]) == [True, False, True, True]
    # Ring of inner radius 0.5: the centre is the hole; radius 0.75 is paint.
    assert _inside(ring, [(30, 30), (45, 30), (30, 37.5), (11, 21)]) == [False, True, True, False]
    # Cross with bars 0.5 of the size: the arms' ends are in, the corners out.
    assert _inside(cross, [(30, 30), (11, 30), (30, 21), (12, 22), (48, 38)]) == [
        True, True, True, False, False
    ]
    # Triangle with apex at the top centre: bottom corners in, top corners out.
    assert _inside(triangle, [(30, 22), (11, 39.5), (49, 39.5), (12, 21), (48, 21)]) == [
        True, True, True, False, False
    ]
    # Flipped: apex at the bottom.
    assert _inside(triangle, [(30, 38), (12, 39), (11, 20.5)], flip=1.0) == [True, False, True]


def test_batches_and_class_names():
    ds = synthetic(num_images=6, image_size=64, batch_size=3, seed=0, num_classes=3)
    assert ds.class_names == list(SHAPE_NAMES[:3]) and ds.category_ids == [1, 2, 3]
    batches = _all(ds)
    assert len(batches) == 2 and int(ds.cardinality()) == 2
    # Evaluation keeps the last incomplete batch: 7 images in batches of 3.
    evaluation = synthetic(num_images=7, image_size=32, batch_size=3, seed=0, training=False)
    assert int(evaluation.cardinality()) == 3 and len(_all(evaluation)) == 3
    images, y = batches[0]
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.float32
    assert y["boxes"].shape == (3, 128, 4) and y["labels"].shape == (3, 128)
    labels = np.concatenate([b[1]["labels"].ravel() for b in batches])
    assert labels.max() <= 2 and labels.min() >= -1 and (labels >= 0).any()


def test_images_are_fixed_by_seed_and_index():
    a = _all(synthetic(num_images=4, image_size=48, batch_size=2, seed=5, training=False))
    b = _all(synthetic(num_images=4, image_size=48, batch_size=4, seed=5, training=False))
    c = _all(synthetic(num_images=4, image_size=48, batch_size=4, seed=6, training=False))
    np.testing.assert_array_equal(np.concatenate([a[0][0], a[1][0]]), b[0][0])
    np.testing.assert_array_equal(
        np.concatenate([a[0][1]["boxes"], a[1][1]["boxes"]]), b[0][1]["boxes"]
    )
    assert not np.array_equal(b[0][0], c[0][0])
    images = b[0][0]
    assert images.min() >= 0 and images.max() <= 255
    np.testing.assert_array_equal(images, np.round(images))


def test_cached_images_are_the_rendered_ones():
    cached = synthetic(num_images=3, image_size=40, batch_size=3, seed=4, training=False,
                       cache=True)
    ground_truth = cached.info.ground_truth  # fills the cache
    ((images, y),) = _all(cached)
    ((images_fresh, y_fresh),) = _all(
        synthetic(num_images=3, image_size=40, batch_size=3, seed=4, training=False, cache=False)
    )
    np.testing.assert_array_equal(images, images_fresh)
    np.testing.assert_array_equal(y["boxes"], y_fresh["boxes"])
    assert len(ground_truth["images"]) == 3
    with pytest.raises(ValueError, match="cache"):
        synthetic(cache=True)


def test_boxes_are_valid_and_objects_per_image_respected():
    ds = synthetic(num_images=8, image_size=96, batch_size=8, seed=1, training=False,
                   objects_per_image=(2, 4))
    ((images, y),) = _all(ds)
    valid = y["labels"] >= 0
    assert (valid.sum(axis=1) <= 4).all() and valid.sum() >= 8
    boxes = y["boxes"][valid]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 96).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    # 8 to 200 px at 512 px is 4 (the floor) to 37.5 px at 96 px; occlusion
    # only shrinks boxes.
    assert sizes.max() <= 96 * 200 / 512 * np.sqrt(2) + 1
    np.testing.assert_array_equal(y["image_id"], np.arange(1, 9))
    np.testing.assert_allclose(y["transform"][0], [[1, 0, 0], [0, 1, 0]])


def test_ground_truth_matches_the_eval_dataset_and_pycocotools():
    ds = synthetic(num_images=5, image_size=64, batch_size=5, seed=2, training=False)
    gt = ds.info.ground_truth
    ((_, y),) = _all(ds)
    assert [image["id"] for image in gt["images"]] == [1, 2, 3, 4, 5]
    for b in range(5):
        annotations = [a for a in gt["annotations"] if a["image_id"] == b + 1]
        boxes = np.array([[x, y_, x + w, y_ + h] for x, y_, w, h in (a["bbox"] for a in annotations)])
        labels = np.array([a["category_id"] - 1 for a in annotations])
        kept = y["labels"][b] >= 0
        order = np.lexsort(boxes.T[::-1])
        mine = y["boxes"][b][kept]
        np.testing.assert_allclose(mine[np.lexsort(mine.T[::-1])], boxes[order], atol=1e-4)
        assert sorted(labels) == sorted(y["labels"][b][kept])
    # The ground truth scored as detections gives AP 1: a well-formed dict.
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    detections = coco.loadRes(
        [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
          "score": 1.0} for a in gt["annotations"]]
    )
    evaluator = COCOeval(coco, detections, "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


@pytest.mark.parametrize("cache", [True, False])
def test_training_batches_are_fixed_by_seed(cache):
    def first_batches(seed):
        ds = synthetic(num_images=4, image_size=48, batch_size=2, seed=seed, repeat=True,
                       cache=cache)
        return _all(ds.take(4))

    a, b, c = first_batches(3), first_batches(3), first_batches(4)
    for (images_a, y_a), (images_b, y_b) in zip(a, b):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(y_a["boxes"], y_b["boxes"])
        np.testing.assert_array_equal(y_a["labels"], y_b["labels"])
    assert not np.array_equal(a[0][0], c[0][0])
    # Passes 1 and 2 show the same four images with new augmentations.
    assert not np.array_equal(np.concatenate([a[0][0], a[1][0]]),
                              np.concatenate([a[2][0], a[3][0]]))


def test_endless_stream_and_training_augmentation():
    ds = synthetic(image_size=64, batch_size=2, seed=0)
    batches = _all(ds.take(3))
    assert len(batches) == 3
    assert not np.array_equal(batches[0][0], batches[1][0])
    with pytest.raises(ValueError, match="No COCO ground truth"):
        ds.info.ground_truth


def test_render_image_alone():
    render = tf.function(lambda seed: render_image(seed, (128, 128)))
    render(tf.constant([0, 0], tf.int64))
    example = render(tf.constant([0, 1], tf.int64))
    assert example["image"].shape == (128, 128, 3)
    assert example["boxes"].shape[0] == example["labels"].shape[0] == example["areas"].shape[0]


def test_argument_checks():
    with pytest.raises(ValueError, match="num_classes"):
        synthetic(num_classes=6)
    with pytest.raises(ValueError, match="num_images"):
        synthetic(num_images=0)
    with pytest.raises(ValueError, match="objects_per_image"):
        synthetic(objects_per_image=(3, 1))


def test_class_colors_paint_each_class_in_its_colour():
    """`class_colors=True`: a shape's pixels are its class's colour (+-30 per channel, shaded)."""
    from keras_centernet.data.synthetic_shapes import CLASS_COLORS

    checked = 0
    for index in range(12):
        example = render_image(tf.constant([3, index], tf.int64), (128, 128), num_classes=5,
                               objects_per_image=(1, 1), object_size=(200, 300), class_colors=True)
        image = example["image"].numpy().astype(np.float32)
        for box, label in zip(example["boxes"].numpy(), example["labels"].numpy()):
            x0, y0, x1, y1 = box
            # The centre of a filled shape (not rings, which are hollow there).
            if label == 3:
                continue
            cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
            centre = image[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(0)
            expected = np.array(CLASS_COLORS[label], np.float32)
            # +-30 of variation; the shading is 1 at the box centre and changes
            # by under 1% a pixel around it (boxes over 45 px here).
            assert np.all(np.abs(centre - expected) <= 30 + 4), (label, centre, expected)
            checked += 1
    assert checked >= 5
