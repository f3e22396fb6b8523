"""Run by `tests/test_data_parallel.py` in a fresh process (device counts are fixed at start).

One SGD step of a small CenterNet on a fixed batch, on one device and on two
(data-parallel through `keras_centernet.training.data_parallel_scope`), from the
same weights; prints the largest difference of the updated weights relative to
the largest update, as JSON.
"""

import json
import os
import sys

import keras
import numpy as np

from keras_centernet import CenterNet
from keras_centernet.training import data_parallel_scope


def batch(identical_halves):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    boxes = np.zeros((4, 8, 4), "float32")
    labels = np.full((4, 8), -1, "int32")
    boxes[:, 0] = [8, 10, 40, 30]
    boxes[:, 1] = [30, 30, 60, 62]
    labels[:, :2] = [0, 1]
    boxes[1, 0] = [2, 2, 20, 50]
    boxes[3, 2] = [40, 4, 50, 14]
    labels[3, 2] = 1
    if identical_halves:
        # Each replica sees the same two images: its loss and batch statistics
        # are the global batch's, so the averaged gradient is the global one.
        images[2:], boxes[2:], labels[2:] = images[:2], boxes[:2], labels[:2]
    return images, {"boxes": boxes, "labels": labels}


def small_model():
    """A small CenterNet with batch normalisation (whose statistics must be the global batch's)."""
    backbone = keras.Sequential([
        keras.Input((None, None, 3)),
        keras.layers.AveragePooling2D(4),
        keras.layers.Conv2D(16, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
    ])
    return CenterNet(backbone, num_classes=2, head_channels=8, regression_head_stddev=0.1)


def one_step(num_devices, images, targets, weights):
    keras.utils.set_random_seed(0)
    with data_parallel_scope(num_devices, batch_size=len(images)):
        model = small_model()
        if weights is not None:
            model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=False)
    before = [np.array(w) for w in model.get_weights()]
    logs = model.train_on_batch(images, targets, return_dict=True)
    after = [np.array(w) for w in model.get_weights()]
    if keras.backend.backend() == "tensorflow":
        replicas = model.distribute_strategy.num_replicas_in_sync
    else:
        distribution = keras.distribution.distribution()
        replicas = 1 if distribution is None else len(distribution.device_mesh.devices.flat)
    return before, after, float(logs["loss"]), replicas


def main():
    images, targets = batch(identical_halves=keras.backend.backend() == "tensorflow")
    before, single, single_loss, _ = one_step(None, images, targets, None)
    _, parallel, parallel_loss, replicas = one_step(2, images, targets, before)
    update = max(np.abs(s - b).max() for s, b in zip(single, before))
    difference = max(np.abs(s - p).max() for s, p in zip(single, parallel))
    print(json.dumps({
        "backend": keras.backend.backend(),
        "replicas": replicas,
        "single_loss": single_loss,
        "parallel_loss": parallel_loss,
        "max_update": float(update),
        "relative_difference": float(difference / update),
    }))


if __name__ == "__main__":
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    if os.environ.get("KERAS_BACKEND") == "jax":
        # Route the kernel gradients as on a GPU (`ops.kernel_gradients`), so
        # that the SPMD step runs the layout constraint and barrier too.
        from keras_centernet.ops import kernel_gradients

        kernel_gradients.PLATFORMS = (*kernel_gradients.PLATFORMS, "cpu")
    sys.exit(main())
