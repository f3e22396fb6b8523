"""Modular models export too: application backbones, FPN / BiFPN / IDA necks, LTRB and re-id heads.

Issue 14 asks that every backbone x neck x head combination exports. The
parts that the paper presets (`test_export_presets.py`) do not have are each
here at least once: a `keras.applications` backbone (MobileNetV3-Small, its
hard-swish and squeeze-excite), DLA's and ResNet's pyramids, the FPN's
nearest up-sampling, BiFPN's weighted fusion, the IDA neck, the LTRB
distance head and its decoding, and the re-identification embeddings that
the detections then carry. Each model goes to a SavedModel, a float32
TFLite file of built-in ops only, and ONNX; each artifact's detections equal
Keras `predict` within DESIGN.md's float32 tolerances.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_centernet as kc
from tests.export.detections import DETECTION_KEYS
from tests.export.detections import assert_values_follow_detections
from tests.export.detections import match_detections
from tests.export.detections import run_onnx
from tests.export.detections import scale_head_outputs
from tests.test_case import to_numpy

INPUT_SIZE = (64, 64)
MAX_DETECTIONS = 10
SCORE_ATOL, BOX_ATOL = 1e-4, 1e-2

MODELS = {
    "mobilenet_fpn_ltrb": lambda: kc.CenterNet(
        kc.backbones.ApplicationBackbone("mobilenet_v3_small"), neck=kc.necks.FPNNeck(filters=8),
        num_classes=3, head_channels=8, max_detections=MAX_DETECTIONS, box_head="ltrb", iou_loss="giou",
    ),
    "resnet_bifpn_reid": lambda: kc.CenterNet(
        kc.backbones.ResNetBackbone(depth=18, width=4), neck=kc.necks.BiFPNNeck(filters=8, num_repeats=2),
        num_classes=3, head_channels=8, max_detections=MAX_DETECTIONS, num_identities=5, reid_dim=4,
    ),
    "dla_ida_ltrb_reid": lambda: kc.CenterNet(
        kc.backbones.DLABackbone(levels=(1, 1, 1, 2, 2, 1), channels=(4, 8, 8, 16, 24, 32)),
        neck=kc.necks.IDANeck(filters=8), num_classes=3, head_channels=8, max_detections=MAX_DETECTIONS,
        box_head="ltrb", num_identities=5, reid_dim=4,
    ),
}

# Each head's pre-activation output: (std, mean) as a trained model's, so
# that scores are distinct and boxes tens of pixels (random heads give
# nearly constant maps and a comparison of ties).
HEAD_SPREAD = {"heatmap": (1.5, -2.19), "size": (2.0, 4.0), "offset": (0.3, 0.5), "ltrb": (0.4, 1.0)}


def output_keys(model):
    return set(DETECTION_KEYS) | ({"embeddings"} if model.reid_dim is not None else set())


class Exported:
    def __init__(self, name, folder):
        keras.utils.set_random_seed(0)
        self.model = MODELS[name]()
        self.folder = folder
        images, _ = next(iter(kc.data.synthetic(num_images=2, image_size=INPUT_SIZE, batch_size=2,
                                                training=False, seed=3)))
        self.images = images.numpy()
        scale_head_outputs(self.model, self.images, HEAD_SPREAD)
        self.expected = to_numpy(self.model.predict(self.images, verbose=0))

    def path(self, format):
        return kc.export.export_model(self.model, str(self.folder / format), format=format,
                                      input_size=INPUT_SIZE)


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, tmp_path_factory):
    return Exported(request.param, tmp_path_factory.mktemp(request.param))


def check(detections, exported):
    assert set(detections) == output_keys(exported.model)
    match_detections(detections, exported.expected, SCORE_ATOL, BOX_ATOL)
    np.testing.assert_array_equal(detections["num_detections"], exported.expected["num_detections"])
    if "embeddings" in detections:
        # The embeddings follow their detection (the top 3 of each image).
        assert_values_follow_detections(detections, exported.expected, "embeddings", 1e-4, per_image=3)


def test_the_comparison_is_not_vacuous(exported):
    scores = exported.expected["scores"]
    assert (scores[:, 0] - scores[:, -1]).min() > 0.01
    sizes = exported.expected["boxes"][..., 2:] - exported.expected["boxes"][..., :2]
    assert np.abs(sizes).mean() > 4
    if exported.model.reid_dim is not None:
        np.testing.assert_allclose(np.linalg.norm(exported.expected["embeddings"], axis=-1), 1.0, atol=1e-5)


def test_saved_model_equals_keras(exported):
    loaded = tf.saved_model.load(exported.path("saved_model"))
    check(to_numpy(loaded.signatures["serving_default"](images=tf.constant(exported.images))), exported)


def test_tflite_float32_equals_keras_with_builtin_ops(exported):
    path = exported.path("tflite")
    ops = kc.export.tflite_op_names(path)
    assert not [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")], ops
    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=2)
    detect = interpreter.get_signature_runner("serving_default")
    outputs = [detect(images=image[None]) for image in exported.images]
    check({key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}, exported)


def test_onnx_equals_keras(exported):
    check(run_onnx(exported.path("onnx"), exported.images), exported)
