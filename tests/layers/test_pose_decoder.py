"""Pose decoding (the official `multi_pose_decode`) on constructed maps, with hand-computed people."""

import keras
import numpy as np
import pytest

from keras_centernet.layers.pose_decoder import CenterNetPoseDecoder
from keras_centernet.layers.pose_decoder import decode_poses
from tests.test_case import TestCase
from tests.test_case import to_numpy

SIZE = 32  # map pixels
JOINTS = 3


def constructed_maps():
    """Two people and joint-heatmap peaks planted on a 32x32 map (probabilities).

    Person A: peak (x=10, y=12), score 0.9, offset (0.25, 0.5), size (8, 12):
    box [6.25, 6.5, 14.25, 18.5], snap radius 0.3 * 12 = 3.6.
    Person B: peak (24, 24), score 0.7, offset (0.5, 0.5), size (6, 6):
    box [21.5, 21.5, 27.5, 27.5], snap radius 1.8.
    """
    heat = np.zeros((1, SIZE, SIZE, 1), "float32")
    size = np.zeros((1, SIZE, SIZE, 2), "float32")
    offset = np.zeros((1, SIZE, SIZE, 2), "float32")
    joints = np.zeros((1, SIZE, SIZE, 2 * JOINTS), "float32")
    joint_heat = np.zeros((1, SIZE, SIZE, JOINTS), "float32")
    joint_offset = np.zeros((1, SIZE, SIZE, 2), "float32")

    heat[0, 12, 10, 0] = 0.9
    size[0, 12, 10] = (8.0, 12.0)
    offset[0, 12, 10] = (0.25, 0.5)
    # Joints from the peak pixel (10, 12): (7, 8), (13, 12), (10, 16).
    joints[0, 12, 10] = (-3.0, -4.0, 3.0, 0.0, 0.0, 4.0)

    heat[0, 24, 24, 0] = 0.7
    size[0, 24, 24] = (6.0, 6.0)
    offset[0, 24, 24] = (0.5, 0.5)
    # Joints from (24, 24): (24, 22), (26, 24), (24, 26).
    joints[0, 24, 24] = (0.0, -2.0, 2.0, 0.0, 0.0, 2.0)

    # Joint 0: two peaks inside A's box; the nearer (7.3, 8.2) is weaker than
    # the farther (9.3, 10.2, 3.1 away): nearest wins, not strongest.
    joint_heat[0, 8, 7, 0] = 0.6
    joint_offset[0, 8, 7] = (0.3, 0.2)
    joint_heat[0, 10, 9, 0] = 0.95
    joint_offset[0, 10, 9] = (0.3, 0.2)
    # Joint 1: (15, 12) is 2 from A's joint but right of its box (15 > 14.25):
    # not snapped. (26, 25) is 1 from B's joint, inside B's box: snapped.
    joint_heat[0, 12, 15, 1] = 0.9
    joint_heat[0, 25, 26, 1] = 0.5
    # Joint 2: (10, 17) is 1 from A's joint, inside, but scores 0.05 < 0.1:
    # not snapped. (22, 26) is inside B's box but 2 > 1.8 away: not snapped.
    joint_heat[0, 17, 10, 2] = 0.05
    joint_heat[0, 26, 22, 2] = 0.8
    return heat, size, offset, joints, joint_heat, joint_offset


EXPECTED_BOXES = np.array([[6.25, 6.5, 14.25, 18.5], [21.5, 21.5, 27.5, 27.5]], "float32")
EXPECTED_REGRESSED = np.array(
    [[(7, 8), (13, 12), (10, 16)], [(24, 22), (26, 24), (24, 26)]], "float32"
)
EXPECTED_SNAPPED = np.array(
    [[(7.3, 8.2), (13, 12), (10, 16)], [(24, 22), (26, 25), (24, 26)]], "float32"
)


def logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p)).astype("float32")


@pytest.mark.multi_backend
def test_recovers_planted_people_and_snaps_as_official():
    heat, size, offset, joints, joint_heat, joint_offset = constructed_maps()
    people = to_numpy(decode_poses(heat, size, offset, joints, joint_heat, joint_offset,
                                   max_detections=2, stride=4, heatmap_is_probability=True))
    np.testing.assert_allclose(people["scores"][0], [0.9, 0.7], rtol=1e-6)
    np.testing.assert_array_equal(people["labels"][0], [0, 0])
    np.testing.assert_allclose(people["boxes"][0], EXPECTED_BOXES * 4, rtol=1e-6)
    assert people["keypoints"].shape == (1, 2, JOINTS, 2)
    np.testing.assert_allclose(people["keypoints"][0], EXPECTED_SNAPPED * 4, rtol=1e-6, atol=1e-5)


@pytest.mark.multi_backend
def test_logits_and_probabilities_decode_alike():
    heat, size, offset, joints, joint_heat, joint_offset = constructed_maps()
    people = to_numpy(decode_poses(logit(heat), size, offset, joints, logit(joint_heat), joint_offset,
                                   max_detections=2, stride=1))
    np.testing.assert_allclose(people["scores"][0], [0.9, 0.7], rtol=1e-5)
    np.testing.assert_allclose(people["boxes"][0], EXPECTED_BOXES, rtol=1e-6)
    np.testing.assert_allclose(people["keypoints"][0], EXPECTED_SNAPPED, rtol=1e-5, atol=1e-5)


@pytest.mark.multi_backend
def test_without_joint_heatmap_the_joints_are_regressed():
    heat, size, offset, joints, _, _ = constructed_maps()
    people = to_numpy(decode_poses(heat, size, offset, joints, max_detections=2, stride=1,
                                   heatmap_is_probability=True))
    np.testing.assert_allclose(people["keypoints"][0], EXPECTED_REGRESSED, rtol=1e-6)


@pytest.mark.multi_backend
def test_without_joint_offset_peaks_sit_at_pixel_centres():
    heat, size, offset, joints, joint_heat, _ = constructed_maps()
    people = to_numpy(decode_poses(heat, size, offset, joints, joint_heat, None, max_detections=2,
                                   stride=1, heatmap_is_probability=True))
    expected = EXPECTED_SNAPPED.copy()
    expected[0, 0] = (7.5, 8.5)   # the official `hm_xs + 0.5`
    expected[1, 1] = (26.5, 25.5)
    # B's joint-2 peak moves to (22.5, 26.5), 1.58 < 1.8 from (24, 26): now snapped.
    expected[1, 2] = (22.5, 26.5)
    np.testing.assert_allclose(people["keypoints"][0], expected, rtol=1e-6)


@pytest.mark.multi_backend
def test_joint_threshold_and_non_maximum_suppression():
    heat, size, offset, joints, joint_heat, joint_offset = constructed_maps()
    # With threshold 0.01 the weak joint-2 peak (10, 17) of A now counts.
    people = to_numpy(decode_poses(heat, size, offset, joints, joint_heat, joint_offset, max_detections=2,
                                   stride=1, heatmap_is_probability=True, joint_threshold=0.01))
    np.testing.assert_allclose(people["keypoints"][0, 0, 2], (10, 17), rtol=1e-6)
    # A stronger neighbour suppresses that peak (3x3 max pool): joint 2 of A is
    # then snapped to the neighbour (11, 17), at distance sqrt(2) inside the box.
    joint_heat[0, 17, 11, 2] = 0.5
    people = to_numpy(decode_poses(heat, size, offset, joints, joint_heat, joint_offset, max_detections=2,
                                   stride=1, heatmap_is_probability=True))
    np.testing.assert_allclose(people["keypoints"][0, 0, 2], (11, 17), rtol=1e-6)


@pytest.mark.multi_backend
def test_more_detections_than_people_are_zero_scored_and_sorted():
    heat, size, offset, joints, joint_heat, joint_offset = constructed_maps()
    people = to_numpy(decode_poses(heat, size, offset, joints, joint_heat, joint_offset,
                                   max_detections=5, stride=1, heatmap_is_probability=True))
    np.testing.assert_allclose(people["scores"][0], [0.9, 0.7, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(people["boxes"][0, :2], EXPECTED_BOXES, rtol=1e-6)


@pytest.mark.multi_backend
def test_batch_items_are_decoded_independently():
    maps = constructed_maps()
    mirrored = [np.concatenate([m, np.zeros_like(m)], axis=0) for m in maps]
    people = to_numpy(decode_poses(*mirrored, max_detections=2, stride=1, heatmap_is_probability=True))
    np.testing.assert_allclose(people["keypoints"][0], EXPECTED_SNAPPED, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(people["scores"][1], [0, 0])


@pytest.mark.multi_backend
def test_rejects_bad_arguments():
    heat, size, offset, joints, _, _ = constructed_maps()
    with pytest.raises(ValueError, match="max_detections"):
        decode_poses(heat, size, offset, joints, max_detections=0)
    with pytest.raises(ValueError, match="2J"):
        decode_poses(heat, size, offset, joints[..., :5])


class TestCenterNetPoseDecoder(TestCase):
    @pytest.mark.multi_backend
    def test_thresholds_people_and_their_joints(self):
        heat, size, offset, joints, joint_heat, joint_offset = constructed_maps()
        decoder = CenterNetPoseDecoder(max_detections=3, score_threshold=0.8, stride=2)
        people = to_numpy(decoder({
            "heatmap": logit(heat), "size": size, "offset": offset, "keypoints": joints,
            "keypoint_heatmap": logit(joint_heat), "keypoint_offset": joint_offset,
        }))
        np.testing.assert_array_equal(people["num_detections"], [1])
        np.testing.assert_array_equal(people["labels"][0], [0, -1, -1])
        np.testing.assert_allclose(people["boxes"][0, 0], EXPECTED_BOXES[0] * 2, rtol=1e-5)
        np.testing.assert_allclose(people["keypoints"][0, 0], EXPECTED_SNAPPED[0] * 2, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(people["keypoints"][0, 1:], 0.0)
        np.testing.assert_array_equal(people["boxes"][0, 1:], 0.0)

    @pytest.mark.multi_backend
    def test_config_round_trip(self):
        decoder = CenterNetPoseDecoder(max_detections=7, score_threshold=0.2, stride=8, joint_threshold=0.3)
        revived = self.run_serialization_test(decoder)
        assert (revived.max_detections, revived.score_threshold, revived.stride, revived.joint_threshold) == (
            7, 0.2, 8, 0.3)
        with pytest.raises(ValueError, match="max_detections"):
            CenterNetPoseDecoder(max_detections=0)

    def test_inside_a_compiled_model(self):
        heat, size, offset, joints, joint_heat, joint_offset = constructed_maps()
        names = ("heatmap", "size", "offset", "keypoints", "keypoint_heatmap", "keypoint_offset")
        arrays = (logit(heat), size, offset, joints, logit(joint_heat), joint_offset)
        inputs = {n: keras.Input(a.shape[1:], name=n) for n, a in zip(names, arrays)}
        model = keras.Model(inputs, CenterNetPoseDecoder(max_detections=2, stride=1)(inputs))
        people = to_numpy(model.predict({n: a for n, a in zip(names, arrays)}, verbose=0))
        np.testing.assert_allclose(people["keypoints"][0], EXPECTED_SNAPPED, rtol=1e-5, atol=1e-5)
