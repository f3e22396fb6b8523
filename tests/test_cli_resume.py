"""The `centernet` command end to end: a run killed with SIGKILL mid-epoch resumes at its epoch.

The command runs in its own process (as a user runs it), is killed with
SIGKILL while it trains, and is started again with `--resume`; then the saved
model is evaluated and used to predict, and the files of the run are checked.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--image-size", "64", "--num-images", "8", "--num-val-images", "4", "--batch-size", "4"]
EPOCHS = 6


def command(*args):
    return [sys.executable, "-m", "keras_centernet.cli", *args]


def environment():
    return dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"),
                PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")


def epochs_logged(path):
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


def train_command(output_dir, *extra):
    return command("train", "--preset", "resnet18", *TINY, "--epochs", str(EPOCHS),
                   "--eval-every", "0", "--schedule", "cosine", "--output-dir", output_dir,
                   "--verbose", "2", *extra)


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """Trains, is killed with SIGKILL after its second epoch, and resumes; returns the run's folder."""
    output_dir = str(tmp_path_factory.mktemp("killed_run"))
    metrics = os.path.join(output_dir, "metrics.csv")
    process = subprocess.Popen(train_command(output_dir), cwd=ROOT, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    try:
        while len(epochs_logged(metrics)) < 2:
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the run did not reach its second epoch"
            time.sleep(0.05)
        # Into the third epoch: its first steps run, then the process dies at once.
        time.sleep(0.3)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    killed_after = epochs_logged(metrics)
    assert os.path.isdir(os.path.join(output_dir, "backup"))

    # Without --resume the interrupted run is not overwritten: one line, exit code 2.
    refused = subprocess.run(train_command(output_dir), cwd=ROOT, env=environment(),
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert "--resume" in refused.stderr and "Traceback" not in refused.stderr

    resumed = subprocess.run(train_command(output_dir, "--resume"), cwd=ROOT, env=environment(),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return output_dir, killed_after


def test_resumes_at_the_epoch_it_reached(resumed_run):
    output_dir, killed_after = resumed_run
    logged = epochs_logged(os.path.join(output_dir, "metrics.csv"))
    # Epochs 0 .. k ran before the kill; the resumed run goes on from k + 1 to
    # the end (from k when the kill cut the backup of epoch k: then the
    # previous backup is used), each epoch once.
    assert killed_after[:2] == [0, 1]
    assert logged[:len(killed_after)] == killed_after
    resumed = logged[len(killed_after):]
    assert resumed[0] in (killed_after[-1], killed_after[-1] + 1), logged
    assert resumed == list(range(resumed[0], EPOCHS)), logged
    for name in ("best.keras", "last.keras", "classes.json"):
        assert os.path.isfile(os.path.join(output_dir, name)), name
    # A finished run leaves no backup behind.
    assert not os.path.exists(os.path.join(output_dir, "backup"))


def test_evaluate_and_predict_the_resumed_model(resumed_run, tmp_path):
    output_dir, _ = resumed_run
    model = os.path.join(output_dir, "last.keras")
    metrics_path = str(tmp_path / "metrics.json")
    evaluated = subprocess.run(
        command("evaluate", model, *TINY, "--output", metrics_path, "--verbose", "0"),
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    with open(metrics_path) as file:
        metrics = json.load(file)
    assert set(metrics) >= {"AP", "AP50", "AP75", "AR100"}

    from PIL import Image

    good = str(tmp_path / "scene.png")
    Image.fromarray(np.full((40, 70, 3), 128, np.uint8)).save(good)
    bad = str(tmp_path / "broken.jpg")
    with open(bad, "wb") as file:
        file.write(b"\xff\xd8\xff\xe0 not really a JPEG")
    predictions = str(tmp_path / "predictions")
    predicted = subprocess.run(
        command("predict", model, good, bad, "--image-size", "64", "--score-threshold", "0",
                "--output-dir", predictions),
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600,
    )
    # The broken file is named in one line and skipped; the good one is predicted.
    assert predicted.returncode == 2
    assert "broken.jpg" in predicted.stderr and "Traceback" not in predicted.stderr
    with open(os.path.join(predictions, "detections.json")) as file:
        results = json.load(file)
    assert [r["image"] for r in results] == [good]
    assert os.path.isfile(os.path.join(predictions, "scene.png"))
