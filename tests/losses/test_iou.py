"""GIoU / DIoU / CIoU losses against hand-computed values; LTRB losses at centres and TTFNet-weighted."""

import math

import keras
import numpy as np
import pytest

from keras_centernet.losses.iou import box_iou_loss
from keras_centernet.losses.iou import gaussian_box_weights
from keras_centernet.losses.iou import ltrb_center_loss
from keras_centernet.losses.iou import ltrb_gaussian_loss
from tests.test_case import to_numpy
from tests.test_case import value_and_grads

# (true, predicted, GIoU, DIoU, CIoU), computed by hand.
OVERLAPPING = ([0, 0, 2, 2], [1, 1, 3, 3])
# I = 1, U = 7, enclosing 3x3: GIoU = 1/7 - 2/9; centres 2 apart squared, diagonal^2 18.
OVERLAPPING_VALUES = (1 / 7 - 2 / 9, 1 / 7 - 2 / 18, 1 / 7 - 2 / 18)  # same aspect: v = 0
NESTED = ([0, 0, 4, 2], [0, 0, 2, 2])
# I = 4, U = 8, enclosing = the true box (area 8): GIoU = IoU = 0.5; rho^2 = 1, c^2 = 20.
_V = 4 / math.pi**2 * (math.atan(2) - math.atan(1)) ** 2
NESTED_VALUES = (0.5, 0.5 - 1 / 20, 0.5 - 1 / 20 - _V / (0.5 + _V) * _V)
DISJOINT = ([0, 0, 1, 1], [2, 0, 3, 1])
# I = 0, U = 2, enclosing 3x1: GIoU = -1/3; rho^2 = 4, c^2 = 10.
DISJOINT_VALUES = (-1 / 3, -4 / 10, -4 / 10)


class TestBoxIoULoss:
    @pytest.mark.multi_backend
    @pytest.mark.parametrize("index, mode", [(0, "giou"), (1, "diou"), (2, "ciou")])
    def test_hand_computed(self, index, mode):
        pairs = [OVERLAPPING, NESTED, DISJOINT]
        values = [OVERLAPPING_VALUES, NESTED_VALUES, DISJOINT_VALUES]
        true = np.array([p[0] for p in pairs], "float32")
        pred = np.array([p[1] for p in pairs], "float32")
        expected = 1.0 - np.array([v[index] for v in values])
        np.testing.assert_allclose(to_numpy(box_iou_loss(true, pred, mode)), expected, atol=1e-5)

    @pytest.mark.multi_backend
    @pytest.mark.parametrize("mode", ["giou", "diou", "ciou"])
    def test_zero_for_identical_boxes(self, mode):
        boxes = np.array([[1.0, 2.0, 5.0, 3.0], [0.0, 0.0, 7.0, 9.0]], "float32")
        np.testing.assert_allclose(to_numpy(box_iou_loss(boxes, boxes, mode)), 0.0, atol=1e-5)

    def test_ciou_agrees_with_keras_core(self, rng):
        xy = rng.uniform(0, 20, size=(50, 2, 2))
        wh = rng.uniform(1, 20, size=(50, 2, 2))
        boxes = np.concatenate([xy, xy + wh], axis=-1).astype("float32")
        ours = 1 - to_numpy(box_iou_loss(boxes[:, 0], boxes[:, 1], "ciou"))
        core = to_numpy(keras.utils.bounding_boxes.compute_ciou(boxes[:, 0], boxes[:, 1], "xyxy"))
        # Keras adds an epsilon to the heights: agreement to ~1e-6 relative.
        np.testing.assert_allclose(ours, core.reshape(ours.shape), atol=1e-4)

    @pytest.mark.multi_backend
    def test_gradient_moves_disjoint_boxes_together(self):
        true = np.array([[0.0, 0.0, 1.0, 1.0]], "float32")
        pred = np.array([[2.0, 0.0, 3.0, 1.0]], "float32")
        _, (_, grad) = value_and_grads(lambda t, p: keras.ops.sum(box_iou_loss(t, p, "giou")), true, pred)
        # GIoU has a gradient without overlap: the left side moves left.
        assert grad[0, 0] > 0

    @pytest.mark.multi_backend
    def test_rejects_unknown_mode(self):
        with pytest.raises(ValueError, match="mode"):
            box_iou_loss(np.zeros((1, 4)), np.zeros((1, 4)), "eiou")


class TestLTRBLosses:
    @pytest.mark.multi_backend
    def test_center_loss_reads_distances_at_the_centre_cell(self):
        ltrb = np.zeros((1, 8, 8, 4), "float32")
        # Object at cell (x=3, y=2), box (1, 1, 6, 4): exact distances 2, 1, 3, 2.
        ltrb[0, 2, 3] = [2, 1, 3, 2]
        # A second object predicted at half its size around (5, 5): box (4, 4, 6, 6) vs true (3, 3, 7, 7).
        ltrb[0, 5, 5] = [1, 1, 1, 1]
        indices = np.array([[2 * 8 + 3, 5 * 8 + 5, 0]], "int32")
        mask = np.array([[1, 1, 0]], "float32")
        boxes = np.array([[[1, 1, 6, 4], [3, 3, 7, 7], [0, 0, 1, 1]]], "float32")
        # GIoU 1 for the first; IoU 4/16 and the enclosing box is the true one for the second.
        expected = (0.0 + (1 - 0.25)) / (2 + 1e-4)
        np.testing.assert_allclose(float(to_numpy(ltrb_center_loss(ltrb, indices, mask, boxes))), expected, rtol=1e-5)

    @pytest.mark.multi_backend
    def test_gaussian_weights_by_hand(self):
        # A 10x6 box centred on cell (5, 3): TTFNet radii int(3 * 0.54) = 1, int(5 * 0.54) = 2.
        boxes = np.array([[[0, 0, 10, 6], [0, 0, 0, 0]]], "float32")
        mask = np.array([[1, 0]], "float32")
        cell_boxes, weights = gaussian_box_weights(boxes, mask, (8, 12), pixel_area=16.0)
        weights = to_numpy(weights).reshape(8, 12)
        sigma_y, sigma_x = 3 / 6, 5 / 6
        gy = np.exp(-np.arange(-1, 2) ** 2 / (2 * sigma_y**2))
        gx = np.exp(-np.arange(-2, 3) ** 2 / (2 * sigma_x**2))
        window = gy[:, None] * gx[None, :]
        expected = np.zeros((8, 12))
        expected[2:5, 3:8] = window / window.sum() * np.log(60 * 16)
        np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(to_numpy(cell_boxes)[0, 3 * 12 + 5], [0, 0, 10, 6])

    @pytest.mark.multi_backend
    def test_gaussian_overlap_goes_to_the_smaller_box(self):
        big = [0, 0, 16, 16]
        small = [6, 6, 10, 10]  # centre (8, 8), inside the big box's Gaussian
        boxes = np.array([[big, small]], "float32")
        cell_boxes, weights = gaussian_box_weights(boxes, np.ones((1, 2), "float32"), (16, 16))
        np.testing.assert_allclose(to_numpy(cell_boxes)[0, 8 * 16 + 8], small)
        np.testing.assert_allclose(to_numpy(cell_boxes)[0, 8 * 16 + 4], big)

    @pytest.mark.multi_backend
    def test_gaussian_loss_zero_for_exact_distances(self):
        box = np.array([1.0, 2.0, 13.0, 10.0])
        ys, xs = np.meshgrid(np.arange(12), np.arange(16), indexing="ij")
        ltrb = np.stack([xs - box[0], ys - box[1], box[2] - xs, box[3] - ys], axis=-1)[None].astype("float32")
        loss = ltrb_gaussian_loss(np.maximum(ltrb, 0), box[None, None].astype("float32"), np.ones((1, 1)))
        assert float(to_numpy(loss)) < 1e-5
        # Halved distances everywhere: a positive loss.
        assert float(to_numpy(ltrb_gaussian_loss(np.maximum(ltrb, 0) / 2, box[None, None].astype("float32"),
                                                  np.ones((1, 1))))) > 0.1
