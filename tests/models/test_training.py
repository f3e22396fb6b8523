"""CenterNet trains with `model.fit`: it learns a small scene set, on every backend, and survives bad boxes."""

import keras
import numpy as np
import pytest

import keras_centernet as kc
from tests.test_case import to_numpy


def scene_batch(num_images=4, size=128, seed=0, max_objects=8):
    """Coloured rectangles (class 0) and ellipses (class 1) on grey noise, with their boxes."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(90, 130, (num_images, size, size, 3)).astype("float32")
    boxes = np.zeros((num_images, max_objects, 4), "float32")
    labels = np.full((num_images, max_objects), -1, "int32")
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for i in range(num_images):
        placed = []
        while len(placed) < 1 + i % 3:
            # Sizes 19% to 44% of the image: three always fit without overlap.
            w, h = rng.uniform(0.19 * size, 0.44 * size, 2)
            x1, y1 = rng.uniform(2, size - 2 - w), rng.uniform(2, size - 2 - h)
            box = np.array([x1, y1, x1 + w, y1 + h])
            if any(iou(box, other) > 0 for other in placed):
                continue
            label = int(rng.integers(0, 2))
            if label == 0:
                inside = (xx >= x1) & (xx < x1 + w) & (yy >= y1) & (yy < y1 + h)
                color = (230, 40, 40)
            else:
                inside = ((xx - x1 - w / 2) / (w / 2)) ** 2 + ((yy - y1 - h / 2) / (h / 2)) ** 2 <= 1
                color = (40, 80, 230)
            images[i][inside] = color
            boxes[i, len(placed)] = box
            labels[i, len(placed)] = label
            placed.append(box)
    return images, {"boxes": boxes, "labels": labels}


def iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union


def matched_objects(detections, targets, score_threshold=0.3, min_iou=0.7):
    """(found, total): ground-truth objects with a detection of the right class and IoU > min_iou."""
    found = total = 0
    for i in range(len(targets["labels"])):
        for box, label in zip(targets["boxes"][i], targets["labels"][i]):
            if label < 0:
                continue
            total += 1
            for det_box, score, det_label in zip(
                detections["boxes"][i], detections["scores"][i], detections["labels"][i]
            ):
                if score >= score_threshold and det_label == label and iou(det_box, box) > min_iou:
                    found += 1
                    break
    return found, total


def test_resnet18_learns_a_scene_set():
    """The issue's proof of learning: near-perfect detections after 600 steps on CPU."""
    keras.utils.set_random_seed(0)
    images, targets = scene_batch()
    # From scratch at lr 1e-3 the official clamp stops the gradient of a
    # rare-class centre within 10 steps (its logit falls below -9.2) and that
    # object is never learned: the straight-through clamp keeps the official
    # loss values and lets it recover (see `focal_loss`).
    # The demo's half-width ResNet-18: a tenth of `resnet18`'s CPU time per
    # image (the suite's slowest test was this one at 470 s with `resnet18`).
    model = kc.CenterNet.from_preset(
        "resnet18_small", num_classes=2, max_objects=8, focal_clamp_gradient="straight_through"
    )
    steps = 600
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    history = model.fit(images, targets, batch_size=4, epochs=steps, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.05 * losses[0], losses[::25]
    for name in ("heatmap_loss", "size_loss", "offset_loss"):
        assert np.isfinite(history.history[name][-1])
    detections = {k: to_numpy(v) for k, v in model.predict(images, verbose=0).items()}
    found, total = matched_objects(detections, targets)
    # Near-perfect after 600 steps from scratch: all objects but at most one
    # (measured for seeds 0 and 1: 7 and 6 of 7; after 400 steps seed 1 found
    # only 5; the slowest is a size regressed with weight 0.1).
    assert total == 7 and found >= total - 1, (found, total)
    # Detections beyond the objects score low: the model does not see shapes in the noise.
    strong = int(np.sum(detections["scores"] >= 0.3))
    assert strong <= total + 1, (strong, total)


@pytest.mark.multi_backend
def test_short_fit_on_every_backend():
    """A few steps on the current backend: finite loss parts, falling loss, predictions of the contract."""
    keras.utils.set_random_seed(1)
    images, targets = scene_batch(num_images=2, size=64, max_objects=4)
    model = kc.CenterNet.from_preset("resnet18", num_classes=2, max_objects=4, max_detections=10)
    model.compile(optimizer=keras.optimizers.Adam(3e-4))
    history = model.fit(images, targets, batch_size=2, epochs=10, verbose=0)
    losses = history.history["loss"]
    # From scratch, single steps are noisy: the last steps are below the first.
    assert max(losses[-3:]) < losses[0], losses
    assert set(history.history) >= {"loss", "heatmap_loss", "size_loss", "offset_loss"}
    detections = model.predict(images, verbose=0)
    assert detections["boxes"].shape == (2, 10, 4)
    assert detections["scores"].shape == (2, 10)
    assert detections["labels"].shape == (2, 10)
    assert detections["num_detections"].shape == (2,)
    assert np.all(np.diff(to_numpy(detections["scores"]), axis=1) <= 0)


def test_bad_boxes_give_finite_losses():
    """NaN, empty, negative, outside and too many boxes, and unknown labels: skipped or clipped."""
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    boxes = np.zeros((2, 6, 4), "float32")
    labels = np.full((2, 6), -1, "int32")
    boxes[0, :6] = [
        [np.nan, 1, 20, 20],      # NaN
        [10, 10, 10, 30],         # zero width
        [30, 30, 20, 20],         # negative size
        [-50, -50, -10, -10],     # outside the image
        [50, 50, 90, 90],         # partly outside: clipped
        [5, 5, 25, 25],           # fine, but its label is out of range
    ]
    labels[0] = [0, 1, 0, 1, 0, 7]
    model = kc.CenterNet.from_preset("resnet18", num_classes=2, max_objects=6)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    logs = model.train_on_batch(images, {"boxes": boxes, "labels": labels}, return_dict=True)
    for name in ("loss", "heatmap_loss", "size_loss", "offset_loss"):
        assert np.isfinite(logs[name]), logs
    # More objects than max_objects: the first max_objects count, as the
    # official `num_objs = min(len(anns), max_objs)`.
    many_boxes = np.tile(np.array([[4, 4, 20, 30]], "float32"), (2, 9, 1)) + np.arange(9)[None, :, None] * 4
    many_labels = np.zeros((2, 9), "int32")
    raw = model(images)
    loss_nine = model.compute_loss(images, {"boxes": many_boxes, "labels": many_labels}, raw)
    loss_six = model.compute_loss(
        images, {"boxes": many_boxes[:, :6], "labels": many_labels[:, :6]}, raw
    )
    np.testing.assert_allclose(to_numpy(loss_nine), to_numpy(loss_six), rtol=1e-6)


def test_mixed_bfloat16_trains():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        images, targets = scene_batch(num_images=2, size=64, max_objects=4)
        model = kc.CenterNet.from_preset("resnet18", num_classes=2, max_objects=4)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        history = model.fit(images, targets, batch_size=2, epochs=3, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        assert model(images)["heatmap"].dtype == "bfloat16"
        assert model.predict(images, verbose=0)["boxes"].dtype == np.float32
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
