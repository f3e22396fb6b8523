"""3D targets of the official `ddd` task: hand-computed single objects and the rotation bins."""

import math

import numpy as np
import pytest

from keras_centernet.targets.ddd import render_ddd_targets
from keras_centernet.targets.ddd import rotation_bins
from tests.test_case import to_numpy


@pytest.mark.multi_backend
def test_single_object_by_hand():
    # Box (2, 3)-(12, 9) on a 16 x 16 map: centre (7, 6), w 10, h 6, offset 0.
    boxes = np.array([[[2.0, 3.0, 12.0, 9.0], [0.0, 0.0, 0.0, 0.0]]], "float32")
    labels = np.array([[1, -1]], "int32")
    depth = np.array([[20.5, 7.0]], "float32")
    dimensions = np.array([[[1.5, 1.6, 3.9], [9.0, 9.0, 9.0]]], "float32")
    alpha = np.array([[0.3, 0.3]], "float32")
    t = to_numpy(render_ddd_targets(boxes, labels, depth, dimensions, alpha, (16, 16),
                                    num_classes=3, max_objects=4))
    assert t["heatmap"].shape == (1, 16, 16, 3)
    assert t["heatmap"][0, 6, 7, 1] == 1.0
    assert t["heatmap"].max() == 1.0 and np.argmax(t["heatmap"][0, :, :, 1]) == 6 * 16 + 7
    assert t["heatmap"][..., [0, 2]].max() == 0.0
    np.testing.assert_array_equal(t["indices"][0], [6 * 16 + 7, 0, 0, 0])
    np.testing.assert_array_equal(t["mask"][0], [1, 0, 0, 0])
    np.testing.assert_allclose(t["depth"][0, :, 0], [20.5, 0, 0, 0])
    np.testing.assert_allclose(t["dimensions"][0, 0], [1.5, 1.6, 3.9])
    np.testing.assert_allclose(t["dimensions"][0, 1:], 0.0)
    np.testing.assert_allclose(t["size"][0, 0], [10.0, 6.0])
    np.testing.assert_allclose(t["offset"][0, 0], [0.0, 0.0])
    # alpha 0.3 < pi/6 and > -pi/6: both bins, residuals alpha + pi/2 and alpha - pi/2.
    np.testing.assert_array_equal(t["rotation_bins"][0], [[1, 1], [0, 0], [0, 0], [0, 0]])
    np.testing.assert_allclose(t["rotation_residuals"][0, 0], [0.3 + math.pi / 2, 0.3 - math.pi / 2], rtol=1e-6)
    np.testing.assert_allclose(t["rotation_residuals"][0, 1:], 0.0)


@pytest.mark.multi_backend
def test_sub_pixel_centre_offset_after_the_official_clip():
    # y2 = 8 is clipped to the last row, 7 (official): centre (3.75, 4.5).
    boxes = np.array([[[1.0, 2.0, 6.5, 8.0]]], "float32")
    t = to_numpy(render_ddd_targets(boxes, np.array([[0]]), np.array([[10.0]]),
                                    np.ones((1, 1, 3), "float32"), np.array([[0.0]]), (8, 8),
                                    max_objects=2))
    assert t["indices"][0, 0] == 4 * 8 + 3
    np.testing.assert_allclose(t["offset"][0, 0], [0.75, 0.5])
    np.testing.assert_allclose(t["size"][0, 0], [5.5, 5.0])
    assert t["heatmap"][0, 4, 3, 0] == 1.0


@pytest.mark.multi_backend
def test_rotation_bins_by_hand():
    pi = math.pi
    alpha = np.array([2.0, -2.0, 3.0, -3.0, 0.0], "float32")
    bins, residuals = to_numpy(rotation_bins(alpha))
    # 2.0 in (pi/6, 5pi/6): bin 1 only; -2.0 in (-5pi/6, -pi/6): bin 0 only;
    # 3.0 > 5pi/6 and -3.0 < -5pi/6: both; 0 in (-pi/6, pi/6): both.
    np.testing.assert_array_equal(bins, [[0, 1], [1, 0], [1, 1], [1, 1], [1, 1]])
    np.testing.assert_allclose(
        residuals,
        [[0.0, 2.0 - pi / 2], [-2.0 + pi / 2, 0.0], [3.0 + pi / 2, 3.0 - pi / 2],
         [-3.0 + pi / 2, -3.0 - pi / 2], [pi / 2, -pi / 2]],
        rtol=1e-6, atol=1e-6,
    )


def test_shape_errors_are_clear():
    boxes = np.zeros((1, 2, 4), "float32")
    with pytest.raises(ValueError, match="`depth` must have shape"):
        render_ddd_targets(boxes, np.zeros((1, 2)), np.zeros((1, 3)), np.zeros((1, 2, 3)),
                           np.zeros((1, 2)), (8, 8))
    with pytest.raises(ValueError, match="`dimensions` must have shape"):
        render_ddd_targets(boxes, np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 2, 2)),
                           np.zeros((1, 2)), (8, 8))
