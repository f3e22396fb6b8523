"""Keypoint-Triplets CenterNet exports like CenterNet: SavedModel and TFLite equal Keras."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_centernet as kc
from tests.export.detections import assert_detection_dict
from tests.export.detections import match_detections
from tests.export.detections import run_tflite
from tests.models.test_centernet_triplets import tiny_model
from tests.test_case import to_numpy

SIZE = 64
SCORE_ATOL = 1e-4
BOX_ATOL = 1e-2


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # At initialisation the maps of random images give few corner pairs with a
    # centre keypoint inside; more keypoints per type and a loose embedding
    # test give ~20 distinct detections an image, so the comparisons are not
    # vacuous.
    model = tiny_model(ae_threshold=100.0, top_k=40, num_candidates=100, max_detections=20)
    images = rng.uniform(0, 255, size=(2, SIZE, SIZE, 3)).astype("float32")
    expected = {k: np.asarray(v) for k, v in model.predict_on_batch(images).items()}
    folder = tmp_path_factory.mktemp("triplets")
    saved_model = kc.export.export_model(model, str(folder / "saved_model"), input_size=(SIZE, SIZE))
    tflite = kc.export.export_model(model, str(folder), format="tflite", input_size=(SIZE, SIZE))
    return model, images, expected, saved_model, tflite


def test_detections_are_not_vacuous(exported):
    _, _, expected, _, _ = exported
    assert (expected["num_detections"] >= 3).all()
    found = expected["scores"][expected["scores"] > 0]
    assert len(np.unique(np.round(found, 4))) > 3


def test_saved_model_equals_keras(exported):
    model, images, expected, saved_model, _ = exported
    loaded = tf.saved_model.load(saved_model)
    detections = to_numpy(loaded.signatures["serving_default"](images=tf.constant(images)))
    assert_detection_dict(detections, 2, model.max_detections)
    match_detections(detections, expected, SCORE_ATOL, BOX_ATOL, min_matched=0.5)
    np.testing.assert_array_equal(detections["num_detections"], expected["num_detections"])
    raw = to_numpy(loaded.signatures["serving_raw_maps"](images=tf.constant(images)))
    expected_raw = to_numpy(model(images, training=False))
    assert set(raw) == set(expected_raw) and {"top_left_heatmap", "center_heatmap"} <= set(raw)
    for key in raw:
        np.testing.assert_allclose(raw[key], expected_raw[key], atol=1e-4, rtol=1e-4)


def test_tflite_float32_equals_keras(exported):
    model, images, expected, _, tflite = exported
    ops = kc.export.tflite_op_names(tflite)
    assert not [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")], ops
    assert {"CONV_2D", "TOPK_V2", "MAX_POOL_2D"} <= set(ops), ops
    detections = run_tflite(tflite, images)
    assert_detection_dict(detections, 2, model.max_detections)
    match_detections(detections, expected, SCORE_ATOL, BOX_ATOL, min_matched=0.5)
    np.testing.assert_array_equal(detections["num_detections"], expected["num_detections"])
