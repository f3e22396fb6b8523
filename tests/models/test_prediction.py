"""Prediction: decoding inside `predict`, flip and multi-scale test-time augmentation, raw maps, saving."""

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.layers.decoder import decode_detections
from keras_centernet.layers.soft_nms import soft_nms
from tests.test_case import to_numpy


def mirror_symmetric(kernel):
    """A kernel equal to its left-right mirror: its convolution commutes with flips."""
    return (kernel + kernel[:, ::-1]) / 2


def small_model(num_classes=3, seed=0, mirror_symmetric_kernels=False):
    """A small CenterNet: stride-4 average pooling, then stride-1 convolutions.

    With mirror-symmetric kernels it commutes with horizontal flips (exact
    tiles, symmetric padding): net(flip(x)) = flip(net(x)).
    """
    keras.utils.set_random_seed(seed)
    backbone = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.AveragePooling2D(4),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        ]
    )
    model = kc.CenterNet(backbone, num_classes=num_classes, head_channels=8, max_detections=20,
                         regression_head_stddev=0.5)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Conv2D):
            kernel = keras.random.normal(layer.kernel.shape, stddev=0.3, seed=seed + 1)
            kernel = to_numpy(kernel)
            layer.kernel.assign(mirror_symmetric(kernel) if mirror_symmetric_kernels else kernel)
    return model


def test_flip_equivariant_network_flip_test_equals_plain(rng):
    model = small_model(mirror_symmetric_kernels=True)
    images = rng.uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    # The network commutes with flips (the premise of the test).
    raw = to_numpy(model(images))
    raw_flipped = to_numpy(model(images[:, :, ::-1]))
    np.testing.assert_allclose(raw_flipped["heatmap"][:, :, ::-1], raw["heatmap"], atol=1e-4)
    plain = to_numpy(model.predict(images, verbose=0))
    model.configure_prediction(flip_test=True)
    flipped = to_numpy(model.predict(images, verbose=0))
    np.testing.assert_allclose(flipped["scores"], plain["scores"], atol=1e-5)
    np.testing.assert_array_equal(flipped["labels"], plain["labels"])
    np.testing.assert_allclose(flipped["boxes"], plain["boxes"], atol=1e-3)


def assert_same_detection_sets(actual, expected, k=None):
    """Equal as sets of (score, label, box): equal scores may come in any order."""
    for b in range(len(expected["scores"])):
        rows = []
        for detections in (actual, expected):
            scores = np.asarray(detections["scores"][b])[:k]
            labels = np.asarray(detections["labels"][b])[:k]
            boxes = np.asarray(detections["boxes"][b])[:k]
            keys = [(round(float(s), 4), int(l), *np.round(box, 2)) for s, l, box in zip(scores, labels, boxes)]
            rows.append(np.array(sorted(keys), dtype=float))
        np.testing.assert_allclose(rows[0], rows[1], atol=2e-3)


def test_flip_test_averages_the_mirrored_pass(rng):
    """With any network, flip TTA is the official average: heatmaps and sizes of both passes, offset of the first."""
    model = small_model()
    images = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    raw = to_numpy(model(images))
    raw_mirror = to_numpy(model(images[:, :, ::-1]))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    heat = (sigmoid(raw["heatmap"]) + sigmoid(raw_mirror["heatmap"])[:, :, ::-1]) / 2
    size = (raw["size"] + raw_mirror["size"][:, :, ::-1]) / 2
    expected = to_numpy(decode_detections(heat, size, raw["offset"], 20, stride=4,
                                          heatmap_is_probability=True))
    model.configure_prediction(flip_test=True)
    detections = to_numpy(model.predict(images, verbose=0))
    assert_same_detection_sets(detections, expected)


def test_multi_scale_merges_with_soft_nms(rng):
    """Scales 1 and 0.5: each scale decoded (boxes back to input pixels), Soft-NMS, top K."""
    model = small_model()
    images = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    per_scale = []
    for scale, size in ((1.0, 64), (0.5, 32)):
        scaled = to_numpy(keras.ops.image.resize(images, (size, size), interpolation="bilinear"))
        raw = to_numpy(model(scaled))
        detections = to_numpy(decode_detections(raw["heatmap"], raw["size"], raw["offset"], 20, stride=4))
        detections["boxes"] = detections["boxes"] / scale
        per_scale.append(detections)
    boxes = np.concatenate([d["boxes"] for d in per_scale], axis=1)
    scores = np.concatenate([d["scores"] for d in per_scale], axis=1)
    labels = np.concatenate([d["labels"] for d in per_scale], axis=1)
    merged = to_numpy(soft_nms(boxes, scores, labels))
    order = np.argsort(-merged[0], kind="stable")[:20]
    model.configure_prediction(test_scales=(1.0, 0.5))
    detections = to_numpy(model.predict(images, verbose=0))
    expected = {"scores": merged[:, order], "labels": labels[:, order], "boxes": boxes[:, order]}
    assert_same_detection_sets(detections, expected)


def test_raw_maps_threshold_and_saving(rng, tmp_path):
    model = kc.CenterNet.from_preset("resnet18", num_classes=2, head_channels=8, max_detections=10,
                                     score_threshold=0.3, flip_test=True, test_scales=(1.0, 0.75))
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    detections = to_numpy(model.predict(images, verbose=0))
    counts = (detections["scores"] > 0.3).sum(axis=1)
    np.testing.assert_array_equal(detections["num_detections"], counts)
    assert np.all(detections["labels"][detections["scores"] == 0] == -1)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.flip_test and restored.test_scales == (1.0, 0.75) and restored.score_threshold == 0.3
    again = to_numpy(restored.predict(images, verbose=0))
    np.testing.assert_allclose(again["scores"], detections["scores"], atol=1e-6)
    np.testing.assert_allclose(again["boxes"], detections["boxes"], atol=1e-4)
    restored.configure_prediction(raw_maps=True)
    raw = to_numpy(restored.predict(images, verbose=0))
    assert raw["heatmap"].shape == (2, 16, 16, 2)
    with pytest.raises(ValueError, match="test_scales"):
        restored.configure_prediction(test_scales=(0.0,))
