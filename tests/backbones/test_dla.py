"""DLA-34 CenterNet = official `pose_dla_dcn.py` (fixture dla34): heads, features, parameters, round trips."""

import keras
import numpy as np
import pytest

import keras_centernet as kc
import keras_centernet.layers.deformable_conv2d as deformable_conv2d_module
import keras_centernet.ops.deform_conv as deform_conv_module
from keras_centernet.backbones.dla import PRESETS
from keras_centernet.backbones.dla import DLABackbone
from keras_centernet.convert.official import official_name
from keras_centernet.layers.decoder import decode_detections
from keras_centernet.necks.dla_up import DLAUpNeck
from tests.official_fixtures import MEAN_BGR
from tests.official_fixtures import STD_BGR
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
INPUTS = ("x0", "x1")


def weight_count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def buffer_count(manifest):
    return sum(
        int(np.prod(shape))
        for (name, shape, _), category in zip(manifest["params"], manifest["category"])
        if category in ("running_mean", "running_var")
    )


def build_dla34():
    model = kc.CenterNet.from_preset("dla34", num_classes=80)
    kc.convert.load_official_weights(model, rule_state_dict("dla34"))
    return model


class _Float64Ops:
    """`keras.ops` whose casts to float32 give float64.

    The DCN op and layer sample in float32 whatever the policy (a choice for
    mixed precision); swapped into their modules, the whole network runs
    in float64.
    """

    def __getattr__(self, name):
        return getattr(keras.ops, name)

    @staticmethod
    def cast(x, dtype):
        return keras.ops.cast(x, "float64" if dtype == "float32" else dtype)


@pytest.fixture(scope="module")
def dla34():
    """DLA-34 (float32) with the fixture's weights; built once."""
    return build_dla34()


@pytest.fixture(scope="module")
def dla34_float32_maps(dla34):
    outputs = load_outputs("dla34")
    return {x: to_numpy(dla34(to_rgb_pixels(outputs[f"{x}_input"]))) for x in INPUTS}


@pytest.fixture(scope="module")
def dla34_float64_maps():
    """The heads of DLA-34 computed in float64, like the fixture's reference model."""
    outputs = load_outputs("dla34")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deform_conv_module, "ops", _Float64Ops())
        patch.setattr(deformable_conv2d_module, "ops", _Float64Ops())
        keras.mixed_precision.set_dtype_policy("float64")
        try:
            model = build_dla34()
        finally:
            keras.mixed_precision.set_dtype_policy("float32")
        maps = {}
        for x in INPUTS:
            bgr = outputs[f"{x}_input"].astype(np.float64).transpose(0, 2, 3, 1) * STD_BGR + MEAN_BGR
            maps[x] = to_numpy(model(bgr[..., ::-1] * 255.0))
    assert maps["x0"]["heatmap"].dtype == np.float64
    return maps


class TestDLA34(TestCase):
    @pytest.mark.parametrize("x", INPUTS)
    @pytest.mark.parametrize("head", sorted(HEADS))
    def test_heads_in_float64_equal_official_float64_model(self, dla34_float64_maps, x, head):
        # The reference is the official model run in float64 (stored as float32).
        expected = nhwc(load_outputs("dla34")[f"{x}_stack0_{head}"])
        assert_maps_close(dla34_float64_maps[x][HEADS[head]], expected, f"{x} {head}", tolerance=1e-6)

    @pytest.mark.parametrize("x", INPUTS)
    @pytest.mark.parametrize("head", sorted(HEADS))
    def test_heads_in_float32_match_official(self, dla34_float32_maps, x, head):
        # float32 rounding through 16 chained DCNs whose offsets depend on the
        # features: the official float32 model itself is off its float64 run
        # by up to 9.3e-5 of the range here (README "How to compare"), ours
        # by up to 1.4e-4 (TensorFlow with oneDNN; 9.6e-5 under JAX).
        expected = nhwc(load_outputs("dla34")[f"{x}_stack0_{head}"])
        assert_maps_close(dla34_float32_maps[x][HEADS[head]], expected, f"{x} {head}", tolerance=2.5e-4)

    @pytest.mark.parametrize("x", INPUTS)
    def test_detections_match_official(self, dla34_float64_maps, x):
        # x1 has near-tied scores (gap 6.6e-7) that may swap rank: sets are compared.
        raw = dla34_float64_maps[x]
        detections = to_numpy(
            decode_detections(raw["heatmap"], raw["size"], raw["offset"], 100, stride=1)
        )
        official = load_outputs("dla34")[f"{x}_dets"][0]
        assert_same_detections({k: v[0] for k, v in detections.items()}, official)

    def test_intermediate_features_match_official(self, dla34):
        images = to_rgb_pixels(load_outputs("dla34")["x0_input"])
        reference = load_features("dla34")
        backbone = dla34.backbone
        stem = backbone.get_layer(official_name("base.base_layer.2")).output
        probe = keras.Model(backbone.input, [stem] + list(backbone.outputs))
        stem, *levels = to_numpy(probe(dla34.preprocessor(images)))
        # Plain convolutions: float32 rounding only.
        assert_maps_close(stem, nhwc(reference["base.base_layer"]), "base_layer", 1e-5)
        assert len(levels) == 6
        for index, level in enumerate(levels):
            assert_maps_close(level, nhwc(reference[f"base.level{index}"]), f"level{index}", 1e-5)
        ida = dla34.neck.dla_up[0]
        projection = keras.ops.relu(ida.projection_norms[0](ida.projections[0](levels[5])))
        assert_maps_close(
            to_numpy(projection), nhwc(reference["dla_up.ida_0.proj_1"]), "dla_up.ida_0.proj_1", 1e-5
        )
        # Both this and the official tensor carry float32 noise of the DCN chain.
        head_input = to_numpy(dla34.neck(levels))
        assert_maps_close(head_input, nhwc(reference["head_input"]), "head_input", 5e-4)

    def test_parameter_count_equals_official(self, dla34):
        manifest = load_manifest("dla34")
        # torch counts parameters only; BatchNorm statistics are buffers there.
        assert weight_count(dla34.trainable_weights) == manifest["num_parameters"] == 19_675_892
        assert weight_count(dla34.non_trainable_weights) == buffer_count(manifest)

    def test_every_official_entry_has_its_named_layer(self, dla34):
        manifest = load_manifest("dla34")
        names = {layer.name for layer in dla34._flatten_layers(include_self=False, recursive=True)}
        leaves = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        for name, _, _ in manifest["params"]:
            if name.startswith(("hm.", "wh.", "reg.")):
                continue
            module = name
            while module.rsplit(".", 1)[-1] in leaves or module.endswith(".conv_offset_mask"):
                module = module.rsplit(".", 1)[0]
            assert official_name(module) in names, name

    def test_preset(self):
        spec = PRESETS["dla34"]
        assert spec["head_channels"] == 256 and spec["size_divisor"] == 32
        assert "37.4" in spec["description"]
        assert isinstance(spec["backbone"](), DLABackbone)
        assert isinstance(spec["neck"](), DLAUpNeck)


def small_dla():
    return DLABackbone(levels=(1, 1, 1, 2, 2, 1), channels=(4, 8, 8, 16, 24, 32))


class TestDLABackbone(TestCase):
    @pytest.mark.multi_backend
    def test_levels_strides_and_channels(self, rng):
        images = rng.normal(size=(2, 64, 96, 3)).astype("float32")
        features = small_dla()(images)
        assert isinstance(features, list)
        assert [tuple(f.shape) for f in features] == [
            (2, 64, 96, 4), (2, 32, 48, 8), (2, 16, 24, 8), (2, 8, 12, 16), (2, 4, 6, 24), (2, 2, 3, 32)
        ]

    def test_layers_are_named_by_official_module_path(self):
        backbone = small_dla()
        names = {layer.name.replace("-", ".") for layer in backbone.layers}
        expected = {
            "base.base_layer.0", "base.base_layer.1", "base.level0.0", "base.level1.0",
            "base.level2.tree1.conv1", "base.level2.tree2.bn2", "base.level2.root.conv",
            "base.level3.tree1.tree1.conv1", "base.level3.tree1.project.1",
            "base.level3.tree2.root.conv", "base.level5.root.bn",
        }
        assert expected <= names
        # level2 keeps 8 channels: no projection. The depth-2 trees' own
        # projections are unused by the official forward: kept, not computed.
        assert "base.level2.project.0" not in names
        assert "base.level3.project.0" not in names
        assert [layer.name for layer in backbone.unused_projections] == [
            "base-level3-project-0", "base-level3-project-1",
            "base-level4-project-0", "base-level4-project-1",
        ]

    def test_root_aggregates_children(self):
        # level3 (depth 2, level root): its second sub-tree's root concatenates
        # x2, x1, the pooled level input and the first sub-tree's output.
        backbone = DLABackbone()
        root = backbone.get_layer(official_name("base.level3.tree2.root.conv"))
        assert tuple(root.kernel.shape) == (1, 1, 128 + 128 + 64 + 128, 128)
        root = backbone.get_layer(official_name("base.level5.root.conv"))
        assert tuple(root.kernel.shape) == (1, 1, 512 + 512 + 256, 512)

    @pytest.mark.multi_backend
    def test_serialization(self):
        revived = self.run_serialization_test(small_dla())
        assert revived.channels == (4, 8, 8, 16, 24, 32)
        assert len(revived.unused_projections) == 4

    def test_centernet_saving_round_trip(self, rng, tmp_path):
        model = kc.CenterNet(
            small_dla(), neck=DLAUpNeck(channels=(8, 16, 24, 32)), num_classes=3, head_channels=8
        )
        # Non-default values in the unused projections must survive saving too.
        projection = model.backbone.unused_projections[0]
        projection.kernel.assign(rng.normal(size=projection.kernel.shape).astype("float32"))
        images = rng.uniform(0, 255, size=(1, 64, 64, 3)).astype("float32")
        restored = self.run_model_saving_test(model, images, tmp_path, atol=1e-5)
        assert isinstance(restored.backbone, DLABackbone)
        np.testing.assert_array_equal(
            to_numpy(restored.backbone.unused_projections[0].kernel), to_numpy(projection.kernel)
        )

    @pytest.mark.multi_backend
    @pytest.mark.parametrize(
        "arguments, message",
        [
            ({"levels": (1, 1, 1, 2, 2)}, "levels"),
            ({"levels": (1, 1, 0, 2, 2, 1)}, "levels"),
            ({"channels": (16, 32, 64, 128, 256, 512.0)}, "channels"),
        ],
    )
    def test_rejects_bad_arguments(self, arguments, message):
        with pytest.raises(ValueError, match=message):
            DLABackbone(**arguments)
