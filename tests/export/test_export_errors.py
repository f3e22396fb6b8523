"""Clear errors before any tracing: bad format, quantisation, model, input size or calibration data."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_centernet as kc


def tiny_model(size_divisor=32):
    backbone = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.AveragePooling2D(4), keras.layers.Conv2D(4, 3, padding="same")]
    )
    return kc.CenterNet(backbone, num_classes=2, head_channels=4, max_detections=5, size_divisor=size_divisor)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_unknown_format_and_quantization(model, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown export format 'tfjs'; choose one of \('saved_model', 'tflite', 'onnx'\)"):
        kc.export.export_model(model, str(tmp_path), format="tfjs")
    with pytest.raises(ValueError, match=r"Unknown quantization 'int4'; choose one of \(None, 'float16', 'int8'\)"):
        kc.export.export_model(model, str(tmp_path), format="tflite", quantization="int4")
    with pytest.raises(ValueError, match="Quantization 'int8' is for TFLite only"):
        kc.export.export_model(model, str(tmp_path), format="onnx", quantization="int8")


def test_model_never_built(tmp_path):
    unbuilt = keras.Sequential([keras.layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="must be a built CenterNet.*was never built"):
        kc.export.export_model(unbuilt, str(tmp_path), format="tflite", input_size=(64, 64))
    with pytest.raises(ValueError, match="must be a keras_centernet.CenterNet"):
        kc.export.export_model("resnet18", str(tmp_path))


def test_input_size_must_fit_the_stride(model, tmp_path):
    with pytest.raises(ValueError, match=r"`input_size` \(100, 128\) is not a multiple of 32.*\(96, 128\)"):
        kc.export.export_model(model, str(tmp_path), format="tflite", input_size=(100, 128))
    hourglass_like = tiny_model(size_divisor=128)
    with pytest.raises(ValueError, match=r"`input_size` \(192, 192\) is not a multiple of 128"):
        kc.export.export_model(hourglass_like, str(tmp_path), format="tflite", input_size=(192, 192))
    with pytest.raises(ValueError, match="TFLite model has a fixed input size"):
        kc.export.export_model(model, str(tmp_path), format="tflite", input_size=None)
    with pytest.raises(ValueError, match=r"`input_size` must be \(height, width\)"):
        kc.export.export_model(model, str(tmp_path), format="tflite", input_size=(64, 64, 3))


def test_calibration_images_of_the_wrong_size(model, tmp_path):
    with pytest.raises(ValueError, match=r"Calibration images must have shape \(N, 64, 64, 3\).*\(1, 32, 32, 3\)"):
        kc.export.export_model(model, str(tmp_path), format="tflite", input_size=(64, 64), quantization="int8",
                               representative_dataset=[np.zeros((32, 32, 3), np.float32)])


def test_dynamic_saved_model_checks_sizes_in_the_graph(model, tmp_path):
    """`input_size=None`: any multiple of the stride is served; other sizes get the signature's message."""
    path = kc.export.export_model(model, str(tmp_path / "dynamic"), input_size=None)
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "serving_raw_maps"}
    images = np.random.default_rng(0).uniform(0, 255, (1, 64, 96, 3)).astype(np.float32)
    detections = loaded.signatures["serving_default"](images=tf.constant(images))
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(detections["scores"].numpy(), expected["scores"], atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="height and width multiples of 32"):
        loaded.signatures["serving_default"](images=tf.zeros((1, 64, 100, 3)))


def test_default_folder_and_file_names(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert kc.export.default_export_dir(model) == f"saved_models/{model.name}"
    model.preset = "resnet18_dcn"
    try:
        assert kc.export.default_export_dir(model) == "saved_models/resnet18_dcn"
        path = kc.export.export_model(model, format="tflite", input_size=(64, 64))
    finally:
        del model.preset
    assert path == "saved_models/resnet18_dcn/model.tflite"
    assert (tmp_path / path).is_file()
    assert kc.export.export_model(model, "x/custom.tflite", format="tflite", input_size=(64, 64)) == "x/custom.tflite"


def test_cli_entry_point(model, tmp_path):
    """`centernet export MODEL.keras --format tflite --input-size 64` through the parser helpers."""
    import argparse

    saved = str(tmp_path / "tiny.keras")
    model.save(saved)
    parser = kc.export.add_cli_arguments(argparse.ArgumentParser())
    args = parser.parse_args([saved, "--format", "tflite", "--input-size", "64",
                              "--output", str(tmp_path / "out")])
    path = kc.export.run_cli(args)
    assert path == str(tmp_path / "out" / "model.tflite")
    interpreter = tf.lite.Interpreter(model_path=path)
    assert interpreter.get_input_details()[0]["shape"].tolist() == [1, 64, 64, 3]
    with pytest.raises(SystemExit):
        parser.parse_args([saved, "--format", "tfjs"])
