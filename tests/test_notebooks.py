"""The tutorials in `notebooks/` run top to bottom and produce what they promise.

Each notebook is one test case (so that pytest-xdist spreads them), executed
by nbclient in a fresh IPython kernel of the interpreter running the tests,
with `CENTERNET_FAST=1` (tiny images, a few steps) and a per-cell timeout,
in a temporary folder where its `outputs/` land. A failing cell fails the
test with its traceback. The notebooks are stored without outputs.
"""

import json
import os
import pathlib
import sys

import ipykernel  # noqa: F401  (the kernel the notebooks run in; the `notebooks` extra)
import nbclient
import nbformat
import pytest

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
# Seconds per cell in FAST mode; the slowest cell (five exports in notebook 03)
# takes about 50 s on a loaded 2-core CPU.
CELL_TIMEOUT = 300
KERNEL_NAME = "keras-centernet-tests"
COCO_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}

# What each notebook must leave behind: files under `outputs/<name>/` and lines it prints.
EXPECTED = {
    "01_quickstart": {
        "files": ["training_batch.png", "loss_curves.png", "detections.png", "gallery.png",
                  "heatmaps.png", "coco_metrics.json", "model.keras"],
        "printed": ["AP50:", "reloaded scores equal: True"],
    },
    "02_custom_dataset": {
        "files": ["shapes_coco/train.json", "shapes_coco/val.json", "training_batch.png",
                  "object_sizes.png", "detections.png", "coco_metrics.json"],
        "printed": ["label -> category id: {0: 3, 1: 7, 2: 12}", "AP50 "],
    },
    "03_export_and_deploy": {
        "files": ["saved_model/saved_model.pb", "model.tflite", "model_float16.tflite",
                  "model_int8.tflite", "model.onnx", "comparison.md", "latency_and_size.png",
                  "detections_by_format.png"],
        "printed": ["| tflite_int8 |", "| onnx |", "first boxes, original pixels"],
    },
    "04_official_checkpoints": {
        "files": ["stand_in_resdcn18.pth", "parity.png", "resnet18_dcn_converted.keras"],
        "printed": ["a STAND-IN", "x0: 100 of 100 official detections reproduced",
                    "skipped: ['hm.2.weight', 'hm.2.bias']", "reloaded model equal: True"],
    },
    "05_how_centernet_works": {
        "files": ["image.png", "radius.png", "heatmap_targets.png", "focal_loss.png", "peaks.png",
                  "decoded.png"],
        "printed": ["focal loss", "with offsets: IoU", "initial heatmap probability"],
    },
}


def notebook_path(name):
    return NOTEBOOKS_DIR / f"{name}.ipynb"


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory):
    """A kernel spec that starts IPython with this very interpreter (this venv's packages)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "keras_centernet tests",
        "language": "python",
    }))
    return root


def printed_text(notebook):
    return "".join(
        output.get("text", "")
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if output.get("name") == "stdout"
    )


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_is_stored_without_outputs(name):
    notebook = nbformat.read(notebook_path(name), as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, tmp_path, kernel_dir, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("CENTERNET_FAST", "1")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    # A developer's own checkpoint or model must not change what is tested.
    for variable in ("CENTERNET_CHECKPOINT", "CENTERNET_PRESET", "CENTERNET_MODEL"):
        monkeypatch.delenv(variable, raising=False)
    notebook = nbformat.read(notebook_path(name), as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT, kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, on any failing cell

    outputs = tmp_path / "outputs" / name
    missing = [f for f in EXPECTED[name]["files"] if not (outputs / f).exists()]
    assert not missing, f"{name} did not write {missing}; it wrote {sorted(os.listdir(outputs))}"
    for png in outputs.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000, png
    printed = printed_text(notebook)
    for text in EXPECTED[name]["printed"]:
        assert text in printed, f"{name} did not print {text!r}; it printed:\n{printed[-3000:]}"
    metrics_file = outputs / "coco_metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        assert set(metrics) == COCO_KEYS and all(-1 <= v <= 1 for v in metrics.values()), metrics
    if name == "03_export_and_deploy":
        rows = {line.split("|")[1].strip(): line.split("|")[1:-1]
                for line in (outputs / "comparison.md").read_text().splitlines()[2:]}
        assert set(rows) == {"keras", "saved_model", "tflite_float32", "tflite_float16", "tflite_int8", "onnx"}
        # Float artifacts reproduce every one of Keras' top-10 detections.
        for artifact in ("saved_model", "tflite_float32", "onnx"):
            assert rows[artifact][4].strip() == "100", rows[artifact]
