"""The focal and L1 losses against hand-computed values and a NumPy transcription of the official ones."""

import math

import numpy as np
import pytest

from keras_centernet.losses.focal import focal_loss
from keras_centernet.losses.regression import reg_l1_loss
from tests.test_case import to_numpy


def official_neg_loss(pred, gt):
    """The official `_neg_loss` on NCHW-agnostic arrays, written out in NumPy (float64)."""
    pos_inds = (gt == 1).astype(np.float64)
    neg_inds = (gt < 1).astype(np.float64)
    neg_weights = (1 - gt) ** 4
    pos_loss = (np.log(pred) * (1 - pred) ** 2 * pos_inds).sum()
    neg_loss = (np.log(1 - pred) * pred**2 * neg_weights * neg_inds).sum()
    num_pos = pos_inds.sum()
    return -neg_loss if num_pos == 0 else -(pos_loss + neg_loss) / num_pos


def official_sigmoid(x):
    return np.clip(1 / (1 + np.exp(-x.astype(np.float64))), 1e-4, 1 - 1e-4)


@pytest.mark.multi_backend
def test_focal_loss_by_hand():
    # p = 0.5 everywhere, one peak and 15 zero targets: 16 * 0.25 * ln 2.
    target = np.zeros((1, 4, 4, 1), "float32")
    target[0, 1, 2, 0] = 1
    loss = float(to_numpy(focal_loss(target, np.zeros_like(target))))
    assert math.isclose(loss, 16 * 0.25 * math.log(2), rel_tol=1e-6)
    # A Gaussian neighbour (y = 0.5) is penalised (1 - 0.5)^4 = 1/16 as much.
    target[0, 1, 3, 0] = 0.5
    loss = float(to_numpy(focal_loss(target, np.zeros_like(target))))
    assert math.isclose(loss, (15 + 1 / 16) * 0.25 * math.log(2), rel_tol=1e-6)


@pytest.mark.multi_backend
def test_focal_loss_without_objects_is_the_negative_sum():
    target = np.zeros((2, 3, 3, 2), "float32")
    logits = np.full_like(target, -1.0)
    p = 1 / (1 + math.exp(1.0))
    expected = -target.size * math.log(1 - p) * p**2
    assert math.isclose(float(to_numpy(focal_loss(target, logits))), expected, rel_tol=1e-6)


@pytest.mark.multi_backend
def test_focal_loss_equals_the_official_one():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 0.99, (2, 8, 8, 3)).astype("float32") ** 3
    target[0, 2, 3, 1] = target[1, 5, 5, 0] = target[1, 0, 7, 2] = 1.0
    # Large logits exercise the clamp at 1e-4 and 1 - 1e-4.
    logits = rng.normal(0, 4, target.shape).astype("float32")
    logits[0, 0, 0, 0], logits[0, 0, 1, 0] = 30.0, -30.0
    loss = float(to_numpy(focal_loss(target, logits)))
    expected = official_neg_loss(official_sigmoid(logits), target.astype(np.float64))
    assert math.isclose(loss, expected, rel_tol=1e-5)


@pytest.mark.multi_backend
def test_reg_l1_loss_by_hand():
    # Map (1, 2, 3, 2); objects at flat 1 (y0, x1) and 5 (y1, x2); the third slot is empty.
    prediction = np.arange(12, dtype="float32").reshape(1, 2, 3, 2)
    indices = np.array([[1, 5, 0]])
    mask = np.array([[1.0, 1.0, 0.0]], "float32")
    target = np.array([[[3.0, 1.0], [10.0, 10.0], [99.0, 99.0]]], "float32")
    # Gathered: (2, 3) and (10, 11): |2-3| + |3-1| + |10-10| + |11-10| = 4 over 4 channels.
    loss = float(to_numpy(reg_l1_loss(prediction, indices, mask, target)))
    assert math.isclose(loss, 4 / (4 + 1e-4), rel_tol=1e-6)
    # No object: zero (not NaN).
    assert float(to_numpy(reg_l1_loss(prediction, indices, np.zeros_like(mask), target))) == 0.0
