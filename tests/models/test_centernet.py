"""The CenterNet model shell: presets, stacks, input checks, round trips."""

import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.backbones.hourglass import HourglassBackbone
from tests.test_case import TestCase
from tests.test_case import to_numpy


def tiny_hourglass_model(num_stacks=2, num_classes=3):
    backbone = HourglassBackbone(
        num_stacks=num_stacks, dims=(8, 8, 16), num_blocks=(1, 1, 1),
        stem_channels=8, output_channels=16,
    )
    return kc.CenterNet(backbone, num_classes=num_classes, head_channels=8, size_divisor=128)


class TestCenterNet(TestCase):
    def test_heads_and_stacks(self, rng):
        model = tiny_hourglass_model()
        images = rng.uniform(0, 255, size=(2, 128, 128, 3)).astype("float32")
        outputs = model(images)
        assert set(outputs) == {"heatmap", "size", "offset"}
        assert tuple(outputs["heatmap"].shape) == (2, 32, 32, 3)
        stacks = model.forward_stacks(images, all_stacks=True)
        np.testing.assert_allclose(to_numpy(stacks[-1]["heatmap"]), to_numpy(outputs["heatmap"]), atol=1e-5)
        # Training returns the earlier stacks too (their loss is averaged in).
        training_outputs = model(images, training=True)
        assert len(training_outputs["intermediate"]) == 1

    def test_heatmap_prior_bias(self):
        model = tiny_hourglass_model(num_stacks=1)
        bias = to_numpy(model.stack_heads(0)["heatmap"].output_conv.bias)
        np.testing.assert_allclose(bias, -2.19)

    def test_extra_heads(self, rng):
        backbone = HourglassBackbone(
            num_stacks=1, dims=(8, 8, 16), num_blocks=(1, 1, 1), stem_channels=8, output_channels=16,
        )
        model = kc.CenterNet(
            backbone, num_classes=2, head_channels=8, size_divisor=128,
            heads={"heatmap": 2, "size": 2, "offset": 2, "depth": 1},
        )
        outputs = model(rng.uniform(0, 255, size=(1, 128, 128, 3)).astype("float32"))
        assert tuple(outputs["depth"].shape) == (1, 32, 32, 1)

    def test_config_round_trip_and_saving(self, rng, tmp_path):
        model = tiny_hourglass_model()
        config = model.get_config()
        revived = kc.CenterNet.from_config(config)
        assert revived.get_config() == config
        images = rng.uniform(0, 255, size=(1, 128, 128, 3)).astype("float32")
        self.run_model_saving_test(model, images, tmp_path, atol=1e-5)

    def test_input_size_must_be_a_multiple_of_the_stride(self):
        model = tiny_hourglass_model()
        with pytest.raises(ValueError, match="not a multiple of 128"):
            model(np.zeros((1, 128, 96, 3), "float32"))
        with pytest.raises(ValueError, match=r"\(batch, height, width, 3\)"):
            model(np.zeros((1, 128, 128, 4), "float32"))

    def test_bad_arguments(self):
        backbone = HourglassBackbone(
            num_stacks=1, dims=(8, 8), num_blocks=(1, 1), stem_channels=8, output_channels=8,
        )
        with pytest.raises(ValueError, match="num_classes"):
            kc.CenterNet(backbone, num_classes=0)
        with pytest.raises(ValueError, match="heads\\['heatmap'\\]"):
            kc.CenterNet(backbone, num_classes=3, heads={"heatmap": 4, "size": 2, "offset": 2})
        with pytest.raises(ValueError, match="radius"):
            kc.CenterNet(backbone, num_classes=3, radius="gaussian")
        with pytest.raises(ValueError, match="Unknown preset 'resnet7'"):
            kc.CenterNet.from_preset("resnet7")

    def test_presets_are_listed(self):
        assert {"hourglass104", "hourglass52"} <= set(kc.models.list_presets())
