"""The synthetic stick-figure pose set: fixed by its seed, valid people and joints, the data contract."""

import numpy as np
import pytest
from pycocotools.coco import COCO

from keras_centernet.data.synthetic_pose import pose_ground_truth
from keras_centernet.data.synthetic_pose import render_synthetic_pose
from keras_centernet.data.synthetic_pose import synthetic_pose
from keras_centernet.targets.keypoints import COCO_KEYPOINT_NAMES
from keras_centernet.targets.keypoints import COCO_SKELETON


def test_images_are_fixed_by_seed_and_index():
    first = render_synthetic_pose(3, image_size=64, seed=7)
    again = render_synthetic_pose(3, image_size=64, seed=7)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other_seed = render_synthetic_pose(3, image_size=64, seed=8)[0]
    other_index = render_synthetic_pose(4, image_size=64, seed=7)[0]
    assert not np.array_equal(first[0], other_seed)
    assert not np.array_equal(first[0], other_index)
    # Image i does not depend on the set it is part of.
    images, targets = next(iter(synthetic_pose(num_images=5, image_size=64, batch_size=5, seed=7,
                                               training=False)))
    np.testing.assert_array_equal(images.numpy()[3], first[0].astype("float32"))
    count = len(first[1])
    np.testing.assert_array_equal(targets["boxes"].numpy()[3, :count], first[1])
    np.testing.assert_array_equal(targets["keypoints"].numpy()[3, :count], first[2])


@pytest.mark.parametrize("image_size", [64, (48, 80)])
def test_people_joints_and_boxes_are_valid(image_size):
    height, width = (image_size, image_size) if np.isscalar(image_size) else image_size
    total = 0
    for index in range(12):
        image, boxes, keypoints = render_synthetic_pose(index, image_size=image_size, seed=1,
                                                        people_per_image=(1, 3))
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        assert 1 <= len(boxes) <= 3 and boxes.shape[1:] == (4,) and keypoints.shape == (len(boxes), 17, 3)
        assert boxes.dtype == np.float32 and keypoints.dtype == np.float32
        total += len(boxes)
        # Boxes inside the image and not empty; largest first.
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
        assert np.all(boxes[:, 2] <= width) and np.all(boxes[:, 3] <= height)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert np.all(np.diff(areas) <= 0)
        # People do not overlap.
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                overlap_x = min(boxes[a, 2], boxes[b, 2]) - max(boxes[a, 0], boxes[b, 0])
                overlap_y = min(boxes[a, 3], boxes[b, 3]) - max(boxes[a, 1], boxes[b, 1])
                assert overlap_x <= 0 or overlap_y <= 0
        visibility = keypoints[..., 2]
        assert set(np.unique(visibility)) <= {0.0, 2.0}
        visible = visibility > 0
        x, y = keypoints[..., 0], keypoints[..., 1]
        # Visible joints lie in the image and in their person's box.
        assert np.all((x[visible] >= 0) & (x[visible] < width) & (y[visible] >= 0) & (y[visible] < height))
        inside_box = (
            (x >= boxes[:, None, 0]) & (x <= boxes[:, None, 2])
            & (y >= boxes[:, None, 1]) & (y <= boxes[:, None, 3])
        )
        assert np.all(inside_box[visible])
        # Unlabelled joints are all zeros, as COCO writes them.
        assert np.all(keypoints[~visible] == 0)
        # The hips' centre is always in the image: every person has visible joints.
        assert np.all(visible.sum(axis=1) > 0)
    assert total > 12


def test_people_are_painted_where_their_limbs_are():
    image, boxes, keypoints = render_synthetic_pose(0, image_size=96, seed=0, people_per_image=(1, 1))
    # A person is one colour: the middle of its left upper arm (shoulder 5 - elbow 7) and of its
    # hips (11 - 12) are painted alike.
    joints = keypoints[0]
    assert joints[5, 2] > 0 and joints[7, 2] > 0
    mid = (joints[5, :2] + joints[7, :2]) / 2
    stroke_color = image[int(mid[1]), int(mid[0])].astype(int)
    hips = (joints[11, :2] + joints[12, :2]) / 2
    assert np.all(image[int(hips[1]), int(hips[0])].astype(int) == stroke_color)


def test_training_batches_follow_the_data_contract():
    ds = synthetic_pose(num_images=6, image_size=64, batch_size=4, seed=0, max_objects=8)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 1  # the incomplete last batch is dropped
    images, targets = batches[0]
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 255
    assert set(targets) == {"boxes", "labels", "keypoints"}
    assert targets["boxes"].shape == (4, 8, 4) and targets["boxes"].dtype == np.float32
    assert targets["labels"].shape == (4, 8) and targets["labels"].dtype == np.int32
    assert targets["keypoints"].shape == (4, 8, 17, 3) and targets["keypoints"].dtype == np.float32
    for labels, boxes, keypoints in zip(targets["labels"], targets["boxes"], targets["keypoints"]):
        count = int(np.sum(labels >= 0))
        # People (label 0) first, then padding: label -1, zero boxes and joints.
        np.testing.assert_array_equal(labels[:count], 0)
        np.testing.assert_array_equal(labels[count:], -1)
        assert np.all(boxes[count:] == 0) and np.all(keypoints[count:] == 0)
    # Seeded: the same batches again.
    again = list(synthetic_pose(num_images=6, image_size=64, batch_size=4, seed=0,
                                max_objects=8).as_numpy_iterator())
    np.testing.assert_array_equal(again[0][0], images)
    assert ds.info.class_names == ["person"] and ds.info.category_ids == [1]


def test_evaluation_batches_and_ground_truth():
    ds = synthetic_pose(num_images=5, image_size=(48, 64), batch_size=2, seed=3, training=False)
    batches = list(ds.as_numpy_iterator())
    assert [len(b[0]) for b in batches] == [2, 2, 1]  # every image once, in order
    image_ids = np.concatenate([b[1]["image_id"] for b in batches])
    np.testing.assert_array_equal(image_ids, [1, 2, 3, 4, 5])
    targets = batches[0][1]
    assert targets["image_id"].dtype == np.int64
    np.testing.assert_array_equal(targets["original_size"], [[48, 64], [48, 64]])
    np.testing.assert_array_equal(targets["transform"], [np.eye(2, 3)] * 2)

    truth = ds.info.ground_truth
    assert [image["id"] for image in truth["images"]] == [1, 2, 3, 4, 5]
    assert all((image["height"], image["width"]) == (48, 64) for image in truth["images"])
    (category,) = truth["categories"]
    assert category["id"] == 1 and category["name"] == "person"
    assert category["keypoints"] == list(COCO_KEYPOINT_NAMES)
    assert category["skeleton"] == [[a + 1, b + 1] for a, b in COCO_SKELETON]
    # The annotations are the batches' people, boxes as xywh, joints flat.
    by_image = {}
    for annotation in truth["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for batch_images, batch_targets in batches:
        for image_id, labels, boxes, keypoints in zip(batch_targets["image_id"], batch_targets["labels"],
                                                      batch_targets["boxes"], batch_targets["keypoints"]):
            annotations = by_image[int(image_id)]
            assert len(annotations) == int(np.sum(labels >= 0))
            for annotation, box, joints in zip(annotations, boxes, keypoints):
                x1, y1, x2, y2 = box.tolist()
                np.testing.assert_allclose(annotation["bbox"], [x1, y1, x2 - x1, y2 - y1], rtol=1e-6)
                np.testing.assert_allclose(annotation["area"], (x2 - x1) * (y2 - y1), rtol=1e-5)
                np.testing.assert_allclose(annotation["keypoints"], joints.reshape(-1))
                assert annotation["num_keypoints"] == int(np.sum(joints[:, 2] > 0))
                assert annotation["category_id"] == 1 and annotation["iscrowd"] == 0
    # pycocotools reads it.
    coco = COCO()
    coco.dataset = truth
    coco.createIndex()
    assert len(coco.getAnnIds(catIds=[1])) == len(truth["annotations"])


def test_pose_ground_truth_by_hand():
    boxes = [np.array([[2.0, 4.0, 12.0, 24.0]], np.float32)]
    joints = np.zeros((1, 17, 3), np.float32)
    joints[0, 0] = (7.0, 6.0, 2.0)
    joints[0, 15] = (5.0, 22.0, 2.0)
    truth = pose_ground_truth(boxes, [joints], (32, 16))
    (annotation,) = truth["annotations"]
    assert annotation["bbox"] == [2.0, 4.0, 10.0, 20.0] and annotation["area"] == 200.0
    assert annotation["num_keypoints"] == 2 and annotation["id"] == 1 and annotation["image_id"] == 1
    assert annotation["keypoints"][:3] == [7.0, 6.0, 2.0] and annotation["keypoints"][45:48] == [5.0, 22.0, 2.0]
    assert sum(annotation["keypoints"]) == 7 + 6 + 2 + 5 + 22 + 2
    assert truth["images"] == [{"id": 1, "file_name": "synthetic_000000.png", "width": 16, "height": 32}]


def test_argument_checks():
    with pytest.raises(ValueError, match="num_images"):
        synthetic_pose(num_images=0)
    with pytest.raises(ValueError, match="people_per_image"):
        synthetic_pose(num_images=2, people_per_image=(0, 2))
    with pytest.raises(ValueError, match="people_per_image"):
        synthetic_pose(num_images=2, people_per_image=(3, 40), max_objects=32)
