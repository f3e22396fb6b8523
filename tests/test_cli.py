"""The `centernet` command: train -> evaluate -> predict on the synthetic set, and convert."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet import cli
from keras_centernet import training
from tests.official_fixtures import load_outputs
from tests.official_fixtures import nhwc
from tests.official_fixtures import rule_state_dict
from tests.official_fixtures import to_rgb_pixels
from tests.test_case import to_numpy

TINY = ["--image-size", "64", "--num-images", "8", "--num-val-images", "4", "--batch-size", "4"]


def test_version_and_help(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == kc.__version__
    for command in ("demo", "train", "evaluate", "predict", "convert", "export"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: centernet " + command in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny training run on the synthetic set, with COCO evaluation every epoch."""
    output = str(tmp_path_factory.mktemp("run"))
    code = cli.main(
        ["train", "--preset", "resnet18", *TINY, "--epochs", "2", "--eval-every", "1",
         "--output-dir", output, "--verbose", "0"]
    )
    assert code == 0
    return output


def test_train_writes_checkpoints_metrics_and_classes(trained_run):
    for name in ("best.keras", "last.keras", "metrics.csv", "classes.json"):
        assert os.path.exists(os.path.join(trained_run, name)), name
    with open(os.path.join(trained_run, "metrics.csv")) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2
    for column in ("loss", "heatmap_loss", "size_loss", "offset_loss", "val_AP", "val_AP50"):
        assert column in rows[0], sorted(rows[0])
        assert np.isfinite(float(rows[-1][column]))
    with open(os.path.join(trained_run, "classes.json")) as file:
        classes = json.load(file)
    assert classes["class_names"] == ["rectangle", "ellipse", "triangle", "ring", "cross"]
    # The interrupted-run guard: the backup is removed after a finished run.
    assert not os.path.exists(os.path.join(trained_run, "backup"))


def test_evaluate_with_test_time_augmentation(trained_run, tmp_path):
    output = str(tmp_path / "metrics.json")
    code = cli.main(
        ["evaluate", os.path.join(trained_run, "last.keras"), *TINY, "--flip",
         "--scales", "0.75,1", "--output", output, "--verbose", "0"]
    )
    assert code == 0
    with open(output) as file:
        metrics = json.load(file)
    assert set(metrics) >= {"AP", "AP50", "AP75", "AR100"}
    assert all(-1.0 <= value <= 1.0 for value in metrics.values())


def test_predict_draws_and_writes_json(trained_run, tmp_path):
    from PIL import Image

    image_path = str(tmp_path / "scene.png")
    pixels = np.full((48, 80, 3), 120, np.uint8)
    pixels[10:30, 20:50] = (230, 40, 40)
    Image.fromarray(pixels).save(image_path)
    output = str(tmp_path / "predictions")
    code = cli.main(
        ["predict", os.path.join(trained_run, "last.keras"), image_path, "--image-size", "64",
         "--score-threshold", "0.0", "--output-dir", output]
    )
    assert code == 0
    drawn = np.asarray(Image.open(os.path.join(output, "scene.png")))
    assert drawn.shape == (48, 80, 3)
    with open(os.path.join(output, "detections.json")) as file:
        results = json.load(file)
    detections = results[0]["detections"]
    assert results[0]["image"] == image_path
    assert len(detections) > 0
    assert {"box_xyxy", "score", "label", "class_name"} <= set(detections[0])
    # Boxes are in the original image's pixels (80x48), not the 64x64 input's.
    scores = [d["score"] for d in detections]
    assert scores == sorted(scores, reverse=True)


def test_convert_writes_an_equal_keras_model(tmp_path):
    checkpoint = str(tmp_path / "ctdet_resdcn18.npz")
    np.savez(checkpoint, **rule_state_dict("resdcn18"))
    output = str(tmp_path / "resdcn18.keras")
    assert cli.main(["convert", checkpoint, "--preset", "resnet18_dcn", "--output", output]) == 0
    model = keras.saving.load_model(output)
    assert model.num_classes == 80
    outputs = load_outputs("resdcn18")
    raw = to_numpy(model(to_rgb_pixels(outputs["x0_input"])))
    expected = nhwc(outputs["x0_stack0_hm"])
    assert np.abs(raw["heatmap"] - expected).max() <= 1e-4 * (expected.max() - expected.min())


def test_train_refuses_to_overwrite_an_interrupted_run(tmp_path, capsys):
    os.makedirs(tmp_path / "backup")
    code = cli.main(["train", "--preset", "resnet18", *TINY, "--epochs", "1",
                     "--output-dir", str(tmp_path)])
    assert code == 2
    assert "--resume" in one_error_line(capsys)


def one_error_line(capsys):
    """The single line a command printed on stderr for bad input."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("centernet ") and ": error: " in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--preset", "resnet19", *TINY], "Unknown preset 'resnet19'"),
        (["train", "--dataset", "coco-json", "--images", "/no/such/folder",
          "--annotations", "/no/such/file.json", *TINY], "/no/such/folder does not exist"),
        (["train", "--dataset", "coco-json", *TINY], "needs --images and --annotations"),
        (["train", "--dataset", "tfds", "--tfds-name", "cifar10", *TINY], "cifar10"),
        (["evaluate", "/no/such/model.keras", *TINY], "No model file at /no/such/model.keras"),
        (["convert", "/no/such/checkpoint.pth", "--preset", "dla34"], "/no/such/checkpoint.pth"),
        (["train", "--model", "triplets", "--preset", "resnet18", *TINY],
         "--model triplets takes one of the presets ['triplets_hourglass104', 'triplets_hourglass52']"),
        (["train", "--model", "centernet", "--preset", "triplets_hourglass52", *TINY],
         "'triplets_hourglass52' is a Keypoint-Triplets preset: pass --model triplets"),
        (["train", "--preset", "triplets_hourglass52", "--augment-on", "accelerator", *TINY],
         "pass --augment-on cpu"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, expected, capsys):
    assert cli.main(argv) == 2
    assert expected in one_error_line(capsys)


def test_train_builds_the_family_of_the_preset(tmp_path, monkeypatch):
    """A Keypoint-Triplets preset trains, evaluates and saves a CenterNetTriplets through `train`."""
    from tests.models.test_centernet_triplets import tiny_model

    built = []

    def tiny_from_preset(preset, num_classes=80, **kwargs):
        # The full Hourglass-52 is too large for this CPU; the preset itself is tested
        # in tests/models. Here: what `train` asks for, and that the loop runs it.
        built.append((preset, num_classes, kwargs))
        return tiny_model(num_classes=num_classes, **kwargs)

    monkeypatch.setattr(kc.CenterNetTriplets, "from_preset", staticmethod(tiny_from_preset))
    output = str(tmp_path / "triplets")
    code = cli.main(["train", "--preset", "triplets_hourglass52", *TINY, "--epochs", "1",
                     "--eval-every", "1", "--output-dir", output, "--verbose", "0"])
    assert code == 0
    assert built == [("triplets_hourglass52", 5, {"focal_clamp_gradient": "official"})]
    model = keras.saving.load_model(os.path.join(output, "last.keras"))
    assert isinstance(model, kc.CenterNetTriplets)
    with open(os.path.join(output, "metrics.csv")) as file:
        rows = list(csv.DictReader(file))
    assert np.isfinite(float(rows[-1]["loss"])) and "pull_loss" in rows[-1], sorted(rows[-1])
    assert 0.0 <= float(rows[-1]["val_AP"]) <= 1.0


def test_checkpoint_of_another_architecture_is_one_line(tmp_path, capsys):
    checkpoint = str(tmp_path / "ctdet_resdcn18.npz")
    np.savez(checkpoint, **rule_state_dict("resdcn18"))
    assert cli.main(["convert", checkpoint, "--preset", "dla34",
                     "--output", str(tmp_path / "x.keras")]) == 2
    line = one_error_line(capsys)
    assert "does not fit the model" in line and "have no entry" in line, line
    assert not os.path.exists(tmp_path / "x.keras")


def test_verbose_shows_the_traceback():
    with pytest.raises(ValueError, match="Unknown preset"):
        cli.main(["--verbose", "train", "--preset", "resnet19", *TINY])


def test_train_with_the_augmentation_on_the_accelerator(tmp_path):
    """`--augment-on accelerator`: canvases from the CPU, the official augmentation in the step."""
    output = str(tmp_path / "run")
    code = cli.main(["train", "--preset", "resnet18", *TINY, "--epochs", "1", "--eval-every", "0",
                     "--augment-on", "accelerator", "--output-dir", output, "--verbose", "0"])
    assert code == 0
    with open(os.path.join(output, "metrics.csv")) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["loss"]))
    model = keras.saving.load_model(os.path.join(output, "last.keras"))
    assert isinstance(model.augmentation, kc.layers.BatchAugmentation)
    # Prediction takes plain RGB images: the augmentation is for training only.
    detections = model.predict(np.zeros((1, 64, 64, 3), "float32"), verbose=0)
    assert detections["boxes"].shape == (1, 100, 4)


def test_export_from_the_command_line(trained_run, tmp_path):
    output = str(tmp_path / "model.tflite")
    code = cli.main(["export", os.path.join(trained_run, "last.keras"), "--format", "tflite",
                     "--input-size", "64", "--output", output])
    assert code == 0
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=output)
    interpreter.allocate_tensors()
    (image_input,) = interpreter.get_input_details()
    assert tuple(image_input["shape"]) == (1, 64, 64, 3)


def test_demo_writes_every_output(tmp_path):
    """The README's main job, tiny: trains, evaluates, exports, draws and saves."""
    output = str(tmp_path / "demo")
    code = cli.main(["demo", *TINY, "--epochs", "1", "--output-dir", output, "--verbose", "0"])
    assert code == 0
    for name in ("model.keras", "detections.png", "coco_metrics.json", "metrics.csv",
                 os.path.join("saved_model", "saved_model.pb")):
        assert os.path.exists(os.path.join(output, name)), name
    with open(os.path.join(output, "coco_metrics.json")) as file:
        metrics = json.load(file)
    assert {"AP", "AP50", "flip_test"} <= set(metrics)
    assert {"AP", "AP50"} <= set(metrics["flip_test"])
    # The demo's time budget measured a real step and kept the length it was capped at.
    with open(os.path.join(output, "time_budget.json")) as file:
        budget = json.load(file)
    assert budget["epochs"] == 1 and budget["max_epochs"] == 1
    assert budget["seconds_per_step"] > 0 and budget["steps_per_epoch"] == 2
    with open(os.path.join(output, "metrics.csv")) as file:
        assert len(list(csv.DictReader(file))) == 1


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_demo_runs_under_other_backends(tmp_path, backend):
    """`centernet --backend jax|torch demo`: the step timing and the COCO evaluation take the
    readers' tf tensors as NumPy (the JAX trainer refused them), and the SavedModel, which
    needs TensorFlow, is left out with a warning naming `centernet export`."""
    output = str(tmp_path / backend)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    completed = subprocess.run(
        [sys.executable, "-m", "keras_centernet.cli", "--backend", backend, "demo", *TINY,
         "--epochs", "1", "--output-dir", output, "--verbose", "0"],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=root, KERAS_BACKEND="tensorflow"),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for name in ("model.keras", "detections.png", "coco_metrics.json", "time_budget.json"):
        assert os.path.exists(os.path.join(output, name)), name
    assert not os.path.exists(os.path.join(output, "saved_model"))
    assert "centernet --backend tensorflow export" in completed.stderr
    with open(os.path.join(output, "coco_metrics.json")) as file:
        assert {"AP", "AP50", "flip_test"} <= set(json.load(file))


def test_time_budget_sets_the_length_of_a_run(tmp_path, monkeypatch):
    """--time-budget: as many epochs as fit at the measured step time, up to --epochs."""
    measured = []

    def one_second(model, images, targets, steps=5, jit_compile="auto"):
        measured.append(tuple(images.shape))
        return 1.0

    monkeypatch.setattr(training, "seconds_per_step", one_second)
    output = str(tmp_path / "budget")
    # 8 images of batch 4: 2 steps (2 s) an epoch; 5 s fit 2 whole epochs.
    code = cli.main(["train", "--preset", "resnet18", *TINY, "--epochs", "9", "--time-budget", "5",
                     "--eval-every", "0", "--output-dir", output, "--verbose", "0"])
    assert code == 0
    assert measured == [(4, 64, 64, 3)]
    with open(os.path.join(output, "metrics.csv")) as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0", "1"]
    with open(os.path.join(output, "time_budget.json")) as file:
        assert json.load(file) == {"epochs": 2, "seconds_per_step": 1.0, "steps_per_epoch": 2,
                                   "time_budget": 5.0, "max_epochs": 9}


def test_resumed_run_keeps_the_length_its_time_budget_chose(tmp_path, monkeypatch):
    """A resumed run does not measure again: its schedule was built for the recorded length."""
    def no_measuring(*args, **kwargs):
        raise AssertionError("a resumed run measured the step time again")

    monkeypatch.setattr(training, "seconds_per_step", no_measuring)
    output = tmp_path / "resumed"
    (output / "backup").mkdir(parents=True)  # an interrupted run's (empty) backup
    (output / "time_budget.json").write_text(json.dumps({"epochs": 1}))
    code = cli.main(["train", "--preset", "resnet18", *TINY, "--epochs", "9", "--time-budget", "600",
                     "--eval-every", "0", "--output-dir", str(output), "--resume", "--verbose", "0"])
    assert code == 0
    with open(output / "metrics.csv") as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0"]


def test_negative_time_budget_is_a_usage_error(tmp_path, capsys):
    code = cli.main(["train", "--preset", "resnet18", *TINY, "--time-budget", "-1",
                     "--output-dir", str(tmp_path / "negative")])
    assert code == 2
    assert "--time-budget" in one_error_line(capsys)


def test_head_options_reach_the_model(tmp_path, monkeypatch, capsys):
    """--box-head, --iou-loss and --heatmap-loss become CenterNet's arguments; other families refuse them."""
    built = []

    class Built(Exception):
        pass

    def record(preset, num_classes=80, **kwargs):
        built.append((preset, kwargs))
        raise Built

    monkeypatch.setattr(kc.CenterNet, "from_preset", staticmethod(record))
    with pytest.raises(Built):
        cli.main(["--verbose", "train", "--preset", "resnet18", *TINY, "--box-head", "ltrb",
                  "--iou-loss", "diou", "--heatmap-loss", "quality_focal",
                  "--output-dir", str(tmp_path / "ltrb")])
    assert built == [("resnet18", {"focal_clamp_gradient": "official", "box_head": "ltrb",
                                   "iou_loss": "diou", "heatmap_loss": "quality_focal"})]
    # Left out, the preset's own choices stand: nothing is passed.
    with pytest.raises(Built):
        cli.main(["--verbose", "train", "--preset", "resnet18", *TINY,
                  "--output-dir", str(tmp_path / "size")])
    assert built[-1] == ("resnet18", {"focal_clamp_gradient": "official"})
    assert cli.main(["train", "--preset", "triplets_hourglass52", *TINY, "--box-head", "ltrb",
                     "--output-dir", str(tmp_path / "triplets")]) == 2
    line = one_error_line(capsys)
    assert "--box-head" in line and "triplets_hourglass52" in line, line
