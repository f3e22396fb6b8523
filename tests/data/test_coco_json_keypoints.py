"""COCO person keypoints through `coco_json(keypoints=True)`: joints mapped with the boxes, flips, errors, OKS."""

import json

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.data import coco_json
from keras_centernet.data.augment import Augmentation
from keras_centernet.data.coco_json_reader import keypoint_flip_pairs
from keras_centernet.evaluation.keypoints import KEYPOINT_STAT_NAMES
from keras_centernet.targets.keypoints import COCO_FLIP_PAIRS
from keras_centernet.targets.keypoints import COCO_KEYPOINT_NAMES
from keras_centernet.targets.keypoints import COCO_SKELETON
from tests.data.coco_folders import write_coco_folder
from tests.data.images import png_bytes

PERSON = {
    "id": 1, "name": "person", "supercategory": "person",
    "keypoints": list(COCO_KEYPOINT_NAMES),
    "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON],
}
# Joint indices (COCO order).
LEFT_EAR, RIGHT_EAR, LEFT_WRIST, RIGHT_WRIST, RIGHT_KNEE, LEFT_ANKLE = 3, 4, 9, 10, 14, 15

# Image a.png (48 x 64): person A, box (8, 6)-(28, 42); ears unlabelled, the right knee
# unlabelled but with junk coordinates (must read as zeros), the left ankle labelled at
# x = -2, outside the image.
JOINTS_A = np.array([
    [18, 9, 2], [20, 8, 2], [16, 8, 2], [0, 0, 0], [0, 0, 0],
    [24, 14, 2], [12, 14, 2], [26, 20, 1], [10, 20, 2],
    [27, 26, 2], [9, 26, 2], [22, 28, 2], [14, 28, 2],
    [23, 35, 2], [17, 35, 0], [-2, 40, 1], [13, 41, 2],
], np.float64)
# Person B of a.png, box (36, 4)-(60, 44): no labelled joint (num_keypoints 0).
# Image b.png (64 x 40): person C, box (4, 8)-(34, 58), all 17 joints labelled; its left
# wrist is far left (x = 6), its right wrist far right (x = 32).
JOINTS_C = np.array([
    [19, 12, 2], [21, 11, 2], [17, 11, 2], [23, 12, 2], [15, 12, 2],
    [26, 20, 2], [12, 20, 2], [10, 26, 2], [28, 26, 2],
    [6, 30, 2], [32, 30, 2], [22, 36, 2], [16, 36, 2],
    [23, 46, 2], [15, 46, 1], [24, 55, 2], [14, 55, 2],
], np.float64)
BOX_A, BOX_B, BOX_C = (8, 6, 28, 42), (36, 4, 60, 44), (4, 8, 34, 58)
CROWD_BOX = (0, 44, 64, 48)


def _person_image(height, width, boxes):
    """Gray image; each box painted red on its left half and green on its right half."""
    image = np.full((height, width, 3), 128, np.uint8)
    for x1, y1, x2, y2 in boxes:
        middle = (x1 + x2) // 2
        image[y1:y2, x1:middle] = (230, 20, 20)
        image[y1:y2, middle:x2] = (20, 230, 20)
    return image


def _annotation(index, box, joints, iscrowd=0, num_keypoints=True):
    x1, y1, x2, y2 = box
    entry = {
        "image_id": index + 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": (x2 - x1) * (y2 - y1), "iscrowd": iscrowd,
        "keypoints": [float(v) if k % 3 < 2 else int(v) for k, v in enumerate(np.ravel(joints))],
    }
    if num_keypoints:
        entry["num_keypoints"] = int(np.sum(np.asarray(joints)[:, 2] > 0))
    return entry


def write_pose_folder(root, outside_joint=True):
    """a.png: people A, B and a crowd; b.png: person C (no `num_keypoints`); c.png: nobody.

    Returns `(images_dir, annotations_json)`.
    """
    joints_a = JOINTS_A.copy()
    if not outside_joint:
        joints_a[LEFT_ANKLE] = (12, 40, 1)
    images = {
        "a.png": png_bytes(_person_image(48, 64, [BOX_A, BOX_B])),
        "b.png": png_bytes(_person_image(64, 40, [BOX_C])),
        "c.png": png_bytes(np.full((32, 32, 3), 90, np.uint8)),
    }
    annotations = [
        _annotation(0, BOX_A, joints_a),
        _annotation(0, BOX_B, np.zeros((17, 3))),
        _annotation(0, CROWD_BOX, np.zeros((17, 3)), iscrowd=1),
        _annotation(1, BOX_C, JOINTS_C, num_keypoints=False),
    ]
    images_dir, path = write_coco_folder(root, images, annotations, [])
    data = json.load(open(path))
    data["categories"] = [PERSON]
    json.dump(data, open(path, "w"))
    return images_dir, path


def mapped_by_hand(joints, scale_x, shift_x, scale_y, shift_y, width, height, flipped=False):
    """Joints through `x -> scale_x x + shift_x`, `y -> scale_y y + shift_y`, written out plainly:
    unlabelled or off-image joints zeros, left and right swapped when `flipped`."""
    out = np.zeros((17, 3))
    for j, (x, y, v) in enumerate(joints):
        new_x, new_y = scale_x * x + shift_x, scale_y * y + shift_y
        if v > 0 and 0 <= new_x < width and 0 <= new_y < height:
            out[j] = (new_x, new_y, v)
    if flipped:
        for left, right in COCO_FLIP_PAIRS:
            out[[left, right]] = out[[right, left]]
    return out


def _batches(dataset):
    return list(dataset.as_numpy_iterator())


def test_eval_batches_hold_the_joints_mapped_by_the_letterbox(tmp_path):
    images_dir, path = write_pose_folder(tmp_path)
    ds = coco_json(images_dir, path, batch_size=3, training=False, image_size=96, max_objects=8,
                   keypoints=True)
    ((images, y),) = _batches(ds)
    assert y["keypoints"].shape == (3, 8, 17, 3) and y["keypoints"].dtype == np.float32
    # a.png 48 x 64 into 96 x 96: scale 96 / 64 = 1.5, centred: shift (0, 48 - 1.5 * 24 = 12).
    np.testing.assert_allclose(y["transform"][0], [[1.5, 0, 0], [0, 1.5, 12]])
    # Objects largest first: B (24 x 40) then A (20 x 36); the crowd is left out.
    np.testing.assert_array_equal(y["labels"][0], [0, 0, -1, -1, -1, -1, -1, -1])
    np.testing.assert_allclose(y["boxes"][0, :2], [[54, 18, 90, 78], [12, 21, 42, 75]])
    np.testing.assert_array_equal(y["keypoints"][0, 0], np.zeros((17, 3)))  # B: none labelled
    expected_a = mapped_by_hand(JOINTS_A, 1.5, 0, 1.5, 12, 96, 96)
    np.testing.assert_allclose(y["keypoints"][0, 1], expected_a, atol=1e-4)
    # Spelled out: the nose (18, 9) -> (27, 25.5); the left ankle at x = -2 lands at x = -3,
    # off the image: zeros; the unlabelled right knee's junk coordinates are zeros.
    np.testing.assert_allclose(y["keypoints"][0, 1, 0], [27, 25.5, 2], atol=1e-4)
    np.testing.assert_array_equal(y["keypoints"][0, 1, LEFT_ANKLE], [0, 0, 0])
    np.testing.assert_array_equal(y["keypoints"][0, 1, RIGHT_KNEE], [0, 0, 0])
    np.testing.assert_array_equal(y["keypoints"][0, 2:], 0.0)
    # b.png 64 x 40: scale 1.5, shift (48 - 1.5 * 20 = 18, 0).
    np.testing.assert_allclose(y["keypoints"][1, 0], mapped_by_hand(JOINTS_C, 1.5, 18, 1.5, 0, 96, 96),
                               atol=1e-4)
    np.testing.assert_allclose(y["keypoints"][1, 0, LEFT_WRIST], [27, 45, 2], atol=1e-4)
    # c.png has nobody: all padding.
    assert np.all(y["labels"][2] == -1) and np.all(y["keypoints"][2] == 0)

    # keep_res: a.png centred unscaled in 64 x 96, offset (48 - 32, 32 - 24) = (16, 8); the left
    # ankle (-2, 40) is now on the padded canvas at (14, 48), so it stays labelled.
    ds = coco_json(images_dir, path, batch_size=1, training=False, eval_resize=False,
                   max_objects=8, keypoints=True)
    images, y = _batches(ds)[0]
    assert images.shape == (1, 64, 96, 3)
    expected_a = mapped_by_hand(JOINTS_A, 1, 16, 1, 8, 96, 64)
    np.testing.assert_allclose(y["keypoints"][0, 1], expected_a, atol=1e-4)
    np.testing.assert_allclose(y["keypoints"][0, 1, LEFT_ANKLE], [14, 48, 1], atol=1e-4)

    # With the crowd as an object (64 x 4, the smallest): third, without joints.
    ds = coco_json(images_dir, path, batch_size=1, training=False, image_size=96, max_objects=8,
                   keypoints=True, include_crowd=True)
    _, y = _batches(ds)[0]
    np.testing.assert_array_equal(y["labels"][0, :4], [0, 0, 0, -1])
    np.testing.assert_allclose(y["boxes"][0, 2], [0, 78, 96, 84])
    np.testing.assert_allclose(y["keypoints"][0, 1], mapped_by_hand(JOINTS_A, 1.5, 0, 1.5, 12, 96, 96),
                               atol=1e-4)
    np.testing.assert_array_equal(y["keypoints"][0, 2], 0.0)


@pytest.mark.parametrize("flipped", [False, True])
def test_training_flip_mirrors_the_joints_and_swaps_left_and_right(tmp_path, flipped):
    images_dir, path = write_pose_folder(tmp_path)
    # No random crop or scale: the warp is the evaluation letterbox, mirrored or not.
    augmentation = Augmentation(random_crop=False, scale=0.0, shift=0.0, color=False,
                                flip_probability=float(flipped))
    ds = coco_json(images_dir, path, batch_size=3, image_size=96, max_objects=8, keypoints=True,
                   augmentation=augmentation, seed=0)
    ((images, y),) = _batches(ds)
    assert set(y) == {"boxes", "labels", "keypoints"}
    counts = list(np.sum(y["labels"] >= 0, axis=1))
    assert sorted(counts) == [0, 1, 2]
    a, b = counts.index(2), counts.index(1)
    if not flipped:
        np.testing.assert_allclose(y["boxes"][b, 0], [24, 12, 69, 87])
        expected_c = mapped_by_hand(JOINTS_C, 1.5, 18, 1.5, 0, 96, 96)
        expected_a = mapped_by_hand(JOINTS_A, 1.5, 0, 1.5, 12, 96, 96)
    else:
        # Mirrored: x -> 96 - x' on the input, i.e. b.png's x -> 78 - 1.5 x, a.png's x -> 96 - 1.5 x.
        np.testing.assert_allclose(y["boxes"][b, 0], [27, 12, 72, 87])
        np.testing.assert_allclose(y["boxes"][a, 1], [54, 21, 84, 75])
        expected_c = mapped_by_hand(JOINTS_C, -1.5, 78, 1.5, 0, 96, 96, flipped=True)
        expected_a = mapped_by_hand(JOINTS_A, -1.5, 96, 1.5, 12, 96, 96, flipped=True)
        # The mirrored person's left wrist is the mirror of its right wrist (x = 32 -> 30),
        # still on the left; its right wrist the mirror of the far-left left wrist (6 -> 69).
        np.testing.assert_allclose(y["keypoints"][b, 0, LEFT_WRIST], [30, 45, 2], atol=1e-4)
        np.testing.assert_allclose(y["keypoints"][b, 0, RIGHT_WRIST], [69, 45, 2], atol=1e-4)
        # A's right ankle (13, 41) is now its left ankle; the labelled left ankle at x = -2
        # lands at x = 99, off the image: its (right-ankle) slot is zeros.
        np.testing.assert_allclose(y["keypoints"][a, 1, LEFT_ANKLE], [76.5, 73.5, 2], atol=1e-4)
        np.testing.assert_array_equal(y["keypoints"][a, 1, LEFT_ANKLE + 1], [0, 0, 0])
        # The image is mirrored too: A's red (left) half is now on the right.
        middle = images[a, 40:60, 54:84]
        assert middle[:, :12, 1].mean() > middle[:, :12, 0].mean() + 100
        assert middle[:, -12:, 0].mean() > middle[:, -12:, 1].mean() + 100
    np.testing.assert_allclose(y["keypoints"][b, 0], expected_c, atol=1e-4)
    np.testing.assert_allclose(y["keypoints"][a, 1], expected_a, atol=1e-4)
    np.testing.assert_array_equal(y["keypoints"][a, 0], 0.0)


def test_random_crop_maps_joints_with_the_boxes_matrix(tmp_path):
    """The official augmentation (random crop and scale, flip, colour): each person's joints
    follow the affine map its box reveals; joints the crop cuts off become zeros."""
    box = (14, 18, 34, 46)
    joints = np.zeros((17, 3))
    joints[:, 0] = np.linspace(15, 33, 17)
    joints[:, 1] = np.linspace(19, 45, 17)[::-1]
    joints[:, 2] = 2
    joints[LEFT_WRIST], joints[RIGHT_WRIST] = (15, 30, 2), (33, 30, 2)
    joints[LEFT_EAR] = joints[RIGHT_EAR] = 0
    images_dir, path = write_coco_folder(
        tmp_path, {"p.png": png_bytes(_person_image(64, 48, [box]))},
        [_annotation(0, box, joints)], [],
    )
    data = json.load(open(path))
    data["categories"] = [PERSON]
    json.dump(data, open(path, "w"))
    keras.utils.set_random_seed(0)
    ds = coco_json(images_dir, path, batch_size=1, image_size=64, max_objects=4, keypoints=True,
                   seed=1, repeat=True)
    seen = {False: 0, True: 0}
    cut = 0
    for images, y in ds.take(40).as_numpy_iterator():
        out = y["keypoints"][0, 0]
        if y["labels"][0, 0] < 0:
            assert np.all(y["keypoints"][0] == 0)
            continue
        x1, y1, x2, y2 = y["boxes"][0, 0]
        labelled = out[:, 2] > 0
        assert np.all(out[~labelled] == 0)  # cut off or unlabelled: (0, 0, 0)
        # Every joint of the source lies in its box; so do the mapped ones in the mapped box.
        assert np.all((out[labelled, 0] >= x1 - 1e-3) & (out[labelled, 0] <= x2 + 1e-3))
        assert np.all((out[labelled, 1] >= y1 - 1e-3) & (out[labelled, 1] <= y2 + 1e-3))
        if not (0.5 < x1 and x2 < 63.5 and 0.5 < y1 and y2 < 63.5):
            cut += int(labelled.sum() < 15)  # the crop cut some joints off
            continue
        # A box inside the input is unclipped: it gives the map. The colours tell the flip.
        scale = (y2 - y1) / (box[3] - box[1])
        np.testing.assert_allclose((x2 - x1) / (box[2] - box[0]), scale, rtol=1e-4)
        region = images[0, int(y1) + 2:int(y2) - 2, int(x1) + 1:int(x2) - 1]
        half = region.shape[1] // 2
        redness = region[..., 0] - region[..., 1]
        flipped = bool(redness[:, :half].mean() < redness[:, -half:].mean())
        shift_y = y1 - scale * box[1]
        if flipped:  # x1' = -scale * 34 + shift_x
            expected = mapped_by_hand(joints, -scale, x1 + scale * box[2], scale, shift_y, 64, 64, True)
        else:
            expected = mapped_by_hand(joints, scale, x1 - scale * box[0], scale, shift_y, 64, 64)
        np.testing.assert_allclose(out, expected, atol=2e-3)
        seen[flipped] += 1
        # Mirrored or not, the left wrist is left of the right wrist: in the mirror image the
        # person's left wrist is the mirror of its right one (swapped, not just moved).
        assert out[LEFT_WRIST, 0] < out[RIGHT_WRIST, 0]
    assert seen[False] >= 2 and seen[True] >= 2, seen
    assert cut >= 1


def test_ground_truth_keeps_joints_and_the_dataset_is_described(tmp_path):
    images_dir, path = write_pose_folder(tmp_path)
    ds = coco_json(images_dir, path, batch_size=2, training=False, keypoints=True)
    truth = ds.info.ground_truth
    assert truth["categories"] == [PERSON]
    by_id = {a["id"]: a for a in truth["annotations"]}
    assert len(by_id) == 4 and by_id[3]["iscrowd"] == 1  # the crowd stays for pycocotools
    assert by_id[1]["keypoints"][:3] == [18.0, 9.0, 2] and by_id[1]["num_keypoints"] == 14
    assert by_id[2]["num_keypoints"] == 0
    # b.png's person was written without `num_keypoints`: filled in (17 labelled).
    assert by_id[4]["num_keypoints"] == 17 and len(by_id[4]["keypoints"]) == 51
    assert ds.class_names == ["person"] and ds.category_ids == [1]
    # COCO's 17 joint names give the COCO flip pairs; other lists pair left_* with right_*.
    assert keypoint_flip_pairs(COCO_KEYPOINT_NAMES) == COCO_FLIP_PAIRS
    assert keypoint_flip_pairs(["head", "left_hand", "right_hand", "right_foot", "left_foot"]) == \
        ((1, 2), (4, 3))


def test_keypoints_need_the_cpu_augmentation(tmp_path):
    images_dir, path = write_pose_folder(tmp_path)
    with pytest.raises(ValueError, match="CPU augmentation"):
        coco_json(images_dir, path, image_size=64, keypoints=True, augment_on="accelerator")
    # Evaluation batches are the same in both modes.
    ds = coco_json(images_dir, path, training=False, image_size=64, keypoints=True,
                   augment_on="accelerator", batch_size=3)
    assert _batches(ds)[0][1]["keypoints"].shape == (3, 128, 17, 3)


def _with(path, annotation_id, **changes):
    data = json.load(open(path))
    for annotation in data["annotations"]:
        if annotation["id"] == annotation_id:
            annotation.update(changes)
            for key, value in changes.items():
                if value is None:
                    del annotation[key]
    json.dump(data, open(path, "w"))


@pytest.mark.parametrize(
    "keypoints, problem",
    [
        ([1.0] * 50, "50 numbers, not a multiple of 3"),
        ([1.0, 1.0, 2] * 16, "16 joints (48 numbers); its category 'person' lists 17"),
        ([1.0, 1.0, 2] * 16 + [1.0, "x", 2], "must be a list of numbers"),
        ([1.0, 1.0, 3] * 17, "visibilities"),
        ("none", "must be a list of numbers"),
        (None, "is missing"),
    ],
)
def test_malformed_keypoints_name_the_file_and_annotation(tmp_path, keypoints, problem):
    images_dir, path = write_pose_folder(tmp_path)
    _with(path, 4, keypoints=keypoints)
    with pytest.raises(ValueError) as error:
        coco_json(images_dir, path, keypoints=True)
    message = str(error.value)
    assert path in message and "`annotations[3].keypoints`" in message
    assert "annotation id 4" in message and problem in message


def test_categories_without_joint_names_are_refused(tmp_path):
    images_dir, path = write_pose_folder(tmp_path)
    data = json.load(open(path))
    data["categories"] = [{"id": 1, "name": "person"}]
    json.dump(data, open(path, "w"))
    with pytest.raises(ValueError, match=r"`categories\[0\]\.keypoints` is missing"):
        coco_json(images_dir, path, keypoints=True)
    # Without `keypoints=True` the same file reads as boxes.
    ds = coco_json(images_dir, path, batch_size=3, training=False, image_size=64)
    assert "keypoints" not in _batches(ds)[0][1]


class _GroundTruthPeople:
    """A 'model' predicting the evaluation batches' own people and joints (input pixels)."""

    def __init__(self, batches):
        self.batches = iter(batches)

    def predict_on_batch(self, images):
        targets = next(self.batches)
        # People with labelled joints (those COCO's keypoint evaluation scores).
        people = (targets["labels"] >= 0) & np.any(targets["keypoints"][..., 2] > 0, axis=-1)
        return {"boxes": targets["boxes"], "scores": np.where(people, 0.9, 0.0).astype("float32"),
                "labels": np.where(people, targets["labels"], -1),
                "keypoints": targets["keypoints"][..., :2]}


def test_keypoint_evaluation_of_the_ground_truth_scores_one(tmp_path):
    # Every labelled joint inside its image, so the batches hold all of them.
    images_dir, path = write_pose_folder(tmp_path, outside_joint=False)
    ds = coco_json(images_dir, path, batch_size=2, training=False, image_size=96, max_objects=8,
                   keypoints=True)
    batches = [targets for _, targets in ds.as_numpy_iterator()]
    metrics = kc.evaluation.coco_keypoint_evaluate(_GroundTruthPeople(batches), ds, verbose=0)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)


def test_centernet_pose_fits_and_is_evaluated_on_the_folder(tmp_path):
    images_dir, path = write_pose_folder(tmp_path)
    keras.utils.set_random_seed(0)
    train = coco_json(images_dir, path, batch_size=2, image_size=64, max_objects=8, keypoints=True,
                      seed=0, repeat=True)
    model = kc.CenterNetPose(
        kc.backbones.ResNetBackbone(depth=18, width=8),
        neck=kc.necks.UpConvNeck(filters=(16, 16, 16), use_dcn=False),
        head_channels=8, max_objects=8,
    )
    # Eager steps: tracing the pose train step takes longer than two steps on a shared CPU.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    history = model.fit(train, epochs=1, steps_per_epoch=2, verbose=0).history
    for name in ("loss", "keypoint_loss", "keypoint_heatmap_loss", "keypoint_offset_loss"):
        assert np.all(np.isfinite(history[name])), (name, history[name])
    assert history["keypoint_loss"][0] > 0  # the batches carried labelled joints
    evaluation = coco_json(images_dir, path, batch_size=2, training=False, image_size=64,
                           max_objects=8, keypoints=True)
    metrics = kc.evaluation.coco_keypoint_evaluate(model, evaluation, verbose=0)
    assert set(metrics) == set(KEYPOINT_STAT_NAMES)
    assert all(np.isfinite(value) and -1.0 <= value <= 1.0 for value in metrics.values())


def test_unreadable_images_are_skipped_with_their_people(tmp_path, capfd):
    images_dir, path = write_pose_folder(tmp_path)
    data = json.load(open(path))
    data["images"].append({"id": 4, "file_name": "missing.png", "width": 0, "height": 0})
    data["annotations"].append({**_annotation(3, BOX_A, JOINTS_A), "id": 5})
    json.dump(data, open(path, "w"))
    ds = coco_json(images_dir, path, batch_size=4, training=False, image_size=96, max_objects=8,
                   keypoints=True)
    ((_, y),) = _batches(ds)
    np.testing.assert_array_equal(y["image_id"], [1, 2, 3])
    assert y["keypoints"].shape == (3, 8, 17, 3)
    np.testing.assert_allclose(y["keypoints"][1, 0], mapped_by_hand(JOINTS_C, 1.5, 18, 1.5, 0, 96, 96),
                               atol=1e-4)
    assert "missing.png" in capfd.readouterr().err
