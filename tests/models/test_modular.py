"""Any backbone meets any neck and any head: shapes and `.keras` round trips, the modular presets, the default head."""

import json
import os

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.backbones import ApplicationBackbone
from keras_centernet.backbones import DLABackbone
from keras_centernet.backbones import HourglassBackbone
from keras_centernet.backbones import ResNetBackbone
from keras_centernet.layers.prediction_head import PredictionHead
from keras_centernet.losses.focal import focal_loss
from keras_centernet.losses.regression import reg_l1_loss
from keras_centernet.necks import BiFPNNeck
from keras_centernet.necks import DLAUpNeck
from keras_centernet.necks import FPNNeck
from keras_centernet.necks import IDANeck
from keras_centernet.necks import UpConvNeck
from keras_centernet.targets.render import render_targets
from tests.test_case import TestCase
from tests.test_case import assert_allclose
from tests.test_case import to_numpy

NUM_CLASSES = 3

# Tiny pyramids (strides 4 to 32 in their last four maps) and the channels of those four maps.
BACKBONES = {
    "resnet": (lambda: ResNetBackbone(depth=18, width=4), (4, 8, 16, 32)),
    "dla": (lambda: DLABackbone(levels=(1, 1, 1, 2, 2, 1), channels=(4, 8, 8, 16, 24, 32)), (8, 16, 24, 32)),
    "mobilenet_v3_small": (lambda: ApplicationBackbone("mobilenet_v3_small"), (72, 96, 288, 576)),
}

NECKS = {
    "upconv": lambda channels: UpConvNeck(filters=(8, 8, 8), kernel_sizes=(4, 4, 4), use_dcn=False),
    "upconv_dcn": lambda channels: UpConvNeck(filters=(8, 8, 8), kernel_sizes=(4, 4, 4), use_dcn=True),
    "dla_up": lambda channels: DLAUpNeck(channels=channels),
    "fpn": lambda channels: FPNNeck(filters=8),
    "bifpn": lambda channels: BiFPNNeck(filters=8, num_repeats=1),
    "ida": lambda channels: IDANeck(filters=8),
}

# Head options -> the output maps (name, channels) besides the heatmap.
HEADS = {
    "size": ({}, {"size": 2, "offset": 2}),
    "ltrb": ({"box_head": "ltrb", "iou_loss": "giou"}, {"ltrb": 4}),
    "ltrb_reid": ({"box_head": "ltrb", "num_identities": 5, "reid_dim": 6}, {"ltrb": 4, "reid": 6}),
    "size_reid": ({"num_identities": 5, "reid_dim": 6}, {"size": 2, "offset": 2, "reid": 6}),
}


def build(backbone_name, neck_name, head_name):
    make_backbone, channels = BACKBONES[backbone_name]
    options, _ = HEADS[head_name]
    return kc.CenterNet(
        make_backbone(), neck=NECKS[neck_name](channels), num_classes=NUM_CLASSES, head_channels=8,
        max_objects=4, max_detections=5, **options,
    )


def check_shapes_and_round_trip(model, images, head_name, tmp_path):
    outputs = model(images)
    _, box_maps = HEADS[head_name]
    expected = {"heatmap": NUM_CLASSES, **box_maps}
    height, width = images.shape[1] // 4, images.shape[2] // 4
    assert {name: tuple(value.shape) for name, value in outputs.items()} == {
        name: (images.shape[0], height, width, channels) for name, channels in expected.items()
    }
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    # Equal configs, up to JSON's lists for tuples.
    assert json.dumps(restored.get_config(), sort_keys=True) == json.dumps(model.get_config(), sort_keys=True)
    assert_allclose(restored(images), outputs, atol=1e-5)
    if model.num_identities is not None:
        # The identity classifier (not an output) is saved too.
        np.testing.assert_array_equal(
            to_numpy(restored.reid_classifier.kernel), to_numpy(model.reid_classifier.kernel)
        )


def combinations():
    """Every backbone with every neck; the heads rotate so that every backbone meets every head.

    The heads read only the neck's stride-4 map. The whole product (72
    models, 5 to 13 s each on a 2-core CPU for build, call and a `.keras`
    round trip) would take over ten minutes; this covers every pair of
    backbone, neck and head but a quarter of the (neck, head) pairs: each
    neck meets three of the four heads.
    """
    heads = sorted(HEADS)
    return [
        (backbone, neck, heads[(b + n) % len(heads)])
        for b, backbone in enumerate(sorted(BACKBONES))
        for n, neck in enumerate(sorted(NECKS))
    ]


class TestEveryCombination:
    @pytest.mark.parametrize("backbone_name, neck_name, head_name", combinations())
    def test_shapes_and_saving(self, backbone_name, neck_name, head_name, rng, tmp_path):
        model = build(backbone_name, neck_name, head_name)
        images = rng.uniform(0, 255, size=(1, 64, 64, 3)).astype("float32")
        check_shapes_and_round_trip(model, images, head_name, tmp_path)

    @pytest.mark.parametrize("head_name", sorted(HEADS))
    def test_hourglass_stacks(self, head_name, rng, tmp_path):
        # The hourglass is backbone and neck at once: every stack has its heads.
        backbone = HourglassBackbone(
            num_stacks=2, dims=(8, 8, 16), num_blocks=(1, 1, 1), stem_channels=8, output_channels=16,
        )
        options, box_maps = HEADS[head_name]
        model = kc.CenterNet(
            backbone, num_classes=NUM_CLASSES, head_channels=8, size_divisor=128, max_detections=5, **options
        )
        assert [layer.name for layer in model.head_layers] == [
            f"{name}_{stack}" for stack in range(2) for name in ("heatmap", *box_maps)
        ]
        images = rng.uniform(0, 255, size=(1, 128, 128, 3)).astype("float32")
        check_shapes_and_round_trip(model, images, head_name, tmp_path)


class TestModularPresets:
    @pytest.mark.parametrize(
        "preset, architecture, neck_class, box_maps",
        [
            ("mobilenetv3_fpn", "mobilenet_v3_large", FPNNeck, {"ltrb": 4}),
            ("resnet50_bifpn", "resnet50", BiFPNNeck, {"size": 2, "offset": 2}),
        ],
    )
    def test_presets(self, preset, architecture, neck_class, box_maps):
        assert preset in kc.models.list_presets()
        spec = kc.models.presets.get_preset(preset)
        assert "not in the paper" in spec["description"]
        model = kc.CenterNet.from_preset(preset, num_classes=NUM_CLASSES, max_detections=5)
        assert isinstance(model.backbone, ApplicationBackbone)
        assert model.backbone.architecture == architecture
        assert isinstance(model.neck, neck_class)
        outputs = model(np.zeros((1, 64, 64, 3), "float32"))
        assert {name: tuple(value.shape) for name, value in outputs.items()} == {
            name: (1, 16, 16, channels) for name, channels in {"heatmap": NUM_CLASSES, **box_maps}.items()
        }
        if preset == "mobilenetv3_fpn":
            assert (model.box_head, model.iou_loss) == ("ltrb", "giou")
        # Arguments override the preset's options.
        assert kc.CenterNet.from_preset(preset, num_classes=1, box_head="size").box_head == "size"


class TestDefaultHead(TestCase):
    """The default model is the paper's: its outputs and loss are those of the heads and losses composed by hand."""

    @pytest.mark.multi_backend
    def test_default_outputs_and_loss_are_the_papers(self, rng):
        model = kc.CenterNet(
            ResNetBackbone(depth=18, width=4), neck=UpConvNeck(filters=(8, 8, 8), use_dcn=False),
            num_classes=NUM_CLASSES, head_channels=8, max_objects=4,
        )
        assert model.heads == {"heatmap": NUM_CLASSES, "size": 2, "offset": 2}
        assert model.box_head == "size" and model.reid_classifier is None
        assert {m.name for m in model.metrics} >= {"heatmap_loss", "size_loss", "offset_loss"}
        assert not {"ltrb_loss", "reid_loss"} & {m.name for m in model.metrics}
        # An independent composition of the same layers: preprocessing, backbone, neck, the three heads.
        heads = {name: model.stack_heads(0)[name] for name in ("heatmap", "size", "offset")}
        assert [type(head) for head in heads.values()] == [PredictionHead] * 3
        assert all(head.distance_scale is None for head in heads.values())
        images = rng.uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
        features = model.neck(model.backbone(model.preprocessor(images)))
        expected = {name: head.output_conv(head.hidden(features)) for name, head in heads.items()}
        outputs = model(images)
        np.testing.assert_array_equal(to_numpy(outputs["heatmap"]), to_numpy(expected["heatmap"]))
        np.testing.assert_array_equal(to_numpy(outputs["size"]), to_numpy(expected["size"]))
        np.testing.assert_array_equal(to_numpy(outputs["offset"]), to_numpy(expected["offset"]))

        boxes = np.array([[[4, 6, 40, 30], [20, 20, 60, 62], [0, 0, 0, 0], [0, 0, 0, 0]],
                          [[10, 12, 26, 50], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], "float32")
        labels = np.array([[0, 2, -1, -1], [1, -1, -1, -1]], "int32")
        loss = model.compute_loss(images, {"boxes": boxes, "labels": labels}, outputs, training=False)
        targets = render_targets(boxes / 4, labels, (16, 16), NUM_CLASSES, max_objects=4)
        paper = (
            focal_loss(targets["heatmap"], expected["heatmap"])
            + 0.1 * reg_l1_loss(expected["size"], targets["indices"], targets["mask"], targets["size"])
            + reg_l1_loss(expected["offset"], targets["indices"], targets["mask"], targets["offset"])
        )
        np.testing.assert_allclose(float(to_numpy(loss)), float(to_numpy(paper)), rtol=1e-6)

    def test_bad_head_arguments(self):
        backbone = ResNetBackbone(depth=18, width=4)
        with pytest.raises(ValueError, match="box_head"):
            kc.CenterNet(backbone, neck=FPNNeck(filters=8), num_classes=2, box_head="wh")
        with pytest.raises(ValueError, match="iou_loss"):
            kc.CenterNet(backbone, neck=FPNNeck(filters=8), num_classes=2, box_head="ltrb", iou_loss="l1")
        with pytest.raises(ValueError, match=r"heads\['ltrb'\]"):
            kc.CenterNet(backbone, neck=FPNNeck(filters=8), num_classes=2, box_head="ltrb",
                         heads={"heatmap": 2, "size": 2, "offset": 2})
        with pytest.raises(ValueError, match="reid_dim.*num_identities"):
            kc.CenterNet(backbone, neck=FPNNeck(filters=8), num_classes=2, reid_dim=16)
        with pytest.raises(ValueError, match=r"heads\['reid'\]"):
            kc.CenterNet(backbone, neck=FPNNeck(filters=8), num_classes=2, num_identities=3,
                         heads={"heatmap": 2, "size": 2, "offset": 2})

    def test_reid_dim_defaults_to_fairmots(self):
        model = kc.CenterNet(ResNetBackbone(depth=18, width=4), neck=FPNNeck(filters=8), num_classes=2,
                             head_channels=8, num_identities=10)
        assert model.reid_dim == 128
        assert tuple(model(np.zeros((1, 64, 64, 3), "float32"))["reid"].shape) == (1, 16, 16, 128)
        assert tuple(model.reid_classifier.kernel.shape) == (128, 10)


class TestReidDetections(TestCase):
    """Detections of a model with a `reid` head carry FairMOT's unit-length embedding of each object."""

    @pytest.mark.multi_backend
    @pytest.mark.parametrize("box_head", ["size", "ltrb"])
    def test_embeddings_are_the_normalised_reid_map_at_each_peak(self, box_head, rng):
        model = kc.CenterNet(
            ResNetBackbone(depth=18, width=4), neck=FPNNeck(filters=8), num_classes=NUM_CLASSES,
            head_channels=8, max_detections=6, num_identities=5, reid_dim=6, box_head=box_head,
        )
        images = rng.uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
        raw = to_numpy(model(images, training=False))
        heat = 1 / (1 + np.exp(-raw["heatmap"].astype("float64")))
        # A threshold between the detections' scores: some kept, some blanked.
        all_scores = to_numpy(model.detect(images))["scores"]
        threshold = float(np.median(all_scores))
        model.configure_prediction(score_threshold=threshold)
        out = to_numpy(model.predict(images, verbose=0))
        assert out["embeddings"].shape == (2, 6, 6)
        assert 0 < out["num_detections"].sum() < 12  # both cases below are met
        for b in range(2):
            count = int(out["num_detections"][b])
            for k in range(6):
                if k >= count:
                    np.testing.assert_array_equal(out["embeddings"][b, k], 0.0)
                    continue
                # The peak: the pixel of the detection's class whose probability is its score.
                channel = heat[b, :, :, out["labels"][b, k]]
                y, x = np.unravel_index(np.argmin(np.abs(channel - out["scores"][b, k])), channel.shape)
                vector = raw["reid"][b, y, x]
                assert_allclose(out["embeddings"][b, k], vector / np.linalg.norm(vector), atol=1e-5)

    def test_flip_and_multi_scale_testing_keep_unit_embeddings(self, rng):
        model = kc.CenterNet(
            ResNetBackbone(depth=18, width=4), neck=FPNNeck(filters=8), num_classes=NUM_CLASSES,
            head_channels=8, max_detections=4, num_identities=5, reid_dim=3,
        )
        images = rng.uniform(0, 255, size=(1, 64, 64, 3)).astype("float32")
        for options in ({"flip_test": True}, {"test_scales": (0.5, 1.0)}):
            model.configure_prediction(**options)
            out = to_numpy(model.predict(images, verbose=0))
            assert out["embeddings"].shape == (1, 4, 3)
            np.testing.assert_allclose(np.linalg.norm(out["embeddings"], axis=-1), 1.0, atol=1e-5)
        # A model without the head returns DESIGN.md's four keys only.
        plain = kc.CenterNet(ResNetBackbone(depth=18, width=4), neck=FPNNeck(filters=8),
                             num_classes=NUM_CLASSES, head_channels=8, max_detections=4)
        assert set(to_numpy(plain.predict(images, verbose=0))) == {"boxes", "scores", "labels", "num_detections"}
