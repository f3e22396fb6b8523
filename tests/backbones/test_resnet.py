"""ResNet CenterNets = official `resnet_dcn.py` (fixtures resdcn18, resdcn101) and `msra_resnet.py`."""

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.backbones.resnet import PRESETS
from keras_centernet.backbones.resnet import ResNetBackbone
from keras_centernet.convert.official import official_name
from keras_centernet.necks.upconv import UpConvNeck
from tests.official_fixtures import assert_maps_close
from tests.official_fixtures import load_features
from tests.official_fixtures import load_manifest
from tests.official_fixtures import load_outputs
from tests.official_fixtures import nhwc
from tests.official_fixtures import rule_state_dict
from tests.official_fixtures import to_rgb_pixels
from tests.test_case import TestCase
from tests.test_case import to_numpy

# Official head name -> ours.
HEADS = {"hm": "heatmap", "wh": "size", "reg": "offset"}

# torchvision's published ResNet sizes (ImageNet classifier included) and
# their fc layer (512 or 2048 inputs, 1000 classes): the official CenterNet
# ResNets are these without the fc.
TORCHVISION_PARAMETERS = {
    18: (11_689_512, 512 * 1000 + 1000),
    34: (21_797_672, 512 * 1000 + 1000),
    50: (25_557_032, 2048 * 1000 + 1000),
    101: (44_549_160, 2048 * 1000 + 1000),
    152: (60_192_808, 2048 * 1000 + 1000),
}


def resnet_parameters(depth):
    """Parameters of the ResNet without fc, counted by hand from its definition."""
    bottleneck = depth >= 50
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
              101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}[depth]
    total = 3 * 64 * 7 * 7 + 2 * 64  # conv1 + bn1 (weight, bias)
    channels = 64
    for stage, count in enumerate(blocks):
        planes = 64 * 2**stage
        width = planes * 4 if bottleneck else planes
        for index in range(count):
            if bottleneck:
                total += channels * planes + 2 * planes  # 1x1 + BN
                total += planes * planes * 9 + 2 * planes  # 3x3 + BN
                total += planes * width + 2 * width  # 1x1 + BN
            else:
                total += channels * planes * 9 + 2 * planes + planes * planes * 9 + 2 * planes
            if index == 0 and (stage > 0 or channels != width):
                total += channels * width + 2 * width  # downsample 1x1 + BN
            channels = width
    return total


def weight_count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def manifest_count(manifest, categories):
    return sum(
        int(np.prod(shape))
        for (_, shape, _), category in zip(manifest["params"], manifest["category"])
        if category in categories
    )


def stage_outputs(depth):
    """Official `layer1..4` hooks = the last block's ReLU of each stage."""
    blocks = {18: (2, 2, 2, 2), 101: (3, 4, 23, 3)}[depth]
    return {f"layer{s + 1}": f"layer{s + 1}.{count - 1}.relu" for s, count in enumerate(blocks)}


def converted(preset, arch):
    model = kc.CenterNet.from_preset(preset, num_classes=80)
    assert kc.convert.load_official_weights(model, rule_state_dict(arch)) == []
    return model


@pytest.fixture(scope="module")
def resnet18_dcn():
    return converted("resnet18_dcn", "resdcn18")


@pytest.fixture(scope="module")
def resnet101_dcn():
    return converted("resnet101_dcn", "resdcn101")


def check_heads(model, arch, inputs):
    outputs = load_outputs(arch)
    for x in inputs:
        raw = to_numpy(model(to_rgb_pixels(outputs[f"{x}_input"])))
        for official, ours in HEADS.items():
            assert_maps_close(raw[ours], nhwc(outputs[f"{x}_stack0_{official}"]), f"{arch} {x} {ours}")


def check_features(model, arch, depth):
    """Backbone stages, the first DCN (before its BN) and the neck output of x0."""
    reference = load_features(arch)
    backbone, neck = model.backbone, model.neck
    modules = {"maxpool": "maxpool", **stage_outputs(depth)}
    modules = {module: layer for module, layer in modules.items() if module in reference}
    probe = keras.Model(
        backbone.input, [backbone.get_layer(official_name(layer)).output for layer in modules.values()]
    )
    images = model.preprocessor(to_rgb_pixels(load_outputs(arch)["x0_input"]))
    for module, actual in zip(modules, to_numpy(probe(images))):
        assert_maps_close(actual, nhwc(reference[module]), f"{arch} {module}")
    pyramid = backbone(images)
    first_dcn = neck.stages[0][0]
    assert first_dcn.name == official_name("deconv_layers.0")
    assert_maps_close(to_numpy(first_dcn(pyramid[-1])), nhwc(reference["deconv_layers.0"]),
                      f"{arch} deconv_layers.0")
    neck_output = to_numpy(neck(pyramid))
    assert_maps_close(neck_output, nhwc(reference["deconv_layers"]), f"{arch} deconv_layers")
    assert_maps_close(neck_output, nhwc(reference["head_input"]), f"{arch} head_input")


class TestResNet18DCN(TestCase):
    def test_heads_match_official(self, resnet18_dcn):
        check_heads(resnet18_dcn, "resdcn18", ["x0", "x1"])

    def test_intermediate_features_match_official(self, resnet18_dcn):
        check_features(resnet18_dcn, "resdcn18", 18)

    def test_parameter_count_equals_official(self, resnet18_dcn):
        manifest = load_manifest("resdcn18")
        # torch counts parameters only; BatchNorm statistics are buffers there.
        assert weight_count(resnet18_dcn.trainable_weights) == manifest["num_parameters"] == 14_437_349
        assert weight_count(resnet18_dcn.non_trainable_weights) == manifest_count(
            manifest, ("running_mean", "running_var")
        )
        assert weight_count(resnet18_dcn.backbone.trainable_weights) == resnet_parameters(18)


class TestResNet101DCN(TestCase):
    def test_heads_match_official(self, resnet101_dcn):
        check_heads(resnet101_dcn, "resdcn101", ["x0"])

    def test_intermediate_features_match_official(self, resnet101_dcn):
        check_features(resnet101_dcn, "resdcn101", 101)

    def test_parameter_count_equals_official(self, resnet101_dcn):
        manifest = load_manifest("resdcn101")
        assert weight_count(resnet101_dcn.trainable_weights) == manifest["num_parameters"]
        assert weight_count(resnet101_dcn.non_trainable_weights) == manifest_count(
            manifest, ("running_mean", "running_var")
        )
        assert weight_count(resnet101_dcn.backbone.trainable_weights) == resnet_parameters(101)


class TestPlainResNet18(TestCase):
    def test_parameters_and_shapes_of_msra_resnet(self):
        model = kc.CenterNet.from_preset("resnet18", num_classes=80)
        assert model.head_channels == 64
        # Backbone without fc; three transposed convs 4x4 (512->256, 256->256,
        # 256->256, no bias) + BN; heads 3x3 (256->64) + 1x1, with biases.
        neck = 16 * (512 * 256 + 256 * 256 + 256 * 256) + 3 * 2 * 256
        heads = sum(256 * 9 * 64 + 64 + 64 * c + c for c in (80, 2, 2))
        assert weight_count(model.trainable_weights) == resnet_parameters(18) + neck + heads
        raw = model(np.zeros((2, 96, 160, 3), "float32"))
        assert {k: tuple(v.shape) for k, v in raw.items()} == {
            "heatmap": (2, 24, 40, 80), "size": (2, 24, 40, 2), "offset": (2, 24, 40, 2)
        }
        assert not any(isinstance(layer, kc.layers.DeformableConv2D) for layer in model.neck.stages[0])


class TestResNetBackbone(TestCase):
    def test_hand_counts_equal_torchvision(self):
        for depth, (with_fc, fc) in TORCHVISION_PARAMETERS.items():
            assert resnet_parameters(depth) == with_fc - fc, depth

    @pytest.mark.parametrize("depth", [18, 34, 50])
    def test_parameter_count_and_widths(self, depth):
        backbone = ResNetBackbone(depth=depth)
        assert weight_count(backbone.trainable_weights) == resnet_parameters(depth)
        expansion = 4 if depth >= 50 else 1
        features = backbone(np.zeros((1, 32, 64, 3), "float32"))
        assert [tuple(f.shape) for f in features] == [
            (1, 8, 16, 64 * expansion), (1, 4, 8, 128 * expansion),
            (1, 2, 4, 256 * expansion), (1, 1, 2, 512 * expansion),
        ]

    @pytest.mark.multi_backend
    def test_pyramid_shapes(self):
        features = ResNetBackbone(depth=18)(np.zeros((1, 64, 96, 3), "float32"))
        assert [tuple(f.shape) for f in features] == [
            (1, 16, 24, 64), (1, 8, 12, 128), (1, 4, 6, 256), (1, 2, 3, 512)
        ]

    def test_layers_are_named_after_official_modules(self):
        manifest = load_manifest("resdcn101")
        backbone = ResNetBackbone(depth=101)
        names = {layer.name for layer in backbone.layers}
        # Every official backbone module with weights has its layer, and no other has weights.
        official = {
            official_name(name.rsplit(".", 1)[0])
            for name, _, _ in manifest["params"]
            if not name.startswith(("deconv_layers", "hm.", "wh.", "reg."))
        }
        assert official <= names
        assert {layer.name for layer in backbone.layers if layer.weights} == official
        # The stride of a bottleneck is on its 3x3 conv (official, torchvision v1).
        assert backbone.get_layer("layer2-0-conv1").strides == (1, 1)
        assert backbone.get_layer("layer2-0-conv2").strides == (2, 2)
        assert backbone.get_layer("layer2-0-downsample-0").strides == (2, 2)
        batch_norm = backbone.get_layer("layer3-22-bn3")
        assert (batch_norm.epsilon, batch_norm.momentum) == (1e-5, 0.9)

    @pytest.mark.multi_backend
    def test_stride_two_pads_symmetrically(self):
        # A 3x3 stride-2 conv of ones on an 8x8 input of ones: PyTorch pads 1
        # on every side, so the top-left output sees 4 inputs, the others 6 or 9.
        backbone = ResNetBackbone(depth=18)
        conv = backbone.get_layer("layer2-0-conv1")
        probe = keras.Sequential([backbone.get_layer("layer2-0-conv1-pad"), conv])
        conv.kernel.assign(np.ones(conv.kernel.shape, "float32") / conv.kernel.shape[2])
        y = to_numpy(probe(np.ones((1, 8, 8, 64), "float32")))[0, :, :, 0]
        expected = np.full((4, 4), 9.0)
        expected[0, :] = expected[:, 0] = 6.0
        expected[0, 0] = 4.0
        np.testing.assert_allclose(y, expected, rtol=1e-6)

    @pytest.mark.multi_backend
    def test_serialization(self):
        revived = self.run_serialization_test(ResNetBackbone(depth=18))
        assert revived.depth == 18

    def test_dtype_policy_round_trips(self):
        backbone = ResNetBackbone(depth=18, dtype="mixed_float16")
        revived = self.run_serialization_test(backbone)
        assert revived.dtype_policy.name == "mixed_float16"
        features = revived(np.zeros((1, 32, 32, 3), "float32"))
        assert all(keras.backend.standardize_dtype(f.dtype) == "float16" for f in features)

    def test_centernet_saving_round_trip(self, rng, tmp_path):
        model = kc.CenterNet(
            ResNetBackbone(depth=18),
            neck=UpConvNeck(filters=(16, 8, 8), kernel_sizes=(4, 4, 4)),
            num_classes=3, head_channels=8, size_divisor=32,
        )
        images = rng.uniform(0, 255, size=(1, 64, 64, 3)).astype("float32")
        restored = self.run_model_saving_test(model, images, tmp_path, atol=1e-5)
        assert isinstance(restored.backbone, ResNetBackbone) and isinstance(restored.neck, UpConvNeck)

    @pytest.mark.multi_backend
    @pytest.mark.parametrize("depth", [20, 18.0, True, "18"])
    def test_rejects_unknown_depth(self, depth):
        with pytest.raises(ValueError, match="depth"):
            ResNetBackbone(depth=depth)


class TestPresets(TestCase):
    def test_presets_are_the_official_architectures(self):
        official = {"resnet18", "resnet18_dcn", "resnet34_dcn", "resnet50_dcn", "resnet101_dcn"}
        assert set(PRESETS) == official | {"resnet18_small"}
        for name in sorted(official):
            spec = PRESETS[name]
            assert (spec["head_channels"], spec["size_divisor"]) == (64, 32), name
            neck = spec["neck"]()
            assert neck.kernel_sizes == (4, 4, 4)
            assert neck.filters == ((256, 256, 256) if name == "resnet18" else (256, 128, 64))
            assert neck.use_dcn == (name != "resnet18")
        assert "28.1" in PRESETS["resnet18_dcn"]["description"]
        assert "34.6" in PRESETS["resnet101_dcn"]["description"]

    def test_small_preset_is_half_width_resnet18_with_plain_necks(self):
        model = kc.CenterNet.from_preset("resnet18_small", num_classes=3)
        assert model.backbone.depth == 18 and model.backbone.width == 32
        assert model.neck.filters == (128, 64, 64) and not model.neck.use_dcn
        raw = model(np.zeros((1, 64, 64, 3), "float32"))
        assert tuple(raw["heatmap"].shape) == (1, 16, 16, 3)
        # Half the planes: each 3x3 conv has a quarter of ResNet-18's weights.
        assert 3.0e6 < model.count_params() < 4.0e6

    def test_presets_build_at_small_size(self):
        for preset, depth in (("resnet34_dcn", 34), ("resnet50_dcn", 50)):
            model = kc.CenterNet.from_preset(preset, num_classes=3, head_channels=16)
            assert model.backbone.depth == depth
            raw = model(np.zeros((1, 64, 64, 3), "float32"))
            assert tuple(raw["heatmap"].shape) == (1, 16, 16, 3)
