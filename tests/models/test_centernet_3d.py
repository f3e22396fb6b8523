"""CenterNet3D: heads, the official ddd loss in `fit`, prediction with a calibration, saving."""

import math

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.layers.ddd_decoder import project_to_image
from keras_centernet.models.centernet_3d import CenterNet3D
from keras_centernet.models.centernet_3d import bin_rotation_loss
from keras_centernet.models.centernet_3d import mean_l1_loss
from tests.test_case import TestCase
from tests.test_case import assert_allclose
from tests.test_case import to_numpy

SIZE = 64
LOSS_PARTS = ("heatmap_loss", "size_loss", "offset_loss", "depth_loss", "dimensions_loss", "rotation_loss")
P_SIMPLE = np.array([[100.0, 0, 32, 0], [0, 100, 32, 0], [0, 0, 1, 0]], "float32")


def tiny_3d_model(**kwargs):
    """ResNet-18 at width 8 and a plain 16/16/16 up-convolution neck: 64 px inputs, 16x16 maps."""
    return CenterNet3D(
        kc.backbones.ResNetBackbone(depth=18, width=8),
        neck=kc.necks.UpConvNeck(filters=(16, 16, 16), use_dcn=False),
        head_channels=8, max_objects=4, **kwargs,
    )


def synthetic_3d_batch(num_images=4, seed=0):
    """Bright rectangles on grey, each an object with a depth, dimensions and alpha."""
    rng = np.random.default_rng(seed)
    images = np.full((num_images, SIZE, SIZE, 3), 60.0, "float32")
    boxes = np.zeros((num_images, 4, 4), "float32")
    labels = np.full((num_images, 4), -1, "int32")
    depth = np.zeros((num_images, 4), "float32")
    dimensions = np.zeros((num_images, 4, 3), "float32")
    alpha = np.zeros((num_images, 4), "float32")
    for i in range(num_images):
        for k in range(2):
            w, h = rng.integers(12, 24, size=2)
            x, y = rng.integers(0, SIZE - 24, size=2)
            label = int(rng.integers(0, 3))
            images[i, y:y + h, x:x + w] = (200.0, 80.0 + 60 * label, 40.0)
            boxes[i, k] = (x, y, x + w, y + h)
            labels[i, k] = label
            depth[i, k] = rng.uniform(5, 30)
            dimensions[i, k] = rng.uniform(1, 4, size=3)
            alpha[i, k] = rng.uniform(-math.pi, math.pi)
    return images, {"boxes": boxes, "labels": labels, "depth": depth,
                    "dimensions": dimensions, "alpha": alpha}


class TestCenterNet3D(TestCase):
    @pytest.mark.multi_backend
    def test_heads_and_depth_transform(self):
        model = tiny_3d_model()
        images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
        raw = to_numpy(model(images))
        shapes = {name: value.shape[-1] for name, value in raw.items()}
        assert shapes == {"heatmap": 3, "size": 2, "offset": 2, "depth": 1, "rotation": 8, "dimensions": 3}
        assert raw["heatmap"].shape == (2, 16, 16, 3)
        logits = to_numpy(model.forward_stacks(images)[-1]["depth"])
        # The official `1 / (sigmoid(x) + 1e-6) - 1`.
        assert_allclose(raw["depth"], 1.0 / (1.0 / (1.0 + np.exp(-logits)) + 1e-6) - 1.0, atol=1e-4, rtol=1e-5)

    @pytest.mark.multi_backend
    def test_losses_by_hand(self):
        # One object at flat index 5 of a 4 x 4 map, one empty slot (index 0, mask 0).
        indices = np.array([[5, 0]], "int32")
        mask = np.array([[1.0, 0.0]], "float32")
        depth_map = np.zeros((1, 4, 4, 1), "float32")
        depth_map[0, 1, 1, 0] = 12.0
        depth_map[0, 0, 0, 0] = 99.0  # under the empty slot: masked
        target = np.array([[[10.0], [0.0]]], "float32")
        # The official L1Loss: mean over B * M * C = 2 entries: |12 - 10| / 2.
        np.testing.assert_allclose(mean_l1_loss(depth_map, indices, mask, target), 1.0, rtol=1e-6)

        rotation_map = np.zeros((1, 4, 4, 8), "float32")
        rotation_map[0, 1, 1] = (0, 1, 0.5, 3.0, 2, 0, 0, 0)
        bins = np.array([[[1, 0], [0, 0]]], "int32")
        residuals = np.array([[[0.0, 0.0], [0.0, 0.0]]], "float32")
        # Bin 0: CE of logits (0, 1) for class 1 and, for the empty slot, log 2; mean over 2 slots.
        ce_0 = (math.log(1 + math.e) - 1 + math.log(2)) / 2
        # Bin 1: logits (2, 0) for class 0, and log 2.
        ce_1 = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
        # Bin 0's residual 0: smooth L1 of sin 0.5 vs 0 (0.125) and cos 3 vs 1 (1.5); bin 1 is off.
        expected = ce_0 + ce_1 + 0.125 + 1.5
        np.testing.assert_allclose(
            bin_rotation_loss(rotation_map, indices, mask, bins, residuals), expected, rtol=1e-5
        )

    def test_short_fit_lowers_the_loss(self):
        images, targets = synthetic_3d_batch()
        model = tiny_3d_model()
        model.compile(optimizer=keras.optimizers.Adam(2e-3))
        before = model.evaluate(images, targets, batch_size=4, verbose=0, return_dict=True)
        history = model.fit(images, targets, batch_size=4, epochs=40, verbose=0)
        after = model.evaluate(images, targets, batch_size=4, verbose=0, return_dict=True)
        for name in LOSS_PARTS:
            assert all(np.isfinite(history.history[name])), name
            assert np.isfinite(after[name]), name
        assert after["loss"] < 0.7 * before["loss"], (before, after)
        assert after["heatmap_loss"] < before["heatmap_loss"]
        assert after["depth_loss"] < before["depth_loss"]

    @pytest.mark.multi_backend
    def test_predict_with_calibration_unprojects_the_centres(self):
        model = tiny_3d_model(score_threshold=0.0, max_detections=5)
        images, _ = synthetic_3d_batch(num_images=2)
        calibration = np.stack([P_SIMPLE, P_SIMPLE * np.array([[2.0], [1.0], [1.0]], "float32")])
        out = to_numpy(model.predict({"images": images, "calibration": calibration}, verbose=0))
        assert out["locations"].shape == (2, 5, 3) and out["boxes"].shape == (2, 5, 4)
        # The centre of each 3D box (location, h/2 up) projects back onto its 2D centre.
        centres_3d = out["locations"] - np.stack(
            [np.zeros_like(out["depth"]), out["dimensions"][..., 0] / 2, np.zeros_like(out["depth"])], -1
        )
        assert_allclose(project_to_image(centres_3d, calibration), out["centers"], atol=1e-3, rtol=1e-4)
        assert_allclose(out["locations"][..., 2], out["depth"], atol=1e-5)
        np.testing.assert_array_equal(out["num_detections"], [5, 5])

    def test_config_and_keras_round_trip(self, tmp_path):
        model = tiny_3d_model(depth_loss_weight=2.0, calibration=P_SIMPLE.tolist())
        revived = self.run_serialization_test(model)
        assert revived.depth_loss_weight == 2.0 and revived.calibration == P_SIMPLE.tolist()
        assert revived.score_threshold == 0.2 and revived.max_objects == 4
        images, _ = synthetic_3d_batch(num_images=1)
        restored = self.run_model_saving_test(model, images, tmp_path, atol=1e-5)
        assert isinstance(restored, CenterNet3D)
        assert_allclose(restored.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-4)

    def test_presets(self):
        model = CenterNet3D.from_preset("resnet18")
        assert model.heads == {"heatmap": 3, "size": 2, "offset": 2, "depth": 1, "rotation": 8, "dimensions": 3}
        assert model.head_channels == 64 and model.max_objects == 50
        assert tuple(model(np.zeros((1, SIZE, SIZE, 3), "float32"))["rotation"].shape) == (1, 16, 16, 8)
        assert CenterNet3D.from_preset("dla34").head_channels == 256

    def test_errors_are_clear(self):
        model = tiny_3d_model()
        images, targets = synthetic_3d_batch(num_images=1)
        del targets["alpha"]
        with pytest.raises(ValueError, match="missing \\['alpha'\\]"):
            model.compute_loss(images, targets)
        with pytest.raises(ValueError, match="without flip"):
            tiny_3d_model(flip_test=True)
        with pytest.raises(ValueError, match="fixed by `num_classes`"):
            tiny_3d_model(heads={"heatmap": 3, "size": 2, "offset": 2})
        with pytest.raises(ValueError, match="3x4"):
            tiny_3d_model(calibration=[[1.0, 0.0, 0.0]])
