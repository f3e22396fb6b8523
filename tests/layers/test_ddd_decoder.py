"""3D decoding (official `ddd_decode` + `ddd_post_process`) and the camera geometry, by hand."""

import math

import numpy as np
import pytest

from keras_centernet.layers.ddd_decoder import CenterNet3DDecoder
from keras_centernet.layers.ddd_decoder import alpha_from_bins
from keras_centernet.layers.ddd_decoder import alpha_to_rotation_y
from keras_centernet.layers.ddd_decoder import box_3d_corners
from keras_centernet.layers.ddd_decoder import decode_3d_detections
from keras_centernet.layers.ddd_decoder import project_to_image
from keras_centernet.layers.ddd_decoder import rotation_y_to_alpha
from keras_centernet.layers.ddd_decoder import unproject_to_3d
from tests.test_case import TestCase
from tests.test_case import to_numpy

# A camera for 64 x 64 input pixels, and KITTI's P2 (with its small translations).
P_SIMPLE = np.array([[100.0, 0, 32, 0], [0, 100, 32, 0], [0, 0, 1, 0]], "float32")
P_KITTI = np.array([[707.0493, 0, 604.0814, 45.75831], [0, 707.0493, 180.5066, -0.3454157],
                    [0, 0, 1.0, 0.004981016]], "float32")


def constructed_maps():
    """One car (class 1) at map pixel (x 5, y 8) of a 16 x 16 map."""
    heat = np.full((1, 16, 16, 3), -10.0, "float32")
    heat[0, 8, 5, 1] = 5.0
    maps = {
        "heatmap": heat,
        "rotation": np.zeros((1, 16, 16, 8), "float32"),
        "depth": np.zeros((1, 16, 16, 1), "float32"),
        "dimensions": np.zeros((1, 16, 16, 3), "float32"),
        "size": np.zeros((1, 16, 16, 2), "float32"),
        "offset": np.zeros((1, 16, 16, 2), "float32"),
    }
    maps["offset"][0, 8, 5] = (0.25, 0.5)
    maps["size"][0, 8, 5] = (3.0, 2.0)
    maps["depth"][0, 8, 5] = 20.0
    maps["dimensions"][0, 8, 5] = (1.5, 1.6, 4.0)
    # Bin 1 wins (logit 1 > bin 0's 0); its residual angle is 0.2.
    maps["rotation"][0, 8, 5] = (0, 0, 0, 1, 0, 1, math.sin(0.2), math.cos(0.2))
    return maps


@pytest.mark.multi_backend
def test_decoding_a_constructed_map_by_hand():
    m = constructed_maps()
    out = to_numpy(decode_3d_detections(m["heatmap"], m["rotation"], m["depth"], m["dimensions"],
                                        m["size"], m["offset"], P_SIMPLE[None], max_detections=5))
    assert out["labels"][0, 0] == 1
    np.testing.assert_allclose(out["scores"][0, 0], 1 / (1 + math.exp(-5.0)), rtol=1e-6)
    # Centre (5.25, 8.5) map pixels = (21, 34) input pixels; size (3, 2) * 4.
    np.testing.assert_allclose(out["centers"][0, 0], [21.0, 34.0], rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][0, 0], [15.0, 30.0, 27.0, 38.0], rtol=1e-6)
    alpha = 0.2 + math.pi / 2
    np.testing.assert_allclose(out["alpha"][0, 0], alpha, rtol=1e-6)
    np.testing.assert_allclose(out["depth"][0, 0], 20.0)
    np.testing.assert_allclose(out["dimensions"][0, 0], [1.5, 1.6, 4.0])
    # x = (21 - 32) * 20 / 100, y = (34 - 32) * 20 / 100 + h / 2, z = 20.
    np.testing.assert_allclose(out["locations"][0, 0], [-2.2, 0.4 + 0.75, 20.0], rtol=1e-5)
    np.testing.assert_allclose(out["rotation_y"][0, 0], alpha + math.atan2(21 - 32, 100), rtol=1e-6)


@pytest.mark.multi_backend
def test_alpha_from_bins_picks_the_bin_by_its_second_logit():
    # Bin 0 wins: atan2(sin, cos) - pi/2; residual -0.4 gives -0.4 - pi/2.
    rot = np.array([0, 2, math.sin(-0.4), math.cos(-0.4), 0, 1, 0, 1], "float32")
    np.testing.assert_allclose(alpha_from_bins(rot), -0.4 - math.pi / 2, rtol=1e-6)


@pytest.mark.multi_backend
def test_unproject_inverts_the_projection():
    points = np.array([[-3.0, 1.2, 15.0], [4.5, 1.7, 40.0], [0.0, 0.0, 5.0]], "float32")
    pixels = to_numpy(project_to_image(points, P_KITTI))
    # By hand for the first point: u = (fx X + cx Z + t0) / (Z + t2).
    w = 15.0 + 0.004981016
    np.testing.assert_allclose(pixels[0, 0], (707.0493 * -3.0 + 604.0814 * 15.0 + 45.75831) / w, rtol=1e-5)
    depth = points[:, 2] + P_KITTI[2, 3]  # the projective depth
    np.testing.assert_allclose(unproject_to_3d(pixels, depth, P_KITTI), points, rtol=1e-4, atol=1e-4)


@pytest.mark.multi_backend
def test_alpha_and_rotation_y_round_trip():
    alpha = np.array([0.1, -1.0, 3.0, -3.1], "float32")
    u = np.array([132.0, 32.0, 132.0, -68.0], "float32")  # u - cx = 100, 0, 100, -100 = fx * tan
    rotation_y = to_numpy(alpha_to_rotation_y(alpha, u, P_SIMPLE))
    # + pi/4, + 0, + pi/4 (wrapped by -2 pi), - pi/4 (wrapped by + 2 pi).
    expected = [0.1 + math.pi / 4, -1.0, 3.0 + math.pi / 4 - 2 * math.pi, -3.1 - math.pi / 4 + 2 * math.pi]
    np.testing.assert_allclose(rotation_y, expected, rtol=1e-5)
    np.testing.assert_allclose(rotation_y_to_alpha(rotation_y, u, P_SIMPLE), alpha, rtol=1e-5, atol=1e-6)


@pytest.mark.multi_backend
def test_box_corners_and_their_projection():
    corners = to_numpy(box_3d_corners(np.array([1.5, 1.6, 4.0]), np.array([1.0, 2.0, 10.0]),
                                      np.array(math.pi / 2)))
    assert corners.shape == (8, 3)
    # Turned a quarter: local (l/2, 0, w/2) -> (w/2, 0, -l/2); the top face is h higher (y - h).
    np.testing.assert_allclose(corners[0], [1.0 + 0.8, 2.0, 10.0 - 2.0], atol=1e-5)
    np.testing.assert_allclose(corners[6], [1.0 - 0.8, 2.0 - 1.5, 10.0 + 2.0], atol=1e-5)
    np.testing.assert_allclose(corners.mean(axis=0), [1.0, 2.0 - 0.75, 10.0], atol=1e-5)
    pixels = to_numpy(project_to_image(corners, P_SIMPLE))
    np.testing.assert_allclose(pixels[0], [100 * 1.8 / 8.0 + 32, 100 * 2.0 / 8.0 + 32], rtol=1e-5)


class TestDecoderLayer(TestCase):
    @pytest.mark.multi_backend
    def test_layer_blanks_below_threshold_and_serialises(self):
        decoder = CenterNet3DDecoder(max_detections=4)
        out = to_numpy(decoder(constructed_maps(), P_SIMPLE))
        # Only the car scores above the official 0.2 (the others are sigmoid(-10)).
        np.testing.assert_array_equal(out["num_detections"], [1])
        np.testing.assert_array_equal(out["labels"][0], [1, -1, -1, -1])
        np.testing.assert_allclose(out["locations"][0, 1:], 0.0)
        revived = self.run_serialization_test(decoder)
        assert revived.score_threshold == 0.2 and revived.max_detections == 4


def test_bad_calibration_is_refused():
    m = constructed_maps()
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 4\)"):
        decode_3d_detections(m["heatmap"], m["rotation"], m["depth"], m["dimensions"],
                             m["size"], m["offset"], np.eye(3))
