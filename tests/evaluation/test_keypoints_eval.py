"""COCO keypoint evaluation (OKS AP): perfect predictions, hand-computed AP and OKS, the dataset loop."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras_centernet as kc
from keras_centernet.data.pipeline import DatasetInfo
from keras_centernet.data.pipeline import attach_info
from keras_centernet.data.synthetic_pose import pose_ground_truth
from keras_centernet.data.synthetic_pose import synthetic_pose
from keras_centernet.evaluation.keypoints import COCOKeypointEvaluator
from keras_centernet.evaluation.keypoints import coco_keypoint_evaluate

NOSE_SIGMA = 0.026  # COCO's OKS sigma of the nose


def person(x1, y1, size, rng):
    """A square box of side `size` and 17 visible joints inside it."""
    box = np.array([x1, y1, x1 + size, y1 + size], np.float32)
    joints = np.concatenate(
        [rng.uniform([x1 + 2, y1 + 2], [x1 + size - 2, y1 + size - 2], (17, 2)), np.full((17, 1), 2.0)], axis=1
    ).astype(np.float32)
    return box, joints


def two_people_truth():
    """One image, a 64-px (medium) and a 128-px (large) person."""
    rng = np.random.default_rng(0)
    (box_a, joints_a), (box_b, joints_b) = person(10, 10, 64, rng), person(100, 60, 128, rng)
    boxes = np.stack([box_a, box_b])
    joints = np.stack([joints_a, joints_b])
    return pose_ground_truth([boxes], [joints], (256, 256)), boxes, joints


def evaluate(truth, boxes, scores, joints):
    evaluator = COCOKeypointEvaluator(truth)
    evaluator.update([1], boxes[None], np.asarray(scores, np.float32)[None],
                     np.zeros((1, len(scores)), np.int32), joints[None, ..., :2])
    return evaluator.result()


def test_predictions_equal_to_the_ground_truth_score_one():
    truth, boxes, joints = two_people_truth()
    metrics = evaluate(truth, boxes, [0.9, 0.8], joints)
    assert set(metrics) == {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}
    for name, value in metrics.items():
        assert value == pytest.approx(1.0), name


def test_one_of_two_people_found():
    truth, boxes, joints = two_people_truth()
    # Only the large person, exactly: precision 1 up to recall 1/2, then nothing.
    # AP is precision averaged over COCO's 101 recall steps 0, 0.01, ..., 1: 51 of them are <= 0.5.
    metrics = evaluate(truth, boxes[1:], [0.9], joints[1:])
    assert metrics["AP"] == pytest.approx(51 / 101)
    assert metrics["AP50"] == pytest.approx(51 / 101) and metrics["AP75"] == pytest.approx(51 / 101)
    assert metrics["AR"] == pytest.approx(0.5)
    assert metrics["APl"] == pytest.approx(1.0) and metrics["ARl"] == pytest.approx(1.0)
    assert metrics["APm"] == pytest.approx(0.0) and metrics["ARm"] == pytest.approx(0.0)


def test_a_false_positive_ranked_first_halves_the_precision():
    truth, boxes, joints = two_people_truth()
    # A person where there is none, scored above the one correct person:
    # at recall 1/2 the precision is 1/2.
    stray_box = np.array([[200, 200, 250, 250]], np.float32)
    stray_joints = np.full((1, 17, 3), 225.0, np.float32)
    metrics = evaluate(truth, np.concatenate([stray_box, boxes[1:]]), [0.95, 0.9],
                       np.concatenate([stray_joints, joints[1:]]))
    assert metrics["AP"] == pytest.approx(0.5 * 51 / 101)
    assert metrics["AR"] == pytest.approx(0.5)


def test_an_image_without_predictions_still_counts():
    rng = np.random.default_rng(1)
    people = [person(10, 10, 64, rng), person(30, 20, 64, rng)]
    truth = pose_ground_truth([p[0][None] for p in people], [p[1][None] for p in people], (128, 128))
    boxes = np.stack([p[0] for p in people])[:, None]
    joints = np.stack([p[1] for p in people])[:, None, :, :2]
    evaluator = COCOKeypointEvaluator(truth)
    # Image 2's person is predicted but not among its num_detections = 0.
    evaluator.update([1, 2], boxes, np.full((2, 1), 0.9), np.zeros((2, 1), np.int32), joints,
                     num_detections=[1, 0])
    assert evaluator.seen_images == {1, 2}
    assert evaluator.result()["AP"] == pytest.approx(51 / 101)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.update([3], boxes[:1], np.full((1, 1), 0.9), np.zeros((1, 1), np.int32), joints[:1])


def test_object_keypoint_similarity_by_hand():
    """One labelled joint (the nose) of a 64x64 person, predicted d pixels away: OKS = exp(-d^2 / (2 s^2 k^2))."""
    box = np.array([[20, 20, 84, 84]], np.float32)
    joints = np.zeros((1, 17, 3), np.float32)
    joints[0, 0] = (50, 40, 2)
    truth = pose_ground_truth([box], [joints], (128, 128))
    area = 64.0 * 64.0  # the annotation's area, the s^2 of the OKS
    # COCO's k = 2 sigma. OKS 0.62 matches at the thresholds 0.5, 0.55 and 0.6 only.
    distance = math.sqrt(-math.log(0.62) * 2 * area * (2 * NOSE_SIGMA) ** 2)
    predicted = joints.copy()
    predicted[0, 0, 0] += distance
    metrics = evaluate(truth, box, [0.9], predicted)
    assert metrics["AP"] == pytest.approx(0.3)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(0.0)
    # Unlabelled joints do not count, wherever they are predicted.
    predicted[0, 1:, :2] = 0.0
    assert evaluate(truth, box, [0.9], predicted)["AP"] == pytest.approx(0.3)


def test_padding_and_num_detections_are_respected():
    truth, boxes, joints = two_people_truth()
    evaluator = COCOKeypointEvaluator(truth)
    # Slot 2 is padding (label -1), slot 3 is past num_detections: neither is added.
    all_boxes = np.concatenate([boxes, boxes])[None]
    all_joints = np.concatenate([joints, joints])[None, ..., :2]
    evaluator.update([1], all_boxes, np.array([[0.9, 0.8, 0.7, 0.6]]), np.array([[0, 0, -1, 0]]),
                     all_joints, num_detections=[3])
    assert len(evaluator.detections) == 2
    assert len(evaluator.detections[0]["keypoints"]) == 51
    assert evaluator.detections[0]["keypoints"][2::3] == [1.0] * 17
    assert evaluator.result()["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="keypoints"):
        evaluator.update([1], all_boxes, np.ones((1, 4)), np.zeros((1, 4)), all_joints[:, :2])


class GroundTruthModel:
    """Predicts each evaluation batch's own people (in input pixels), as a perfect pose model would."""

    def __init__(self, batches):
        self.batches = iter(batches)

    def predict_on_batch(self, images):
        targets = next(self.batches)
        labels = targets["labels"]
        scores = np.where(labels >= 0, 0.9, 0.0).astype(np.float32)
        return {"boxes": targets["boxes"], "scores": scores, "labels": labels,
                "keypoints": targets["keypoints"][..., :2], "num_detections": np.sum(labels >= 0, axis=1)}


def test_coco_keypoint_evaluate_perfect_predictions_on_the_synthetic_set():
    ds = synthetic_pose(num_images=5, image_size=64, batch_size=2, seed=0, training=False)
    batches = [targets for _, targets in ds.as_numpy_iterator()]
    metrics = kc.evaluation.coco_keypoint_evaluate(GroundTruthModel(batches), ds, verbose=0)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)


def test_predictions_are_mapped_back_to_original_pixels():
    """A dataset whose images were scaled by 1/2 and shifted: predictions in input pixels map back."""
    truth, boxes, joints = two_people_truth()
    transform = np.array([[0.5, 0.0, 10.0], [0.0, 0.5, 20.0]], np.float32)
    scale, shift = np.array([0.5, 0.5]), np.array([10.0, 20.0])
    input_boxes = boxes.reshape(2, 2, 2) * scale + shift
    input_joints = joints.copy()
    input_joints[..., :2] = joints[..., :2] * scale + shift
    targets = {
        "image_id": np.array([1], np.int64), "transform": transform[None],
        "boxes": input_boxes.reshape(1, 2, 4).astype(np.float32), "labels": np.zeros((1, 2), np.int32),
        "keypoints": input_joints[None].astype(np.float32),
    }
    ds = tf.data.Dataset.from_tensors((np.zeros((1, 8, 8, 3), np.float32), targets))
    ds = attach_info(ds, DatasetInfo(["person"], [1], num_examples=1, ground_truth=truth))
    metrics = coco_keypoint_evaluate(GroundTruthModel([targets]), ds, verbose=0)
    assert metrics["AP"] == pytest.approx(1.0)
    # Unmapped (treated as original pixels), the same predictions miss.
    targets["transform"] = np.eye(2, 3, dtype=np.float32)[None]
    ds = attach_info(tf.data.Dataset.from_tensors((np.zeros((1, 8, 8, 3), np.float32), targets)),
                     DatasetInfo(["person"], [1], num_examples=1, ground_truth=truth))
    assert coco_keypoint_evaluate(GroundTruthModel([targets]), ds, verbose=0)["AP"] < 0.1


def test_a_detector_without_keypoints_is_refused():
    ds = synthetic_pose(num_images=2, image_size=64, batch_size=2, seed=0, training=False)

    class BoxesOnly:
        def predict_on_batch(self, images):
            zeros = np.zeros((2, 1), np.float32)
            return {"boxes": np.zeros((2, 1, 4)), "scores": zeros, "labels": zeros.astype(np.int32)}

    with pytest.raises(ValueError, match="keypoints"):
        coco_keypoint_evaluate(BoxesOnly(), ds, verbose=0)


def test_a_pose_model_is_evaluated_end_to_end():
    from tests.models.test_centernet_pose import tiny_pose_model

    model = tiny_pose_model(max_detections=20)
    # Batches of one shape: one trace of the prediction step.
    ds = synthetic_pose(num_images=4, image_size=64, batch_size=2, seed=0, training=False)
    metrics = coco_keypoint_evaluate(model, ds, verbose=0)
    # An untrained model finds (almost) nobody; every metric is a valid pycocotools value.
    assert all(value == -1.0 or 0.0 <= value <= 1.0 for value in metrics.values())
    assert metrics["AP"] < 0.5
