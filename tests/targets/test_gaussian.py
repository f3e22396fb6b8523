"""Gaussian radii (official, CornerNet-fixed, TTFNet) against the official loader's fixtures and by hand."""

import math
import os

import numpy as np
import pytest

from keras_centernet.targets.gaussian import gaussian_radius
from keras_centernet.targets.gaussian import ttfnet_radii
from tests.conftest import FIXTURES
from tests.test_case import to_numpy

FIXTURE = "targets/targets.npz"


@pytest.fixture(scope="module")
def fixtures():
    return dict(np.load(os.path.join(FIXTURES, FIXTURE)))


def quadratic_roots(h, w, o=0.7):
    """The three roots of CornerNet's three cases, both signs, in float64 (independent of the code)."""
    roots = []
    for a, b, c in (
        (1.0, h + w, w * h * (1 - o) / (1 + o)),
        (4.0, 2 * (h + w), (1 - o) * w * h),
        (4 * o, -2 * o * (h + w), (o - 1) * w * h),
    ):
        root = math.sqrt(b * b - 4 * a * c)
        roots.append(((b - root) / (2 * a), (b + root) / (2 * a), (b + root) / 2))
    return roots


@pytest.mark.multi_backend
def test_radius_tables(fixtures):
    """Every integer size 1..128 squared: the int radius of the official and the fixed formula."""
    sizes = np.arange(1, 129, dtype="float32")
    height, width = np.meshgrid(sizes, sizes, indexing="ij")
    for method in ("official", "fixed"):
        r = to_numpy(gaussian_radius(height, width, method=method))
        # float32 cancellation in `b3 + sq3` for thin boxes: ~1e-5 relative.
        np.testing.assert_allclose(r, fixtures[f"radius_float_table_{method}"], rtol=1e-4)
        radius = np.maximum(np.floor(r), 0).astype("int32")
        np.testing.assert_array_equal(radius, fixtures[f"radius_table_{method}"], err_msg=method)


@pytest.mark.multi_backend
def test_radius_of_every_fixture_object(fixtures):
    for case in (str(c) for c in fixtures["case_names"]):
        valid = fixtures[f"{case}_valid"]
        if not valid.any():
            continue
        hw = fixtures[f"{case}_hw_ceil"][valid].astype("float32")
        for method, suffix in (("official", ""), ("fixed", "_fixed")):
            r = to_numpy(gaussian_radius(hw[:, 0], hw[:, 1], method=method))
            np.testing.assert_allclose(r, fixtures[f"{case}_radius_float{suffix}"][valid], rtol=1e-4)
            np.testing.assert_array_equal(
                np.maximum(np.floor(r), 0).astype("int32"), fixtures[f"{case}_radius{suffix}"][valid],
                err_msg=f"{case} {method}",
            )


@pytest.mark.multi_backend
def test_radius_by_hand():
    # Official: (b + sqrt(disc)) / 2 for all three cases whatever `a` is (CornerNet
    # before its fix); fixed: the true roots, the smaller of cases 1 and 2, the larger of 3.
    for h, w in ((6.0, 10.0), (20.0, 35.0), (10.0, 16.0), (1.0, 1.0), (128.0, 3.0)):
        (small1, _, half1), (small2, _, half2), (_, right3, half3) = quadratic_roots(h, w)
        official = float(to_numpy(gaussian_radius(h, w)))
        fixed = float(to_numpy(gaussian_radius(h, w, method="fixed")))
        assert official == pytest.approx(min(half1, half2, half3), rel=1e-5)
        assert fixed == pytest.approx(min(small1, small2, right3), rel=1e-5)
    # Sizes whose radius is exactly an integer (the README's examples): truncation keeps it.
    assert float(to_numpy(gaussian_radius(20.0, 35.0))) == 7.0
    assert float(to_numpy(gaussian_radius(10.0, 16.0, method="fixed"))) == 1.0
    # Symmetric in height and width, any broadcastable shape.
    r = to_numpy(gaussian_radius(np.array([[5.0], [9.0]], "float32"), np.array([7.0, 30.0, 2.0], "float32")))
    assert r.shape == (2, 3)
    np.testing.assert_allclose(r, to_numpy(gaussian_radius(
        np.array([7.0, 30.0, 2.0], "float32"), np.array([[5.0], [9.0]], "float32"))), rtol=1e-6)


@pytest.mark.multi_backend
def test_ttfnet_radii_of_every_fixture_object(fixtures):
    for case in (str(c) for c in fixtures["case_names"]):
        valid = fixtures[f"{case}_valid"]
        if not valid.any():
            continue
        boxes = fixtures[f"{case}_boxes"][valid]
        h_radius, w_radius = ttfnet_radii(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0])
        np.testing.assert_array_equal(
            np.stack([to_numpy(h_radius), to_numpy(w_radius)], axis=1), fixtures[f"{case}_radius_ttf"][valid],
            err_msg=case,
        )


@pytest.mark.multi_backend
def test_ttfnet_radii_by_hand():
    # int(20 / 2 * 0.54) = int(5.4) = 5; int(35 / 2 * 0.54) = int(9.45) = 9; a 1-pixel box: 0.
    h_radius, w_radius = ttfnet_radii(np.array([20.0, 1.0], "float32"), np.array([35.0, 1.0], "float32"))
    np.testing.assert_array_equal(to_numpy(h_radius), [5, 0])
    np.testing.assert_array_equal(to_numpy(w_radius), [9, 0])
    assert str(to_numpy(h_radius).dtype) == "int32"


def test_bad_method():
    with pytest.raises(ValueError, match="method"):
        gaussian_radius(4.0, 4.0, method="ttfnet")
