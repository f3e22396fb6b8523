"""COCO evaluation against hand-computed average precision."""

import numpy as np
import pytest

from keras_centernet.evaluation.coco_evaluator import COCOEvaluator


def ground_truth(boxes_by_image, category_ids=(3, 7)):
    images, annotations = [], []
    for image_id, boxes in boxes_by_image.items():
        images.append({"id": image_id, "width": 200, "height": 100, "file_name": f"{image_id}.jpg"})
        for category_id, (x1, y1, x2, y2) in boxes:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    categories = [{"id": c, "name": f"class{c}"} for c in category_ids]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_perfect_predictions_give_ap_one():
    boxes = {1: [(3, (10, 10, 60, 50)), (7, (100, 20, 180, 90))], 2: [(7, (5, 5, 150, 95))]}
    evaluator = COCOEvaluator(ground_truth(boxes))
    for image_id, objects in boxes.items():
        det_boxes = np.array([[b for _, b in objects]], np.float32)
        labels = np.array([[0 if c == 3 else 1 for c, _ in objects]])
        evaluator.update([image_id], det_boxes, np.ones(labels.shape), labels)
    result = evaluator.result()
    for name in ("AP", "AP50", "AP75", "APl", "AR100"):
        assert result[name] == pytest.approx(1.0)


def test_hand_computed_average_precision():
    # Two objects of one class; detections by score: TP (0.9), FP (0.8), TP (0.7).
    # Precision envelope: 1 up to recall 0.5, then 2/3 up to recall 1. COCO samples
    # recall at 101 points: 51 at precision 1, 50 at 2/3 -> AP = (51 + 50 * 2/3) / 101.
    gt_boxes = [(10, 10, 60, 60), (100, 10, 160, 70)]
    evaluator = COCOEvaluator(ground_truth({1: [(3, b) for b in gt_boxes]}, category_ids=(3,)))
    detections = np.array([[gt_boxes[0], (20, 70, 40, 95), gt_boxes[1]]], np.float32)
    evaluator.update([1], detections, np.array([[0.9, 0.8, 0.7]]), np.zeros((1, 3), int))
    expected = (51 + 50 * 2 / 3) / 101
    result = evaluator.result()
    assert result["AP"] == pytest.approx(expected, abs=1e-6)
    assert result["AP50"] == pytest.approx(expected, abs=1e-6)


def test_wrong_class_and_padding_are_handled():
    evaluator = COCOEvaluator(ground_truth({1: [(3, (10, 10, 60, 60))]}))
    boxes = np.array([[(10, 10, 60, 60), (0, 0, 1, 1)]], np.float32)
    # Right box, wrong class (label 1 = category 7), and a padded slot (label -1).
    evaluator.update([1], boxes, np.array([[0.9, 0.0]]), np.array([[1, -1]]))
    assert evaluator.result()["AP"] == pytest.approx(0.0)
    assert len(evaluator.detections) == 1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="'annotations'"):
        COCOEvaluator({"images": [], "categories": []})
    evaluator = COCOEvaluator(ground_truth({1: []}))
    with pytest.raises(ValueError, match="Image id 5"):
        evaluator.update([5], np.zeros((1, 1, 4)), np.zeros((1, 1)), np.zeros((1, 1), int))
    with pytest.raises(ValueError, match="No detections"):
        evaluator.result()
