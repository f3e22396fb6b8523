"""Target rendering equals the official ctdet loader (fixtures of `tests/fixtures/targets/`)."""

import os

import numpy as np
import pytest

from keras_centernet.targets.render import render_targets
from tests.conftest import FIXTURES
from tests.test_case import to_numpy

FIXTURE = "targets/targets.npz"
HEATMAP_KEYS = {"official": "hm", "fixed": "hm_fixed", "ttfnet": "hm_ttf"}


@pytest.fixture(scope="module")
def fixtures():
    return dict(np.load(os.path.join(FIXTURES, FIXTURE)))


def case_names(fixtures):
    return [str(name) for name in fixtures["case_names"]]


def render_case(fixtures, case, radius, max_objects=128):
    boxes = fixtures[f"{case}_boxes_preclip"][None]
    labels = fixtures[f"{case}_classes"][None]
    grid = tuple(int(v) for v in fixtures[f"{case}_grid"])
    num_classes = int(fixtures[f"{case}_num_classes"])
    return to_numpy(render_targets(boxes, labels, grid, num_classes, max_objects, radius=radius))


@pytest.mark.multi_backend
@pytest.mark.parametrize("radius", ["official", "fixed", "ttfnet"])
def test_every_case_equals_the_official_loader(fixtures, radius):
    for case in case_names(fixtures):
        targets = render_case(fixtures, case, radius)
        expected = fixtures[f"{case}_{HEATMAP_KEYS[radius]}"].transpose(1, 2, 0)[None]
        heatmap = targets["heatmap"]
        assert heatmap.shape == expected.shape, case
        np.testing.assert_array_equal(heatmap > 0, expected > 0, err_msg=case)
        np.testing.assert_allclose(heatmap, expected, rtol=0, atol=1e-6, err_msg=case)
        # Every drawn object's peak is exactly 1.
        valid = fixtures[f"{case}_valid"]
        ct_int = fixtures[f"{case}_ct_int"][valid]
        classes = fixtures[f"{case}_classes"][valid]
        np.testing.assert_array_equal(heatmap[0, ct_int[:, 1], ct_int[:, 0], classes], 1.0)
        # Regression targets: exact (float32 clip, halve, truncate).
        np.testing.assert_array_equal(targets["size"][0], fixtures[f"{case}_wh"], err_msg=case)
        np.testing.assert_array_equal(targets["offset"][0], fixtures[f"{case}_reg"], err_msg=case)
        np.testing.assert_array_equal(targets["indices"][0], fixtures[f"{case}_ind"], err_msg=case)
        np.testing.assert_array_equal(targets["mask"][0], fixtures[f"{case}_reg_mask"], err_msg=case)


@pytest.mark.multi_backend
def test_batch_of_cases_with_padding(fixtures):
    """Two images batched, objects padded with label -1: each equals its own fixture."""
    # One batch needs one grid: c1_single and c5_nasty are both 24x40.
    cases = ["c1_single", "c5_nasty"]
    count = max(len(fixtures[f"{c}_classes"]) for c in cases)
    boxes = np.zeros((2, count, 4), "float32")
    labels = np.full((2, count), -1, "int32")
    for i, case in enumerate(cases):
        n = len(fixtures[f"{case}_classes"])
        boxes[i, :n] = fixtures[f"{case}_boxes_preclip"]
        labels[i, :n] = fixtures[f"{case}_classes"]
    num_classes = int(fixtures["c5_nasty_num_classes"])
    targets = to_numpy(render_targets(boxes, labels, (24, 40), num_classes))
    for i, case in enumerate(cases):
        expected = fixtures[f"{case}_hm"].transpose(1, 2, 0)
        np.testing.assert_allclose(targets["heatmap"][i, ..., : expected.shape[-1]], expected, atol=1e-6)
        np.testing.assert_array_equal(targets["mask"][i], fixtures[f"{case}_reg_mask"])
        np.testing.assert_array_equal(targets["indices"][i], fixtures[f"{case}_ind"])


@pytest.mark.multi_backend
def test_hand_computed_single_object():
    # Box 10x6 on a 16x16 map: ceil (6, 10) -> official radius int(r), centre (7, 6).
    targets = to_numpy(render_targets(np.array([[[2.0, 3.0, 12.0, 9.0]]]), np.array([[1]]), (16, 16), 3, 4))
    h, w = 6.0, 10.0
    o = 0.7
    b3 = -2 * o * (h + w)
    r3 = (b3 + np.sqrt(b3**2 - 4 * (4 * o) * ((o - 1) * w * h))) / 2
    r1 = ((h + w) + np.sqrt((h + w) ** 2 - 4 * w * h * (1 - o) / (1 + o))) / 2
    r2 = (2 * (h + w) + np.sqrt((2 * (h + w)) ** 2 - 16 * (1 - o) * w * h)) / 2
    radius = int(min(r1, r2, r3))
    sigma = (2 * radius + 1) / 6
    expected = np.zeros((16, 16))
    for y in range(6 - radius, 6 + radius + 1):
        for x in range(7 - radius, 7 + radius + 1):
            expected[y, x] = np.exp(-((x - 7) ** 2 + (y - 6) ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(targets["heatmap"][0, :, :, 1], expected, atol=1e-6)
    assert targets["heatmap"][0, :, :, [0, 2]].max() == 0
    np.testing.assert_array_equal(targets["size"][0, 0], [10, 6])
    np.testing.assert_array_equal(targets["offset"][0, 0], [0, 0])
    assert targets["indices"][0, 0] == 6 * 16 + 7
    np.testing.assert_array_equal(targets["mask"][0], [1, 0, 0, 0])


@pytest.mark.multi_backend
def test_invalid_objects_leave_zero_slots():
    boxes = np.array([[[np.nan, 1, 5, 5], [1, 1, 1, 5], [2, 2, 6, 6], [-9, -9, -1, -1], [2, 2, 6, 6]]], "float32")
    labels = np.array([[0, 0, 5, 0, -1]])
    targets = to_numpy(render_targets(boxes, labels, (8, 8), 2, 5))
    np.testing.assert_array_equal(targets["mask"], 0)
    np.testing.assert_array_equal(targets["heatmap"], 0)
    assert np.all(np.isfinite(targets["size"])) and np.all(targets["size"] == 0)


def test_jit_compiled_rendering(fixtures):
    """Inside a compiled function of the backend (XLA on TensorFlow and JAX)."""
    import keras

    case = "c6_overflow"
    boxes = fixtures[f"{case}_boxes_preclip"][None]
    labels = fixtures[f"{case}_classes"][None]
    grid = tuple(int(v) for v in fixtures[f"{case}_grid"])
    num_classes = int(fixtures[f"{case}_num_classes"])
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        function = tf.function(
            lambda b, l: render_targets(b, l, grid, num_classes), jit_compile=True
        )
    elif keras.backend.backend() == "jax":
        import jax

        function = jax.jit(lambda b, l: render_targets(b, l, grid, num_classes))
    else:
        function = lambda b, l: render_targets(b, l, grid, num_classes)  # noqa: E731
    targets = to_numpy(function(boxes, labels))
    np.testing.assert_allclose(
        targets["heatmap"][0], fixtures[f"{case}_hm"].transpose(1, 2, 0), rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal(targets["indices"][0], fixtures[f"{case}_ind"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="radius"):
        render_targets(np.zeros((1, 1, 4)), np.zeros((1, 1)), (8, 8), 2, radius="wide")
    with pytest.raises(ValueError, match="boxes"):
        render_targets(np.zeros((1, 4)), np.zeros((1, 1)), (8, 8), 2)
