"""Pose targets equal hand-computed values and a NumPy transcription of the official `multi_pose.py`."""

import math

import numpy as np
import pytest

from keras_centernet.losses.keypoints import reg_weighted_l1_loss
from keras_centernet.targets.keypoints import COCO_FLIP_PAIRS
from keras_centernet.targets.keypoints import flip_keypoints
from keras_centernet.targets.keypoints import flip_permutation
from keras_centernet.targets.keypoints import render_pose_targets
from tests.test_case import to_numpy


def official_radius(height, width, min_overlap=0.7):
    """CenterNet's `gaussian_radius` (float64), as in `utils/image.py`."""
    a1, b1 = 1, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap, center, radius):
    """The official `draw_umich_gaussian` (window cut at the border, maximum)."""
    diameter = 2 * radius + 1
    sigma = diameter / 6
    m = np.arange(-radius, radius + 1)[:, None]
    n = np.arange(-radius, radius + 1)[None, :]
    gaussian = np.exp(-(m * m + n * n) / (2 * sigma * sigma))
    gaussian[gaussian < np.finfo(gaussian.dtype).eps * gaussian.max()] = 0
    x, y = int(center[0]), int(center[1])
    height, width = heatmap.shape
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    region = heatmap[y - top:y + bottom, x - left:x + right]
    patch = gaussian[radius - top:radius + bottom, radius - left:radius + right]
    np.maximum(region, patch, out=region)


def official_pose_targets(boxes, labels, keypoints, height, width, max_objects):
    """The official loader's loop after its affine step, one image, output-map pixels."""
    num_joints = keypoints.shape[1]
    hm = np.zeros((1, height, width), np.float32)
    hm_hp = np.zeros((num_joints, height, width), np.float32)
    wh = np.zeros((max_objects, 2), np.float32)
    reg = np.zeros((max_objects, 2), np.float32)
    ind = np.zeros(max_objects, np.int64)
    reg_mask = np.zeros(max_objects, np.float32)
    kps = np.zeros((max_objects, 2 * num_joints), np.float32)
    kps_mask = np.zeros((max_objects, 2 * num_joints), np.float32)
    hp_offset = np.zeros((max_objects * num_joints, 2), np.float32)
    hp_ind = np.zeros(max_objects * num_joints, np.int64)
    hp_mask = np.zeros(max_objects * num_joints, np.float32)
    for k in range(min(len(boxes), max_objects)):
        if labels[k] < 0:
            continue
        bbox = boxes[k].astype(np.float32).copy()
        pts = keypoints[k].astype(np.float32).copy()
        bbox[[0, 2]] = np.clip(bbox[[0, 2]], 0, width - 1)
        bbox[[1, 3]] = np.clip(bbox[[1, 3]], 0, height - 1)
        h, w = bbox[3] - bbox[1], bbox[2] - bbox[0]
        if h > 0 and w > 0:
            radius = max(0, int(official_radius(math.ceil(h), math.ceil(w))))
            ct = np.array([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2], np.float32)
            ct_int = ct.astype(np.int32)
            wh[k] = w, h
            ind[k] = ct_int[1] * width + ct_int[0]
            reg[k] = ct - ct_int
            reg_mask[k] = 1
            if pts[:, 2].sum() == 0:
                reg_mask[k] = 0
            for j in range(num_joints):
                if pts[j, 2] > 0 and 0 <= pts[j, 0] < width and 0 <= pts[j, 1] < height:
                    kps[k, 2 * j:2 * j + 2] = pts[j, :2] - ct_int
                    kps_mask[k, 2 * j:2 * j + 2] = 1
                    pt_int = pts[j, :2].astype(np.int32)
                    hp_offset[k * num_joints + j] = pts[j, :2] - pt_int
                    hp_ind[k * num_joints + j] = pt_int[1] * width + pt_int[0]
                    hp_mask[k * num_joints + j] = 1
                    draw_gaussian(hm_hp[j], pt_int, radius)
            draw_gaussian(hm[0], ct_int, radius)
    return {
        "heatmap": hm.transpose(1, 2, 0), "size": wh, "offset": reg, "indices": ind,
        "mask": reg_mask, "keypoints": kps, "keypoint_mask": kps_mask,
        "keypoint_heatmap": hm_hp.transpose(1, 2, 0), "keypoint_offset": hp_offset,
        "keypoint_indices": hp_ind, "keypoint_offset_mask": hp_mask,
    }


def one_person(joints=None):
    """A 10x12 person at (2, 2)-(12, 14) of a 16x16 map; joints `{j: (x, y, v)}`."""
    keypoints = np.zeros((1, 1, 17, 3), np.float32)
    for j, value in (joints or {}).items():
        keypoints[0, 0, j] = value
    return np.array([[[2.0, 2.0, 12.0, 14.0]]], np.float32), np.array([[0]]), keypoints


@pytest.mark.multi_backend
def test_one_joint_by_hand():
    boxes, labels, keypoints = one_person({0: (7.5, 4.25, 2)})
    t = to_numpy(render_pose_targets(boxes, labels, keypoints, (16, 16), max_objects=4))
    # Centre (7, 8), its pixel (7, 8); joint 0 at pixel (7, 4).
    np.testing.assert_allclose(t["keypoints"][0, 0, :2], [0.5, -3.75])
    np.testing.assert_array_equal(t["keypoint_mask"][0, 0], [1, 1] + [0] * 32)
    np.testing.assert_allclose(t["keypoint_offset"][0, 0], [0.5, 0.25])
    assert t["keypoint_indices"][0, 0] == 4 * 16 + 7
    np.testing.assert_array_equal(t["keypoint_offset_mask"][0], [1] + [0] * 67)
    assert t["mask"][0, 0] == 1
    # The person's radius, by hand: the third root (b3 + sqrt(b3^2 - 4 a3 c3)) / 2
    # with a3 = 2.8, b3 = -30.8, c3 = -36 is (-30.8 + 36.77) / 2 = 2.98 (the
    # others are 20.99 and 40.4), so r = 2, sigma = 5 / 6, a 5x5 window.
    assert int(official_radius(12, 10)) == 2
    sigma = 5 / 6
    heat = t["keypoint_heatmap"][0, :, :, 0]
    assert heat[4, 7] == 1.0
    np.testing.assert_allclose(heat[4, 8], math.exp(-1 / (2 * sigma ** 2)), rtol=1e-6)
    np.testing.assert_allclose(heat[6, 9], math.exp(-8 / (2 * sigma ** 2)), rtol=1e-5)
    assert heat[4, 10] == 0.0 and heat[7, 7] == 0.0  # outside the window
    assert np.count_nonzero(heat) == 25
    assert not t["keypoint_heatmap"][..., 1:].any()


@pytest.mark.multi_backend
def test_joints_off_the_map_or_unlabelled_are_masked():
    boxes, labels, keypoints = one_person(
        {0: (16.0, 3.0, 2), 1: (-0.5, 3.0, 2), 2: (5.0, 5.0, 0), 3: (5.0, 15.99, 1)}
    )
    t = to_numpy(render_pose_targets(boxes, labels, keypoints, (16, 16), max_objects=2))
    np.testing.assert_array_equal(t["keypoint_mask"][0, 0], [0] * 6 + [1, 1] + [0] * 26)
    np.testing.assert_array_equal(np.nonzero(t["keypoint_offset_mask"][0])[0], [3])
    np.testing.assert_allclose(t["keypoints"][0, 0, 6:8], [5 - 7, 15.99 - 8], rtol=1e-6)
    assert t["keypoint_heatmap"][0, 15, 5, 3] == 1.0
    assert not t["keypoint_heatmap"][..., :3].any()


@pytest.mark.multi_backend
def test_person_without_labelled_joints_is_on_the_heatmap_only():
    boxes, labels, keypoints = one_person({4: (5.0, 5.0, 0)})
    t = to_numpy(render_pose_targets(boxes, labels, keypoints, (16, 16), max_objects=2))
    assert t["heatmap"][0, 8, 7, 0] == 1.0
    np.testing.assert_array_equal(t["mask"][0], [0, 0])
    np.testing.assert_allclose(t["size"][0, 0], [10, 12])  # still written, masked
    assert not t["keypoint_mask"].any() and not t["keypoint_heatmap"].any()


@pytest.mark.multi_backend
def test_random_batch_equals_the_official_loader():
    rng = np.random.default_rng(3)
    batch, people, height, width, max_objects = 2, 5, 20, 24, 4
    boxes = np.zeros((batch, people, 4), np.float32)
    keypoints = np.zeros((batch, people, 17, 3), np.float32)
    labels = np.zeros((batch, people), np.int32)
    for b in range(batch):
        for k in range(people):
            x1, y1 = rng.uniform(-3, 18, 2)
            w, h = rng.uniform(1, 12, 2)
            boxes[b, k] = x1, y1, x1 + w, y1 + h
            keypoints[b, k, :, 0] = rng.uniform(x1 - 2, x1 + w + 2, 17)
            keypoints[b, k, :, 1] = rng.uniform(y1 - 2, y1 + h + 2, 17)
            keypoints[b, k, :, 2] = rng.choice([0, 1, 2], 17, p=[0.3, 0.2, 0.5])
    labels[0, 3] = -1  # padding
    keypoints[1, 1, :, 2] = 0  # no labelled joint
    t = to_numpy(render_pose_targets(boxes, labels, keypoints, (height, width), max_objects=max_objects))
    for b in range(batch):
        expected = official_pose_targets(boxes[b], labels[b], keypoints[b], height, width, max_objects)
        for key, value in expected.items():
            np.testing.assert_allclose(t[key][b], value, rtol=0, atol=1e-5, err_msg=key)
    assert t["keypoint_heatmap"].max() == 1.0 and t["keypoint_offset_mask"].sum() > 10


@pytest.mark.multi_backend
def test_flip_keypoints_mirrors_and_swaps():
    assert flip_permutation() == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    keypoints = np.zeros((1, 17, 3), np.float32)
    keypoints[0, :, 0] = np.arange(17)
    keypoints[0, :, 1] = 100 + np.arange(17)
    keypoints[0, :, 2] = 2
    keypoints[0, 6] = 0  # unlabelled right shoulder
    flipped = to_numpy(flip_keypoints(keypoints, 64.0))
    np.testing.assert_allclose(flipped[0, 0], [64, 100, 2])
    np.testing.assert_allclose(flipped[0, 1], [64 - 2, 102, 2])  # left eye <- right eye
    np.testing.assert_allclose(flipped[0, 5], [0, 0, 0])  # left shoulder <- unlabelled
    np.testing.assert_allclose(flipped[0, 6], [64 - 5, 105, 2])
    np.testing.assert_allclose(to_numpy(flip_keypoints(flipped, 64.0)), keypoints)
    with pytest.raises(ValueError, match="flip_pairs"):
        flip_permutation(17, ((1, 2), (2, 3)))
    assert len(COCO_FLIP_PAIRS) == 8


@pytest.mark.multi_backend
def test_reg_weighted_l1_loss_by_hand():
    prediction = np.zeros((1, 2, 2, 4), np.float32)
    prediction[0, 1, 0] = [1.0, 2.0, 3.0, 4.0]  # index 2
    target = np.array([[[0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 0.0, 9.0]]], np.float32)
    mask = np.array([[[0, 0, 0, 0], [1, 1, 1, 0]]], np.float32)
    indices = np.array([[0, 2]], np.int32)
    loss = float(to_numpy(reg_weighted_l1_loss(prediction, indices, mask, target)))
    # |1-2| + |2-2| + |3-0| over 3 masked coordinates (+1e-4).
    np.testing.assert_allclose(loss, 4 / (3 + 1e-4), rtol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        reg_weighted_l1_loss(prediction, indices, mask[..., :2], target)
