"""The focal and L1 losses against hand-computed values and a NumPy transcription of the official ones."""

import math

import numpy as np
import pytest

from keras_centernet.losses.focal import focal_loss
from keras_centernet.losses.regression import reg_l1_loss
from tests.test_case import to_numpy
from tests.test_case import value_and_grads


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


def official_reg_l1_loss(output_nchw, mask, ind, target):
    """The official `RegL1Loss` with `_transpose_and_gather_feat`, written out in NumPy (float64)."""
    batch, channels = output_nchw.shape[:2]
    feat = output_nchw.transpose(0, 2, 3, 1).reshape(batch, -1, channels)
    pred = np.take_along_axis(feat, ind[..., None].astype(np.int64).repeat(channels, -1), axis=1)
    mask = np.broadcast_to(mask[..., None], pred.shape).astype(np.float64)
    return np.abs(pred * mask - target * mask).sum() / (mask.sum() + 1e-4)


@pytest.mark.multi_backend
def test_reg_l1_loss_equals_the_official_one():
    rng = np.random.default_rng(1)
    prediction = rng.normal(0, 3, (3, 5, 7, 2)).astype("float32")
    indices = rng.integers(0, 35, (3, 6)).astype("int32")
    indices[1, 2] = indices[1, 4]  # two objects on one pixel
    mask = (rng.uniform(size=(3, 6)) > 0.4).astype("float32")
    mask[2] = 0  # an image with no objects
    target = rng.uniform(0, 10, (3, 6, 2)).astype("float32")
    loss = float(to_numpy(reg_l1_loss(prediction, indices, mask, target)))
    expected = official_reg_l1_loss(prediction.transpose(0, 3, 1, 2).astype(np.float64), mask, indices, target)
    assert math.isclose(loss, expected, rel_tol=1e-5)


@pytest.mark.multi_backend
def test_losses_normalise_over_the_batch_with_an_empty_image():
    # Image 0: one peak, p = 0.5 everywhere; image 1: no object, p = 0.5 everywhere.
    # The official loss sums over the batch and divides by all peaks (1):
    # 16 * 0.25 ln 2 for image 0 plus 16 * 0.25 ln 2 of negatives for image 1.
    target = np.zeros((2, 4, 4, 1), "float32")
    target[0, 1, 2, 0] = 1
    loss = float(to_numpy(focal_loss(target, np.zeros_like(target))))
    assert math.isclose(loss, 32 * 0.25 * math.log(2), rel_tol=1e-6)
    # L1: image 0's one object errs by (1, 2); image 1's slots are empty: 3 / (2 + 1e-4).
    prediction = np.zeros((2, 4, 4, 2), "float32")
    target = np.array([[[1.0, 2.0]], [[5.0, 5.0]]], "float32")
    loss = float(to_numpy(reg_l1_loss(prediction, np.array([[6], [6]]), np.array([[1.0], [0.0]], "float32"), target)))
    assert math.isclose(loss, 3 / (2 + 1e-4), rel_tol=1e-6)


@pytest.mark.multi_backend
def test_focal_loss_gradients_stay_finite():
    # Saturated logits on peaks and background, with and without objects: no NaN, no inf.
    target = np.zeros((2, 4, 4, 1), "float32")
    target[0, 0, 0, 0] = 1
    target[0, 0, 1, 0] = 0.5
    logits = np.full_like(target, -100.0)
    logits[1] = 100.0
    logits[0, 3, 3, 0] = 3.0
    value, (gradient,) = value_and_grads(lambda z: focal_loss(target, z), logits)
    assert np.isfinite(value) and np.all(np.isfinite(gradient))
    # Inside the clamp the gradient is the analytic one: d/dz of p^2 (-log(1 - p)).
    p = 1 / (1 + math.exp(-3.0))
    expected = (2 * p * -math.log(1 - p) + p**2 / (1 - p)) * p * (1 - p)
    assert gradient[0, 3, 3, 0] == pytest.approx(expected, rel=1e-4)
    # Outside the clamp (saturated) the gradient is zero, as torch's clamp.
    assert gradient[1, 2, 2, 0] == 0.0 and gradient[0, 0, 0, 0] == 0.0


@pytest.mark.multi_backend
def test_straight_through_clamp_keeps_values_and_passes_gradients():
    """A centre pushed below logit -9.2: the official clamp stops its gradient, straight-through does not."""
    target = np.zeros((1, 3, 3, 1), "float32")
    target[0, 1, 1, 0] = 1
    logits = np.full_like(target, -1.0)
    logits[0, 1, 1, 0] = -20.0
    official, (official_gradient,) = value_and_grads(lambda z: focal_loss(target, z), logits)
    through, (through_gradient,) = value_and_grads(
        lambda z: focal_loss(target, z, clamp_gradient="straight_through"), logits
    )
    assert float(through) == pytest.approx(float(official), rel=1e-6)
    assert official_gradient[0, 1, 1, 0] == 0.0
    # d/dz of -(1 - p)^2 log(p) at the clamp, with the sigmoid's own derivative p (1 - p).
    p = 1 / (1 + math.exp(20.0))
    clamped = 1e-4
    expected = (2 * (1 - clamped) * math.log(clamped) - (1 - clamped) ** 2 / clamped) * p * (1 - p)
    assert through_gradient[0, 1, 1, 0] == pytest.approx(expected, rel=1e-3)
    assert through_gradient[0, 1, 1, 0] < 0
    np.testing.assert_allclose(through_gradient[0, 0], official_gradient[0, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="clamp_gradient"):
        focal_loss(target, logits, clamp_gradient="soft")
