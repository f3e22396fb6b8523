"""keras.applications backbones: pyramids, the preprocessing relation to CenterNet's, freezing, round trips."""

import keras
import numpy as np
import pytest

from keras_centernet.backbones.applications import ARCHITECTURES
from keras_centernet.backbones.applications import ApplicationBackbone
from keras_centernet.backbones.applications import ApplicationPreprocessing
from keras_centernet.layers.preprocessing import ImageNormalization
from tests.test_case import TestCase
from tests.test_case import to_numpy

# Channels at strides 4, 8, 16, 32 (keras.applications' documented widths).
CHANNELS = {
    "resnet50": (256, 512, 1024, 2048),
    "mobilenet_v2": (144, 192, 576, 1280),
    "mobilenet_v3_small": (72, 96, 288, 576),
    "mobilenet_v3_large": (72, 240, 672, 960),
    "efficientnet_b0": (144, 240, 672, 1280),
}

# What each application's own `preprocess_input` does to RGB pixels.
PREPROCESS = {
    "resnet50": keras.applications.resnet50.preprocess_input,
    "mobilenet_v2": keras.applications.mobilenet_v2.preprocess_input,
    "mobilenet_v3_small": keras.applications.mobilenet_v3.preprocess_input,
    "mobilenet_v3_large": keras.applications.mobilenet_v3.preprocess_input,
    "efficientnet_b0": keras.applications.efficientnet.preprocess_input,
}


class TestApplicationPreprocessing(TestCase):
    @pytest.mark.multi_backend
    @pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
    def test_gives_the_applications_own_preprocessing(self, rng, architecture):
        pixels = rng.uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
        normalised = ImageNormalization(size_divisor=8)(pixels)
        layer = ApplicationPreprocessing(ARCHITECTURES[architecture][1])
        expected = PREPROCESS[architecture](pixels.copy())
        np.testing.assert_allclose(to_numpy(layer(normalised)), to_numpy(expected), atol=2e-3)

    @pytest.mark.multi_backend
    def test_serialization_and_bad_mode(self):
        revived = self.run_serialization_test(ApplicationPreprocessing("caffe"))
        assert revived.mode == "caffe"
        with pytest.raises(ValueError, match="mode"):
            ApplicationPreprocessing("torch")


class TestApplicationBackbone(TestCase):
    @pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
    def test_pyramid_strides_4_to_32(self, architecture):
        backbone = ApplicationBackbone(architecture)
        features = backbone(np.zeros((1, 64, 64, 3), "float32"))
        assert [tuple(f.shape) for f in features] == [
            (1, 64 // s, 64 // s, c) for s, c in zip((4, 8, 16, 32), CHANNELS[architecture])
        ]

    @pytest.mark.multi_backend
    def test_features_are_the_applications_on_its_own_preprocessing(self, rng):
        pixels = rng.uniform(0, 255, size=(1, 64, 64, 3)).astype("float32")
        backbone = ApplicationBackbone("mobilenet_v2")
        reference = keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False, weights=None)
        reference.set_weights(backbone.get_weights())
        taps = keras.Model(
            reference.input,
            [reference.get_layer(n).output for n in
             ("block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu", "out_relu")],
        )
        expected = taps(keras.applications.mobilenet_v2.preprocess_input(pixels.copy()))
        actual = backbone(ImageNormalization()(pixels))
        for a, e in zip(actual, expected):
            np.testing.assert_allclose(to_numpy(a), to_numpy(e), atol=1e-3)

    @pytest.mark.multi_backend
    @pytest.mark.parametrize("frozen_stages", [0, 2, 4])
    def test_frozen_stages(self, frozen_stages):
        backbone = ApplicationBackbone("mobilenet_v3_small", frozen_stages=frozen_stages)
        extractor = backbone.layers[-1]
        frozen = {l.name for l in extractor.layers if not l.trainable and l.weights}
        trainable = {l.name for l in extractor.layers if l.trainable and l.weights}
        if frozen_stages == 0:
            assert not frozen
        elif frozen_stages == 4:
            assert not trainable
        else:
            # Up to stride 8 (blocks 0..2) frozen; the blocks after it train.
            assert {"conv", "expanded_conv_2_project"} <= frozen
            assert {"expanded_conv_3_project", "expanded_conv_10_project"} <= trainable
        total = sum(int(np.prod(w.shape)) for w in backbone.weights if w.trainable)
        assert (total == 0) == (frozen_stages == 4)

    @pytest.mark.multi_backend
    def test_serialization(self):
        revived = self.run_serialization_test(ApplicationBackbone("mobilenet_v3_small", frozen_stages=1))
        assert (revived.architecture, revived.frozen_stages) == ("mobilenet_v3_small", 1)
        assert not revived.layers[-1].get_layer("conv").trainable

    def test_saving_round_trip(self, rng, tmp_path):
        backbone = ApplicationBackbone("mobilenet_v3_small")
        images = rng.normal(size=(1, 64, 64, 3)).astype("float32")
        self.run_model_saving_test(backbone, images, tmp_path, atol=1e-4)

    @pytest.mark.multi_backend
    def test_rejects_bad_arguments(self):
        with pytest.raises(ValueError, match="architecture"):
            ApplicationBackbone("vgg16")
        with pytest.raises(ValueError, match="frozen_stages"):
            ApplicationBackbone("resnet50", frozen_stages=5)
