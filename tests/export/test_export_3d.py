"""A monocular 3D model exports with its 3D objects and a calibration input.

`CenterNet3D` detections carry `alpha`, `depth`, `dimensions`, `locations`,
`rotation_y` and `centers`; every artifact must return them as Keras
`predict` does (float32: 1e-4 on scores, 1e-2 px on boxes, 1e-3 on the 3D
values, 1e-4 relative for far objects), with the stored calibration (`serving_default`) and with one camera
per image (`serving_calibrated`, ONNX's `calibration` input). The
encoded-image signature takes the stored calibration as the original image's
camera and maps boxes and centres back to its pixels.
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
OBJECT_KEYS = ("alpha", "depth", "dimensions", "locations", "rotation_y", "centers")
KEYS = {"boxes", "scores", "labels", "num_detections"} | set(OBJECT_KEYS)
# A camera for 64x64 images (focal 60 px, principal point at the centre) and a
# second one with another focal length and a baseline term.
CAMERA_A = np.array([[60.0, 0.0, 32.0, 0.0], [0.0, 60.0, 32.0, 0.0], [0.0, 0.0, 1.0, 0.0]], np.float32)
CAMERA_B = np.array([[90.0, 0.0, 30.0, 4.5], [0.0, 90.0, 34.0, 0.2], [0.0, 0.0, 1.0, 0.01]], np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = kc.CenterNet3D(
        **tiny_resnet_parts(), head_channels=8, max_detections=MAX_DETECTIONS,
        calibration=CAMERA_A.tolist(),
    )
    rng = np.random.default_rng(5)
    images = rng.uniform(0, 255, (2,) + INPUT_SIZE + (3,)).astype("float32")
    # Maps that vary as a trained model's (random heads are nearly constant).
    scale_head_outputs(model, images, {
        "heatmap": (1.5, -2.19), "size": (2.0, 4.0), "offset": (0.3, 0.5), "depth": (1.0, -1.0),
        "dimensions": (0.5, 1.5), "rotation": (1.0, 0.0)})
    folder = tmp_path_factory.mktemp("ddd")
    paths = {fmt: kc.export.export_model(model, str(folder / fmt), format=fmt, input_size=INPUT_SIZE)
             for fmt in ("saved_model", "tflite", "onnx")}
    calibration = np.stack([CAMERA_A, CAMERA_B])
    expected = to_numpy(model.predict(images, verbose=0))
    expected_calibrated = to_numpy(
        model.predict({"images": images, "calibration": calibration}, verbose=0)
    )
    return model, images, calibration, expected, expected_calibrated, paths


def check(detections, expected):
    assert set(detections) == KEYS
    assert detections["locations"].shape == (2, MAX_DETECTIONS, 3)
    match_detections(detections, expected, 1e-4, 1e-2)
    for key in OBJECT_KEYS:  # each object's 3D values follow its box (far ones: float32's 1e-5)
        assert_values_follow_detections(detections, expected, key, 1e-2 if key == "centers" else 1e-3,
                                        rtol=1e-4)


def test_the_comparison_is_not_vacuous(exported):
    _, _, _, expected, calibrated, _ = exported
    assert (expected["scores"][:, 0] - expected["scores"][:, -1]).min() > 0.01
    assert expected["depth"][:, :3].std() > 0.05 and expected["rotation_y"][:, :3].std() > 0.05
    # The second image's camera moves its objects: the calibration input is used.
    count = int(expected["num_detections"][1])
    assert count > 0
    assert np.abs(calibrated["locations"][1, :count] - expected["locations"][1, :count]).max() > 0.05
    np.testing.assert_allclose(calibrated["locations"][0], expected["locations"][0], atol=1e-5)


def test_saved_model(exported):
    _, images, calibration, expected, expected_calibrated, paths = exported
    loaded = tf.saved_model.load(paths["saved_model"])
    check(to_numpy(loaded.signatures["serving_default"](images=tf.constant(images))), expected)
    calibrated = loaded.signatures["serving_calibrated"](
        images=tf.constant(images), calibration=tf.constant(calibration)
    )
    check(to_numpy(calibrated), expected_calibrated)


def test_saved_model_rejects_a_wrong_calibration(exported):
    _, images, _, _, _, paths = exported
    loaded = tf.saved_model.load(paths["saved_model"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="one projection per image"):
        loaded.signatures["serving_calibrated"](
            images=tf.constant(images), calibration=tf.constant(CAMERA_A[None])  # 1 camera, 2 images
        )


def test_saved_model_encoded_images_use_the_original_camera(exported):
    model, images, _, _, _, paths = exported
    # A 32x64 PNG letterboxed into 64x64 at scale 1: pasted at y = 16, so the
    # input camera is the original one moved down 16 px (P_input = A @ P).
    png, canvas = letterboxed_strip(images[0])
    letterbox = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 16.0], [0.0, 0.0, 1.0]], np.float32)
    expected = to_numpy(model.predict(
        {"images": canvas, "calibration": (letterbox @ CAMERA_A)[None]}, verbose=0
    ))
    count = int(expected["num_detections"][0])
    assert count > 0
    expected["boxes"][0, :count] -= np.array([0, 16, 0, 16], np.float32)
    expected["centers"][0, :count] -= np.array([0, 16], np.float32)
    loaded = tf.saved_model.load(paths["saved_model"])
    detections = to_numpy(loaded.signatures["serving_encoded_images"](encoded=tf.constant([png])))
    check({k: np.concatenate([v, v]) for k, v in detections.items()},
          {k: np.concatenate([v, v]) for k, v in expected.items()})


def test_tflite_both_signatures_with_builtin_ops(exported):
    _, images, calibration, expected, expected_calibrated, paths = exported
    ops = kc.export.tflite_op_names(paths["tflite"])
    assert not [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")], ops
    interpreter = tf.lite.Interpreter(model_path=str(paths["tflite"]), num_threads=2)
    assert set(interpreter.get_signature_list()) == {"serving_default", "serving_calibrated"}
    detect = interpreter.get_signature_runner("serving_default")
    outputs = [detect(images=image[None]) for image in images]
    check({key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}, expected)
    detect = interpreter.get_signature_runner("serving_calibrated")
    outputs = [detect(images=image[None], calibration=camera[None])
               for image, camera in zip(images, calibration)]
    check({key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}, expected_calibrated)


def test_onnx_takes_the_calibration(exported):
    _, images, calibration, _, expected_calibrated, paths = exported
    check(run_onnx(paths["onnx"], images, calibration=calibration), expected_calibrated)


def test_tflite_int8_calibrates_both_signatures(exported, tmp_path):
    # The calibrator of a two-signature model needs samples named by signature.
    model, images, calibration, _, _, _ = exported
    path = kc.export.export_model(model, str(tmp_path), format="tflite", input_size=INPUT_SIZE,
                                  quantization="int8", num_calibration_images=2)
    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=2)
    assert set(interpreter.get_signature_list()) == {"serving_default", "serving_calibrated"}
    detections = interpreter.get_signature_runner("serving_calibrated")(
        images=images[:1], calibration=calibration[:1]
    )
    assert set(detections) == KEYS
    assert detections["locations"].shape == (1, MAX_DETECTIONS, 3)
    assert all(np.isfinite(value).all() for value in detections.values())
    assert ((detections["labels"] >= -1) & (detections["labels"] < model.num_classes)).all()
