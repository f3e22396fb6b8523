"""A pose model exports with its joints: SavedModel (float and encoded images), TFLite, ONNX.

`CenterNetPose` detections carry `keypoints` `(B, K, 17, 2)`; every artifact
must return them as Keras `predict` does (float32: 1e-4 on scores, 1e-2 px on
boxes and joints), and the encoded-image signature maps them back to the
original image's pixels with the boxes.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_centernet as kc
from tests.export.detections import assert_values_follow_detections
from tests.export.detections import letterboxed_strip
from tests.export.detections import match_detections
from tests.export.detections import run_onnx
from tests.export.detections import scale_head_outputs
from tests.export.detections import tiny_resnet_parts
from tests.test_case import to_numpy

INPUT_SIZE = (64, 64)
MAX_DETECTIONS = 6
KEYS = {"boxes", "scores", "labels", "num_detections", "keypoints"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = kc.CenterNetPose(
        **tiny_resnet_parts(), head_channels=8, max_objects=4, max_detections=MAX_DETECTIONS
    )
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (2,) + INPUT_SIZE + (3,)).astype("float32")
    # Maps that vary as a trained model's (random heads give nearly constant
    # maps: ties everywhere, and joint heatmaps that nothing snaps to).
    scale_head_outputs(model, images, {
        "heatmap": (1.5, -2.19), "size": (2.0, 4.0), "offset": (0.3, 0.5),
        "keypoints": (3.0, 0.0), "keypoint_heatmap": (2.0, -1.0), "keypoint_offset": (0.3, 0.5)})
    folder = tmp_path_factory.mktemp("pose")
    paths = {fmt: kc.export.export_model(model, str(folder / fmt), format=fmt, input_size=INPUT_SIZE)
             for fmt in ("saved_model", "tflite", "onnx")}
    return model, images, to_numpy(model.predict(images, verbose=0)), paths


def check(detections, expected):
    assert set(detections) == KEYS
    assert detections["keypoints"].shape == (2, MAX_DETECTIONS, 17, 2)
    match_detections(detections, expected, 1e-4, 1e-2)
    # Each person's joints follow it.
    assert_values_follow_detections(detections, expected, "keypoints", 1e-2)


def test_the_comparison_is_not_vacuous(exported):
    _, _, expected, _ = exported
    assert (expected["scores"][:, 0] - expected["scores"][:, -1]).min() > 0.01
    joints = expected["keypoints"]
    assert joints.std() > 4  # joints spread over the image, not piled on the centres


def test_saved_model(exported):
    _, images, expected, paths = exported
    loaded = tf.saved_model.load(paths["saved_model"])
    check(to_numpy(loaded.signatures["serving_default"](images=tf.constant(images))), expected)


def test_saved_model_encoded_images_map_joints_back(exported):
    model, images, _, paths = exported
    # A 32x64 PNG letterboxed into 64x64 at scale 1: pasted at y = 16.
    png, canvas = letterboxed_strip(images[0])
    expected = to_numpy(model.predict(canvas, verbose=0))
    count = int(expected["num_detections"][0])
    expected["boxes"][0, :count] -= np.array([0, 16, 0, 16], np.float32)
    expected["keypoints"][0, :count] -= np.array([0, 16], np.float32)
    loaded = tf.saved_model.load(paths["saved_model"])
    detections = to_numpy(loaded.signatures["serving_encoded_images"](encoded=tf.constant([png])))
    doubled = {k: np.concatenate([v, v]) for k, v in detections.items()}
    check(doubled, {k: np.concatenate([v, v]) for k, v in expected.items()})


def test_tflite_builtin_ops(exported):
    _, images, expected, paths = exported
    ops = kc.export.tflite_op_names(paths["tflite"])
    assert not [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")], ops
    interpreter = tf.lite.Interpreter(model_path=str(paths["tflite"]), num_threads=2)
    detect = interpreter.get_signature_runner("serving_default")
    outputs = [detect(images=image[None]) for image in images]
    check({key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}, expected)


def test_onnx(exported):
    _, images, expected, paths = exported
    check(run_onnx(paths["onnx"], images), expected)
