"""The official checkpoint converter on ResNet-18-DCN (fixture resdcn18): checks, fine-tuning, files.

That the converted model equals the official one on its inputs (heads,
features; BGR official input = RGB ours) is proven per architecture in
`tests/backbones/`; here the converter's own contract.
"""

import os

import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.convert.official import read_checkpoint
from tests.official_fixtures import assert_maps_close
from tests.official_fixtures import load_outputs
from tests.official_fixtures import nhwc
from tests.official_fixtures import rule_state_dict
from tests.official_fixtures import to_rgb_pixels
from tests.test_case import TestCase
from tests.test_case import to_numpy

PRESET, ARCH = "resnet18_dcn", "resdcn18"


@pytest.fixture(scope="module")
def state_dict():
    return rule_state_dict(ARCH)


@pytest.fixture(scope="module")
def official_x0():
    outputs = load_outputs(ARCH)
    return to_rgb_pixels(outputs["x0_input"]), {
        ours: nhwc(outputs[f"x0_stack0_{official}"])
        for official, ours in (("hm", "heatmap"), ("wh", "size"), ("reg", "offset"))
    }


def build(num_classes=80):
    return kc.CenterNet.from_preset(PRESET, num_classes=num_classes)


def weights_of(model):
    return [to_numpy(w) for w in model.weights]


def assert_equals_official(model, official_x0, heads=("heatmap", "size", "offset")):
    images, expected = official_x0
    raw = to_numpy(model(images))
    for head in heads:
        assert_maps_close(raw[head], expected[head], head)


class TestLoadOfficialWeights(TestCase):
    def test_missing_entries_are_listed_and_nothing_is_loaded(self, state_dict):
        model = build()
        before = weights_of(model)
        broken = {k: v for k, v in state_dict.items() if k not in ("layer1.0.conv1.weight", "bn1.running_var")}
        with pytest.raises(ValueError, match="2 model weights have no entry") as error:
            kc.convert.load_official_weights(model, broken)
        assert "layer1-0-conv1/kernel" in str(error.value) and "bn1/moving_variance" in str(error.value)
        # All or nothing: a failed load leaves the model as it was.
        for old, new in zip(before, weights_of(model)):
            np.testing.assert_array_equal(old, new)

    def test_unexpected_entries_are_listed(self, state_dict):
        extra = {"layer5.0.conv1.weight": np.zeros((64, 64, 3, 3), "float32"),
                 "hm.4.weight": np.zeros((80, 64, 1, 1), "float32")}
        with pytest.raises(ValueError, match="2 unexpected entries") as error:
            kc.convert.load_official_weights(build(), {**state_dict, **extra})
        assert "layer5.0.conv1.weight" in str(error.value) and "hm.4.weight" in str(error.value)

    def test_misshaped_entries_are_listed(self, state_dict):
        wrong = {
            "bn1.running_mean": np.zeros((65,), "float32"),
            # A 3x3 instead of the official 4x4 transposed convolution.
            "deconv_layers.3.weight": np.zeros((256, 256, 3, 3), "float32"),
            "layer1.0.conv2.weight": np.zeros((64, 64), "float32"),
        }
        with pytest.raises(ValueError, match="3 mis-shaped entries") as error:
            kc.convert.load_official_weights(build(), {**state_dict, **wrong})
        message = str(error.value)
        assert "bn1.running_mean: official shape (65,)" in message
        assert "deconv_layers.3.weight: official shape (256, 256, 3, 3)" in message
        assert "layer1.0.conv2.weight: shape (64, 64), expected a 4-D kernel" in message
        # A mis-shaped entry is not also reported as missing.
        assert "no entry" not in message

    def test_skip_mismatch_fine_tunes_to_other_classes(self, state_dict, official_x0):
        model = build(num_classes=3)
        heatmap = model.get_layer("heatmap")
        initial_kernel = to_numpy(heatmap.output_conv.kernel)
        skipped = kc.convert.load_official_weights(model, state_dict, skip_mismatch=True)
        assert sorted(skipped) == ["hm.2.bias", "hm.2.weight"]
        # Every other entry is loaded: the size and offset maps are the official ones,
        # and the heatmap's hidden 3x3 conv holds the official weight (OIHW -> HWIO).
        assert_equals_official(model, official_x0, heads=("size", "offset"))
        np.testing.assert_array_equal(
            to_numpy(heatmap.hidden.kernel), state_dict["hm.0.weight"].transpose(2, 3, 1, 0)
        )
        # The 3-class output conv keeps its initialisation (prior bias -2.19).
        np.testing.assert_array_equal(to_numpy(heatmap.output_conv.kernel), initial_kernel)
        np.testing.assert_allclose(to_numpy(heatmap.output_conv.bias), np.full(3, -2.19), rtol=1e-6)
        assert to_numpy(model(official_x0[0])["heatmap"]).shape == (1, 32, 32, 3)

    def test_without_skip_mismatch_other_classes_fail(self, state_dict):
        with pytest.raises(ValueError, match="hm.2.weight") as error:
            kc.convert.load_official_weights(build(num_classes=3), state_dict)
        assert "hm.2.bias" in str(error.value)

    def test_data_parallel_prefix_and_unused_classifier(self, state_dict, official_x0):
        # DataParallel checkpoints prefix `module.`; official COCO checkpoints of
        # DLA carry an unused ImageNet classifier `base.fc`.
        wrapped = {f"module.{k}": v for k, v in state_dict.items()}
        wrapped["module.base.fc.weight"] = np.zeros((1000, 512, 1, 1), "float32")
        wrapped["base.fc.bias"] = np.zeros((1000,), "float32")
        model = build()
        assert kc.convert.load_official_weights(model, wrapped) == []
        assert_equals_official(model, official_x0)

    def test_first_convolution_flips_bgr_to_rgb(self, state_dict):
        model = build()
        kc.convert.load_official_weights(model, state_dict)
        kernel = to_numpy(model.backbone.get_layer("conv1").kernel)  # (7, 7, 3 RGB, 64)
        official = state_dict["conv1.weight"]  # (64, 3 BGR, 7, 7)
        for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
            np.testing.assert_array_equal(kernel[:, :, rgb, :], official[:, bgr].transpose(1, 2, 0))
        # No other convolution is flipped.
        np.testing.assert_array_equal(
            to_numpy(model.backbone.get_layer("layer1-0-conv1").kernel),
            state_dict["layer1.0.conv1.weight"].transpose(2, 3, 1, 0),
        )

    def test_torch_tensors(self, state_dict, official_x0):
        import torch

        model = build()
        kc.convert.load_official_weights(model, {k: torch.from_numpy(v) for k, v in state_dict.items()})
        assert_equals_official(model, official_x0)


class TestCheckpointFiles(TestCase):
    def test_from_npz(self, state_dict, official_x0, tmp_path):
        path = os.path.join(tmp_path, "ctdet_coco_resdcn18.npz")
        np.savez(path, **state_dict)
        model = kc.convert.from_official_checkpoint(path, preset=PRESET)
        assert model.num_classes == 80  # read from the `hm` head
        assert_equals_official(model, official_x0)

    def test_from_pth_as_the_official_trainer_saves_it(self, state_dict, official_x0, tmp_path):
        import torch

        # The official `save_model`: {"epoch", "state_dict", "optimizer"}, here of a DataParallel model.
        path = os.path.join(tmp_path, "model_last.pth")
        torch.save(
            {"epoch": 140, "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state_dict.items()},
             "optimizer": {"state": {}, "param_groups": [{"lr": 1.25e-4}]}},
            path,
        )
        model = kc.convert.from_official_checkpoint(path, preset=PRESET)
        assert model.num_classes == 80
        assert_equals_official(model, official_x0)

        tuned = kc.convert.from_official_checkpoint(path, preset=PRESET, num_classes=3, skip_mismatch=True)
        assert tuned.num_classes == 3
        assert_equals_official(tuned, official_x0, heads=("size", "offset"))

    def test_pth_never_unpickles_code(self, tmp_path):
        import pickle

        import torch

        path = os.path.join(tmp_path, "malicious.pth")
        torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": Payload()}, path)
        with pytest.raises(pickle.UnpicklingError, match="Weights only"):
            read_checkpoint(path)

    @pytest.mark.multi_backend
    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="No checkpoint"):
            read_checkpoint(os.path.join(tmp_path, "absent.pth"))


class Payload:
    """Code a pickle would run on load (`weights_only=True` must refuse it)."""

    def __reduce__(self):
        return (os.getcwd, ())
