"""Soft-NMS against a hand-computed case and a line-by-line transcription of the official Cython loop."""

import math

import numpy as np
import pytest

from keras_centernet.layers.soft_nms import SoftNMS
from keras_centernet.layers.soft_nms import soft_nms
from tests.test_case import TestCase
from tests.test_case import to_numpy


def official_soft_nms(dets, sigma=0.5, nt=0.5, threshold=0.001, method=2):
    """The official `external/nms.pyx` `soft_nms`, transcribed: rows (x1, y1, x2, y2, score, index).

    Runs on a copy, with its swaps and its `N` that shrinks while the `for`
    bound (evaluated once, as Cython does) stays; returns the final score of
    every input row by its index column.
    """
    boxes = dets.astype(np.float64).copy()
    n = boxes.shape[0]
    for i in range(boxes.shape[0]):
        maxscore, maxpos = boxes[i, 4], i
        pos = i + 1
        while pos < n:
            if maxscore < boxes[pos, 4]:
                maxscore, maxpos = boxes[pos, 4], pos
            pos += 1
        boxes[[i, maxpos]] = boxes[[maxpos, i]]
        tx1, ty1, tx2, ty2 = boxes[i, :4]
        pos = i + 1
        while pos < n:
            x1, y1, x2, y2 = boxes[pos, :4]
            area = (x2 - x1 + 1) * (y2 - y1 + 1)
            iw = min(tx2, x2) - max(tx1, x1) + 1
            if iw > 0:
                ih = min(ty2, y2) - max(ty1, y1) + 1
                if ih > 0:
                    ua = (tx2 - tx1 + 1) * (ty2 - ty1 + 1) + area - iw * ih
                    ov = iw * ih / ua
                    if method == 1:
                        weight = 1 - ov if ov > nt else 1
                    elif method == 2:
                        weight = math.exp(-(ov * ov) / sigma)
                    else:
                        weight = 0 if ov > nt else 1
                    boxes[pos, 4] *= weight
                    if boxes[pos, 4] < threshold:
                        # The official code copies row n-1 over the dropped
                        # row instead of swapping them, so the dropped box
                        # is lost and row n-1 is left twice in the output
                        # with a stale score. A swap is what its comment
                        # ("discard the box by swapping with last box")
                        # means, and what we implement.
                        boxes[[pos, n - 1]] = boxes[[n - 1, pos]]
                        n -= 1
                        pos -= 1
            pos += 1
    scores = np.zeros(dets.shape[0])
    scores[boxes[:, 5].astype(int)] = boxes[:, 4]
    return scores


def random_detections(rng, num_boxes, num_classes):
    centres = rng.uniform(10, 90, (num_boxes, 2))
    sizes = rng.uniform(5, 40, (num_boxes, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    # Cluster boxes so that many overlap: copies jittered by a few pixels.
    boxes[num_boxes // 2:] = boxes[: num_boxes - num_boxes // 2] + rng.normal(0, 3, (num_boxes - num_boxes // 2, 4))
    scores = rng.uniform(0.0005, 1.0, num_boxes)
    labels = rng.integers(0, num_classes, num_boxes)
    return boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int32)


def official_per_class(boxes, scores, labels, **kwargs):
    """The official merge: soft-NMS on each class's rows separately."""
    result = np.zeros(len(scores))
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        dets = np.concatenate(
            [boxes[rows], scores[rows, None], np.arange(len(rows))[:, None]], axis=1
        )
        result[rows] = official_soft_nms(dets, **kwargs)
    return result


class TestSoftNMS(TestCase):
    @pytest.mark.multi_backend
    def test_two_boxes_by_hand(self):
        # Inclusive pixels: areas 100 and 50, overlap 50, union 100: iou 0.5.
        boxes = np.array([[[0, 0, 9, 9], [0, 0, 9, 4], [20, 20, 29, 29]]], "float32")
        scores = np.array([[0.9, 0.8, 0.7]], "float32")
        labels = np.array([[0, 0, 0]], "int32")
        result = to_numpy(soft_nms(boxes, scores, labels))
        np.testing.assert_allclose(result, [[0.9, 0.8 * math.exp(-0.25 / 0.5), 0.7]], rtol=1e-6)
        hard = to_numpy(soft_nms(boxes, scores, labels, method="hard", iou_threshold=0.4))
        np.testing.assert_allclose(hard, [[0.9, 0.0, 0.7]])
        linear = to_numpy(soft_nms(boxes, scores, labels, method="linear", iou_threshold=0.4))
        np.testing.assert_allclose(linear, [[0.9, 0.4, 0.7]], rtol=1e-6)
        # Other classes do not interact; continuous coordinates: areas 81 and 36, iou 36/81.
        other = to_numpy(soft_nms(boxes, scores, np.array([[0, 1, 0]], "int32")))
        np.testing.assert_allclose(other, scores)
        continuous = to_numpy(soft_nms(boxes, scores, labels, area_offset=0.0))
        np.testing.assert_allclose(continuous[0, 1], 0.8 * math.exp(-((36 / 81) ** 2) / 0.5), rtol=1e-6)

    @pytest.mark.multi_backend
    def test_equals_the_official_loop(self):
        rng = np.random.default_rng(3)
        batch = [random_detections(rng, 60, 3) for _ in range(2)]
        boxes, scores, labels = (np.stack(parts) for parts in zip(*batch))
        for method, name in ((2, "gaussian"), (1, "linear"), (0, "hard")):
            result = to_numpy(soft_nms(boxes, scores, labels, method=name))
            for b in range(2):
                expected = official_per_class(boxes[b], scores[b], labels[b], method=method)
                np.testing.assert_allclose(result[b], expected, rtol=1e-5, atol=1e-7, err_msg=name)

    def test_layer_round_trip_and_bad_input(self):
        layer = SoftNMS(method="linear", sigma=0.3)
        self.run_serialization_test(layer)
        with pytest.raises(ValueError, match="method"):
            soft_nms(np.zeros((1, 2, 4)), np.zeros((1, 2)), np.zeros((1, 2)), method="box")
        with pytest.raises(ValueError, match="boxes"):
            soft_nms(np.zeros((2, 4)), np.zeros((1, 2)), np.zeros((1, 2)))
