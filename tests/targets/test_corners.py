"""Keypoint-Triplets targets against a hand-computed box and a transcription of the official sampler's loop."""

import math

import numpy as np
import pytest

from keras_centernet.targets.corners import render_triplet_targets
from tests.test_case import to_numpy


def official_gaussian_radius(height, width, min_overlap=0.7):
    """CornerNet's `gaussian_radius` as Duan et al.'s `sample/utils.py` has it (float64)."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def official_draw_gaussian(heatmap, center, radius, delte=6):
    diameter = 2 * radius + 1
    sigma = diameter / delte
    m = (diameter - 1) / 2
    y, x = np.ogrid[-m:m + 1, -m:m + 1]
    gaussian = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    gaussian[gaussian < np.finfo(gaussian.dtype).eps * gaussian.max()] = 0
    x, y = center
    height, width = heatmap.shape
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    window = heatmap[y - top:y + bottom, x - left:x + right]
    np.maximum(window, gaussian[radius - top:radius + bottom, radius - left:radius + right], out=window)


def official_targets(boxes, labels, output_size, num_classes, stride, max_objects):
    """The official `kp_detection` loop after its resize, per image (slots kept at the object's index)."""
    batch = boxes.shape[0]
    height, width = output_size
    heat = {k: np.zeros((batch, num_classes, height, width)) for k in ("tl", "br", "ct")}
    regr = {k: np.zeros((batch, max_objects, 2)) for k in ("tl", "br", "ct")}
    tags = {k: np.zeros((batch, max_objects), np.int64) for k in ("tl", "br", "ct")}
    mask = np.zeros((batch, max_objects))
    ratio = 1.0 / stride
    for b in range(batch):
        for k in range(min(boxes.shape[1], max_objects)):
            det = boxes[b, k].astype(np.float64).copy()
            det[0::2] = np.clip(det[0::2], 0, width * stride - 1)
            det[1::2] = np.clip(det[1::2], 0, height * stride - 1)
            if not (det[2] - det[0] > 0 and det[3] - det[1] > 0) or not 0 <= labels[b, k] < num_classes:
                continue
            points = {
                "tl": (det[0] * ratio, det[1] * ratio),
                "br": (det[2] * ratio, det[3] * ratio),
                "ct": ((det[0] + det[2]) / 2 * ratio, (det[1] + det[3]) / 2 * ratio),
            }
            radius = official_gaussian_radius(
                math.ceil((det[3] - det[1]) * ratio), math.ceil((det[2] - det[0]) * ratio)
            )
            radius = max(0, int(radius))
            for key, (fx, fy) in points.items():
                ix, iy = int(fx), int(fy)
                official_draw_gaussian(heat[key][b, labels[b, k]], [ix, iy], radius, delte=5 if key == "ct" else 6)
                regr[key][b, k] = [fx - ix, fy - iy]
                tags[key][b, k] = iy * width + ix
            mask[b, k] = 1
    names = {"tl": "top_left", "br": "bottom_right", "ct": "center"}
    out = {"mask": mask}
    for key, name in names.items():
        out[f"{name}_heatmap"] = heat[key].transpose(0, 2, 3, 1)
        out[f"{name}_offset"] = regr[key]
        out[f"{name}_indices"] = tags[key]
    return out


@pytest.mark.multi_backend
def test_one_box_by_hand():
    # Input pixels (10, 14)-(50, 38), stride 4: map (2.5, 3.5)-(12.5, 9.5),
    # centre (7.5, 6.5); size ceil(10) x ceil(6). The official radius of a
    # 6 x 10 box is 2.06.. -> 2 (r3 = (-22.4 + sqrt(22.4^2 - 4 * 2.8 * -18)) / 2).
    boxes = np.array([[[10.0, 14.0, 50.0, 38.0], [0, 0, 0, 0]]], "float32")
    labels = np.array([[1, -1]])
    targets = to_numpy(render_triplet_targets(boxes, labels, (16, 16), num_classes=3, max_objects=4))
    for name, (x, y) in {"top_left": (2, 3), "bottom_right": (12, 9), "center": (7, 6)}.items():
        heat = targets[f"{name}_heatmap"]
        assert heat[0, y, x, 1] == 1.0 and heat.max() == 1.0
        assert heat[..., [0, 2]].max() == 0.0
        np.testing.assert_allclose(targets[f"{name}_offset"][0, 0], [0.5, 0.5])
        assert targets[f"{name}_indices"][0, 0] == y * 16 + x
        # Radius 2: two pixels out there is heat, three pixels out none.
        assert heat[0, y, x + 2, 1] > 0 and heat[0, y, x + 3, 1] == 0
    # Corners: sigma = 5 / 6; centre: sigma = 5 / 5 = 1.
    np.testing.assert_allclose(targets["top_left_heatmap"][0, 3, 3, 1], math.exp(-1 / (2 * (5 / 6) ** 2)), rtol=1e-6)
    np.testing.assert_allclose(targets["center_heatmap"][0, 6, 8, 1], math.exp(-0.5), rtol=1e-6)
    np.testing.assert_allclose(targets["center_heatmap"][0, 7, 8, 1], math.exp(-1.0), rtol=1e-6)
    np.testing.assert_array_equal(targets["mask"], [[1, 0, 0, 0]])
    assert targets["top_left_offset"].shape == (1, 4, 2)


@pytest.mark.multi_backend
def test_box_on_the_image_edge_keeps_its_subpixel_corner():
    # The official clip at input pixel 63 puts the corner at 15.75 on the map.
    targets = to_numpy(render_triplet_targets(np.array([[[40.0, 40.0, 80.0, 70.0]]]), np.array([[0]]), (16, 16), 1))
    assert targets["bottom_right_indices"][0, 0] == 15 * 16 + 15
    np.testing.assert_allclose(targets["bottom_right_offset"][0, 0], [0.75, 0.75])
    assert targets["bottom_right_heatmap"][0, 15, 15, 0] == 1.0


@pytest.mark.multi_backend
def test_matches_the_official_loop(rng):
    size, stride, classes = (24, 20), 4, 3
    x1 = rng.uniform(-10, 70, size=(3, 7))
    y1 = rng.uniform(-10, 90, size=(3, 7))
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, 60, (3, 7)), y1 + rng.uniform(1, 60, (3, 7))], -1)
    labels = rng.integers(-1, classes, size=(3, 7))
    boxes[0, 3] = [20, 20, 20, 40]  # zero width: skipped
    boxes[1, 2] = [np.nan, 1, 5, 5]
    labels[1, 2] = 0
    boxes = boxes.astype("float32")
    expected = official_targets(boxes, labels, size, classes, stride, max_objects=6)
    actual = to_numpy(render_triplet_targets(boxes, labels, size, classes, stride=stride, max_objects=6))
    assert sorted(actual) == sorted(expected)
    assert expected["mask"].sum() >= 8
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-5, err_msg=name)


def test_bad_arguments():
    boxes = np.zeros((1, 2, 4), "float32")
    with pytest.raises(ValueError, match=r"`boxes` must have shape \(B, M, 4\)"):
        render_triplet_targets(np.zeros((2, 4)), np.zeros((1, 2)), (8, 8), 2)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(B, M\)"):
        render_triplet_targets(boxes, np.zeros((2,)), (8, 8), 2)
    with pytest.raises(ValueError, match="`num_classes` must be a positive int"):
        render_triplet_targets(boxes, np.zeros((1, 2)), (8, 8), 0)
    with pytest.raises(ValueError, match="`stride` must be positive"):
        render_triplet_targets(boxes, np.zeros((1, 2)), (8, 8), 2, stride=0)
