"""Data-parallel training (`--devices`): one step on two devices equals the single-device step.

Device counts are fixed when a backend starts, so each case runs
`tests/training_data_parallel_worker.py` in a fresh process with two CPU
devices: under JAX (`keras.distribution.DataParallel`, one SPMD program) the
updated weights equal a single-device step on the same global batch; under
TensorFlow (`tf.distribute.MirroredStrategy`, per-replica losses) they do when
each replica holds the same images, which checks that the replicas' gradients
are averaged, not summed.
"""

import json
import os
import subprocess
import sys

import pytest

import keras_centernet as kc
from keras_centernet.training import data_parallel_scope

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_worker(backend):
    environment = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT)
    if backend == "jax":
        environment["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    result = subprocess.run(
        [sys.executable, "-m", "tests.training_data_parallel_worker"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_two_devices_take_the_single_device_step(backend):
    result = run_worker(backend)
    assert result["backend"] == backend
    assert result["replicas"] == 2
    assert result["max_update"] > 1e-3  # the step changed the weights
    assert result["relative_difference"] < 1e-4, result
    assert abs(result["parallel_loss"] - result["single_loss"]) < 1e-4 * abs(result["single_loss"])


def test_rejects_more_devices_than_the_machine_has():
    with pytest.raises(ValueError, match="1000 devices were asked for"):
        with data_parallel_scope(1000, batch_size=1000):
            pass


def test_rejects_a_batch_that_does_not_split():
    with pytest.raises(ValueError, match="does not split evenly over 2 devices"):
        with data_parallel_scope(2, batch_size=5):
            pass


def test_one_device_is_a_plain_scope():
    with data_parallel_scope(None):
        model = kc.CenterNet.from_preset("resnet18", num_classes=2, head_channels=8)
    assert model.num_classes == 2
