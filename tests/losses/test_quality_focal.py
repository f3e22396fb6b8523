"""The quality focal loss against hand-computed values, a float64 NumPy transcription and finite differences."""

import math

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.losses.focal import quality_focal_loss
from tests.test_case import to_numpy
from tests.test_case import value_and_grads


def numpy_quality_focal(target, logits, beta=2.0):
    """Generalized Focal Loss' equation (5) per pixel, summed, over the peak count (float64)."""
    y, x = target.astype(np.float64), logits.astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    per_pixel = -np.abs(y - p) ** beta * (y * np.log(p) + (1 - y) * np.log(1 - p))
    return per_pixel.sum() / max(1.0, float((y == 1).sum()))


@pytest.mark.multi_backend
def test_quality_focal_loss_by_hand():
    # p = 0.5 everywhere. The peak (y = 1) and a background pixel (y = 0) each
    # cost 0.5^2 ln 2; the pixel with y = 0.5 = p costs nothing.
    target = np.zeros((1, 1, 3, 1), "float32")
    target[0, 0, 0, 0], target[0, 0, 1, 0] = 1.0, 0.5
    loss = float(to_numpy(quality_focal_loss(target, np.zeros_like(target))))
    assert math.isclose(loss, 2 * 0.25 * math.log(2), rel_tol=1e-6)
    # Logit ln 3 at the peak: p = 3/4, |1 - p|^2 = 1/16, cost -ln(3/4) / 16.
    logits = np.zeros_like(target)
    logits[0, 0, 0, 0] = math.log(3.0)
    loss = float(to_numpy(quality_focal_loss(target, logits)))
    assert math.isclose(loss, -math.log(0.75) / 16 + 0.25 * math.log(2), rel_tol=1e-6)


@pytest.mark.multi_backend
def test_quality_focal_loss_equals_the_transcription_and_stays_finite():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 0.99, (2, 6, 6, 3)).astype("float32") ** 3
    target[0, 2, 3, 1] = target[1, 5, 5, 0] = 1.0
    logits = rng.normal(0, 3, target.shape).astype("float32")
    loss = float(to_numpy(quality_focal_loss(target, logits)))
    assert math.isclose(loss, numpy_quality_focal(target, logits), rel_tol=1e-5)
    # Saturated logits: the cross-entropy from logits has no log(0).
    logits[0, 0, 0, 0], logits[0, 0, 1, 0], logits[0, 2, 3, 1] = 60.0, -60.0, -60.0
    value, (_, grads) = value_and_grads(quality_focal_loss, target, logits)
    assert np.isfinite(value) and np.all(np.isfinite(grads))
    # The peak with logit -60 has p ~ 0: loss 60 (|1 - 0|^2 x -log p) over 2 peaks, at least.
    assert float(value) >= 30.0


@pytest.mark.multi_backend
def test_quality_focal_loss_gradient_by_finite_differences():
    rng = np.random.default_rng(1)
    target = rng.uniform(0, 1, (1, 3, 3, 1)).astype("float64")
    target[0, 1, 1, 0] = 1.0
    logits = rng.normal(0, 1, target.shape)
    _, (_, grads) = value_and_grads(
        quality_focal_loss, target.astype("float32"), logits.astype("float32"))
    step = 1e-5
    for index in [(0, 0, 0, 0), (0, 1, 1, 0), (0, 2, 1, 0)]:
        up, down = logits.copy(), logits.copy()
        up[index] += step
        down[index] -= step
        numeric = (numpy_quality_focal(target, up) - numpy_quality_focal(target, down)) / (2 * step)
        assert math.isclose(float(np.asarray(grads)[index]), numeric, rel_tol=1e-3, abs_tol=1e-6)


@pytest.mark.multi_backend
def test_centernet_trains_with_the_quality_focal_loss_and_keeps_it_in_its_config():
    keras.utils.set_random_seed(0)
    model = kc.CenterNet(
        backbone=kc.backbones.ResNetBackbone(depth=18, width=8),
        neck=kc.necks.UpConvNeck(filters=(16, 16, 16)),
        num_classes=2, head_channels=8, max_objects=4, heatmap_loss="quality_focal",
    )
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    boxes = np.array([[[8, 8, 40, 30], [0, 0, 0, 0]], [[20, 10, 60, 50], [30, 30, 50, 60]]],
                     "float32")
    labels = np.array([[0, -1], [1, 0]], "int32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    targets = {"boxes": boxes, "labels": labels}
    heatmap = model.render_targets(images, targets, model(images)["heatmap"])["heatmap"]
    # The logged heatmap loss is the quality focal loss of the rendered targets.
    expected = float(to_numpy(quality_focal_loss(heatmap, model(images)["heatmap"])))
    logs = model.evaluate(images, targets, batch_size=2, verbose=0, return_dict=True)
    assert math.isclose(logs["heatmap_loss"], expected, rel_tol=1e-4)
    history = model.fit(images, targets, batch_size=2, epochs=3, verbose=0)
    assert all(np.isfinite(history.history["heatmap_loss"]))
    clone = kc.CenterNet.from_config(model.get_config())
    assert clone.heatmap_loss == "quality_focal"
    with pytest.raises(ValueError, match="heatmap_loss"):
        kc.CenterNet(backbone=kc.backbones.ResNetBackbone(depth=18, width=8), heatmap_loss="qfl")
