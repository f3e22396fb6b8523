"""ResNet CenterNets = official `resnet_dcn.py` (fixtures resdcn18, resdcn101) and `msra_resnet.py`."""

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.backbones.resnet import ResNetBackbone
from keras_centernet.convert.official import official_name
from keras_centernet.layers.decoder import decode_detections
from keras_centernet.necks.upconv import OfficialUpsamplingInitializer
from keras_centernet.necks.upconv import UpConvNeck
from keras_centernet.necks.upconv import bilinear_kernel
from tests.official_fixtures import assert_maps_close
from tests.official_fixtures import assert_same_detections
from tests.official_fixtures import load_features
from tests.official_fixtures import load_manifest
from tests.official_fixtures import load_outputs
from tests.official_fixtures import nhwc
from tests.official_fixtures import rule_state_dict
from tests.official_fixtures import to_rgb_pixels
from tests.test_case import TestCase
from tests.test_case import to_numpy

HEADS = {"hm": "heatmap", "wh": "size", "reg": "offset"}

# Official forward-hook module -> our layer whose output is the same tensor.
FEATURE_LAYERS = {
    "maxpool": "maxpool",
    "layer1": "layer1-1-relu",
    "layer2": "layer2-1-relu",
    "layer3": "layer3-1-relu",
    "layer4": "layer4-1-relu",
}


def weight_count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def buffer_count(manifest):
    return sum(
        int(np.prod(shape))
        for (name, shape, _), category in zip(manifest["params"], manifest["category"])
        if category in ("running_mean", "running_var")
    )


@pytest.fixture(scope="module")
def resnet18_dcn():
    model = kc.CenterNet.from_preset("resnet18_dcn", num_classes=80)
    kc.convert.load_official_weights(model, rule_state_dict("resdcn18"))
    return model


@pytest.fixture(scope="module")
def resnet101_dcn():
    model = kc.CenterNet.from_preset("resnet101_dcn", num_classes=80)
    kc.convert.load_official_weights(model, rule_state_dict("resdcn101"))
    return model


def check_against_fixture(model, arch, inputs):
    outputs = load_outputs(arch)
    for x in inputs:
        raw = to_numpy(model(to_rgb_pixels(outputs[f"{x}_input"])))
        for official, ours in HEADS.items():
            assert_maps_close(raw[ours], nhwc(outputs[f"{x}_stack0_{official}"]), f"{arch} {x} {ours}")
        # Decoded detections equal the official ctdet_decode on the official maps.
        detections = to_numpy(decode_detections(raw["heatmap"], raw["size"], raw["offset"], 100, stride=1))
        assert_same_detections({k: v[0] for k, v in detections.items()}, outputs[f"{x}_dets"][0])


class TestResNet18DCN(TestCase):
    def test_heads_and_detections_match_official(self, resnet18_dcn):
        check_against_fixture(resnet18_dcn, "resdcn18", ["x0", "x1"])

    def test_intermediate_features_match_official(self, resnet18_dcn):
        images = to_rgb_pixels(load_outputs("resdcn18")["x0_input"])
        backbone = resnet18_dcn.backbone
        probe = keras.Model(
            backbone.input, [backbone.get_layer(name).output for name in FEATURE_LAYERS.values()]
        )
        features = to_numpy(probe(resnet18_dcn.preprocessor(images)))
        reference = load_features("resdcn18")
        for module, actual in zip(FEATURE_LAYERS, features):
            assert_maps_close(actual, nhwc(reference[module]), module)
        neck_output = to_numpy(resnet18_dcn.neck(list(backbone(resnet18_dcn.preprocessor(images)))))
        assert_maps_close(neck_output, nhwc(reference["head_input"]), "neck output")

    def test_parameter_count_equals_official(self, resnet18_dcn):
        manifest = load_manifest("resdcn18")
        # torch counts parameters only; BatchNorm statistics are buffers there.
        assert weight_count(resnet18_dcn.trainable_weights) == manifest["num_parameters"] == 14_437_349
        assert weight_count(resnet18_dcn.non_trainable_weights) == buffer_count(manifest)


class TestResNet101DCN(TestCase):
    def test_heads_and_detections_match_official(self, resnet101_dcn):
        check_against_fixture(resnet101_dcn, "resdcn101", ["x0"])

    def test_parameter_count_equals_official(self, resnet101_dcn):
        manifest = load_manifest("resdcn101")
        assert weight_count(resnet101_dcn.trainable_weights) == manifest["num_parameters"]


class TestPlainResNet18(TestCase):
    def test_architecture_of_msra_resnet(self):
        model = kc.CenterNet.from_preset("resnet18", num_classes=80)
        # torchvision ResNet-18 without fc: 11,176,512 parameters; three
        # transposed convs 4x4 (512->256, 256->256, 256->256) + BN; heads on
        # 256 channels with head_conv 64.
        backbone = 11_176_512
        neck = 16 * (512 * 256 + 256 * 256 + 256 * 256) + 3 * 2 * 256
        heads = sum(256 * 9 * 64 + 64 + 64 * c + c for c in (80, 2, 2))
        assert weight_count(model.trainable_weights) == backbone + neck + heads
        raw = model(np.zeros((2, 96, 160, 3), "float32"))
        assert tuple(raw["heatmap"].shape) == (2, 24, 40, 80)
        assert tuple(raw["size"].shape) == (2, 24, 40, 2)

    @pytest.mark.multi_backend
    def test_presets_build_at_small_size(self):
        for preset, depth in (("resnet34_dcn", 34), ("resnet50_dcn", 50)):
            model = kc.CenterNet.from_preset(preset, num_classes=3, head_channels=16)
            assert model.backbone.depth == depth
            raw = model(np.zeros((1, 64, 64, 3), "float32"))
            assert tuple(raw["heatmap"].shape) == (1, 16, 16, 3)


class TestResNetParts(TestCase):
    @pytest.mark.multi_backend
    def test_backbone_pyramid_and_round_trip(self):
        backbone = ResNetBackbone(depth=18)
        features = backbone(np.zeros((1, 64, 96, 3), "float32"))
        assert [tuple(f.shape) for f in features] == [
            (1, 16, 24, 64), (1, 8, 12, 128), (1, 4, 6, 256), (1, 2, 3, 512)
        ]
        self.run_serialization_test(backbone)
        with pytest.raises(ValueError, match="depth"):
            ResNetBackbone(depth=20)

    @pytest.mark.multi_backend
    def test_neck_round_trip(self):
        neck = UpConvNeck(filters=(16, 8, 4), use_dcn=True)
        x = np.random.default_rng(0).normal(size=(1, 3, 3, 12)).astype("float32")
        y = neck([x])
        assert tuple(y.shape) == (1, 24, 24, 4)
        self.run_serialization_test(neck)
        with pytest.raises(ValueError, match="kernel_size"):
            UpConvNeck(kernel_size=3)

    def test_layers_are_named_after_official_modules(self):
        model = kc.CenterNet.from_preset("resnet18_dcn", num_classes=2, head_channels=8)
        names = {layer.name for layer in model._flatten_layers(include_self=False, recursive=True)}
        for path in ("conv1", "bn1", "layer1.0.conv1", "layer2.0.downsample.0", "layer4.1.bn2",
                     "deconv_layers.0", "deconv_layers.3", "deconv_layers.16"):
            assert official_name(path) in names, path

    def test_transposed_conv_equals_torch(self):
        """Keras Conv2DTranspose(4, 2, 'same') == torch ConvTranspose2d(4, 2, padding=1), weights converted."""
        torch = pytest.importorskip("torch")
        rng = np.random.default_rng(0)
        x = rng.normal(size=(1, 5, 7, 3)).astype("float32")
        weight = rng.normal(size=(3, 2, 4, 4)).astype("float32")  # torch (in, out, k, k)
        expected = torch.nn.functional.conv_transpose2d(
            torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(weight), stride=2, padding=1
        ).numpy().transpose(0, 2, 3, 1)
        layer = keras.layers.Conv2DTranspose(2, 4, strides=2, padding="same", use_bias=False)
        layer.build(x.shape)
        layer.kernel.assign(weight.transpose(2, 3, 1, 0))
        np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5)

    def test_official_upsampling_initialisation(self):
        # f = 2, c = 0.75: ramp 1 - |i/2 - 0.75| = (0.25, 0.75, 0.75, 0.25).
        ramp = np.array([0.25, 0.75, 0.75, 0.25])
        np.testing.assert_allclose(bilinear_kernel(4), np.outer(ramp, ramp))
        kernel = to_numpy(OfficialUpsamplingInitializer(seed=1)((4, 4, 8, 6)))
        for channel_in in range(6):
            np.testing.assert_allclose(kernel[:, :, 0, channel_in], np.outer(ramp, ramp), rtol=1e-6)
        bound = 1 / np.sqrt(8 * 16)
        assert np.abs(kernel[:, :, 1:]).max() <= bound
        # Uniform on [-b, b] has standard deviation b / sqrt(3).
        assert abs(kernel[:, :, 1:].std() - bound / np.sqrt(3)) < 0.2 * bound
