"""Training recipes: the official learning rates and schedules, and the callbacks of a run.

The official CenterNet trains with Adam at 5e-4 for a batch of 128 (ResNet,
DLA-34: 140 epochs, x0.1 at epochs 90 and 120) or 2.5e-4 for a batch of 24
(Hourglass-104: 50 epochs, x0.1 at 40), scaling the rate linearly with the
batch. These helpers give the same recipe for any batch size and length, and
the callbacks that make a run resumable and observable.
"""

import contextlib
import os
import time

import keras
import numpy as np

# Official (learning rate, batch size) by architecture family.
_OFFICIAL_RATES = {"hourglass": (2.5e-4, 24), "default": (5e-4, 128)}


def default_learning_rate(preset, batch_size):
    """The official Adam learning rate of `preset`, scaled linearly to `batch_size`.

    The official rates: 5e-4 for batch 128 (ResNet and DLA) and 2.5e-4 for
    batch 24 (Hourglass-104).

    Args:
        preset: str. A preset name; names starting with `hourglass` take the
            Hourglass rate.
        batch_size: int.

    Returns:
        float.

    Example:

    >>> default_learning_rate("dla34", 32)
    0.000125
    """
    rate, official_batch = _OFFICIAL_RATES[
        "hourglass" if str(preset).startswith("hourglass") else "default"
    ]
    return rate * batch_size / official_batch


def learning_rate_schedule(
    base_learning_rate, steps_per_epoch, epochs, schedule="step", step_epochs=None, warmup_epochs=0
):
    """A Keras learning-rate schedule: the official step decay or cosine.

    Args:
        base_learning_rate: float.
        steps_per_epoch: int.
        epochs: int. Length of the run.
        schedule: `"step"` (x0.1 at each of `step_epochs`), `"cosine"`
            (to 0 at the end) or `"constant"`. Defaults to `"step"`.
        step_epochs: list of int. Epochs where the step schedule divides by
            10. Defaults to the official 90/140 and 120/140 of the run
            (`[round(0.64 * epochs), round(0.86 * epochs)]`).
        warmup_epochs: float. Linear warm-up for the cosine schedule.
            Defaults to 0.

    Returns:
        A `keras.optimizers.schedules.LearningRateSchedule` or a float.

    Example:

    >>> schedule = learning_rate_schedule(1.25e-4, steps_per_epoch=100, epochs=140)
    >>> optimizer = keras.optimizers.Adam(schedule)
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(
            f"`steps_per_epoch` and `epochs` must be >= 1; received {steps_per_epoch}, {epochs}."
        )
    if schedule == "constant":
        return base_learning_rate
    if schedule == "step":
        if step_epochs is None:
            step_epochs = sorted({max(1, round(epochs * 90 / 140)), max(1, round(epochs * 120 / 140))})
        boundaries = [int(epoch * steps_per_epoch) for epoch in step_epochs]
        values = [base_learning_rate * 0.1**i for i in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    if schedule == "cosine":
        total = epochs * steps_per_epoch
        warmup = int(warmup_epochs * steps_per_epoch)
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else base_learning_rate,
            decay_steps=max(1, total - warmup),
            warmup_target=base_learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    raise ValueError(f"`schedule` must be 'step', 'cosine' or 'constant'; received {schedule!r}.")


def seconds_per_step(model, x, y, steps=5, jit_compile="auto"):
    """Measures the training step time of `model` on one batch, leaving the model as it was.

    The step is compiled with a zero-rate `SGD` (the optimizer's own update
    costs little beside the network's forward and backward passes), timed over
    `steps` calls after the compiling one, and then every weight (BatchNorm
    statistics included) is put back: the model is as before, uncompiled for
    its real optimizer. It is what `epochs_for_time_budget` needs.

    Args:
        model: a built `keras.Model` that trains on `(x, y)`.
        x, y: one training batch; tensors of any kind (a `tf.data` batch
            too, under every backend: they are read as NumPy arrays).
        steps: int. Timed steps. Defaults to 5.
        jit_compile: as `model.compile`'s. Defaults to `"auto"`.

    Returns:
        float. The median seconds of one step.

    Example:

    >>> images, targets = next(iter(train_ds))
    >>> seconds = seconds_per_step(model, images, targets)
    """
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1; received {steps}.")
    # NumPy, which every backend's train_on_batch takes (JAX refuses tf tensors).
    x, y = keras.tree.map_structure(np.asarray, (x, y))
    weights = model.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=jit_compile)
    model.train_on_batch(x, y)  # compiles
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    model.set_weights(weights)
    return sorted(times)[len(times) // 2]


def epochs_for_time_budget(seconds, seconds_per_step, steps_per_epoch, max_epochs):
    """The number of epochs that trains in `seconds`, between 1 and `max_epochs`.

    Args:
        seconds: float. The time the training may take.
        seconds_per_step: float. One step's time (see `seconds_per_step`).
        steps_per_epoch: int.
        max_epochs: int. The most epochs returned.

    Returns:
        int.

    Example:

    >>> epochs_for_time_budget(480, seconds_per_step=0.25, steps_per_epoch=64, max_epochs=160)
    30
    """
    if seconds <= 0 or seconds_per_step <= 0 or steps_per_epoch < 1 or max_epochs < 1:
        raise ValueError(
            "`seconds`, `seconds_per_step`, `steps_per_epoch` and `max_epochs` must be positive; "
            f"received {seconds}, {seconds_per_step}, {steps_per_epoch}, {max_epochs}."
        )
    return int(max(1, min(max_epochs, seconds // (seconds_per_step * steps_per_epoch))))


def training_callbacks(output_dir, monitor="loss", mode="min", evaluation=None, tensorboard=True):
    """The callbacks of a resumable run writing into `output_dir`.

    - `BackupAndRestore` (`output_dir/backup`): a run killed at any point
      (even by SIGKILL) resumes at the epoch it reached when started again
      with the same `output_dir` (at the epoch before, when it was killed
      while writing the backup: the previous one is kept for that).
    - `ModelCheckpoint`s: `best.keras` (by `monitor`) and `last.keras`.
    - `CSVLogger` (`metrics.csv`, appended on resume) and `TensorBoard`
      (`logs/`).

    Args:
        output_dir: str. Folder of the run (created).
        monitor: str. Metric deciding `best.keras`: e.g. `"val_AP"` with
            `mode="max"` when `evaluation` logs COCO metrics. Defaults to
            `"loss"`.
        mode: `"min"` or `"max"`.
        evaluation: a callback that adds validation metrics to the logs
            (e.g. `COCOEvaluationCallback`); it is placed first so the
            others see its metrics.
        tensorboard: bool. Defaults to True.

    Returns:
        list of `keras.callbacks.Callback`.

    Example:

    >>> model.fit(train_ds, epochs=140, callbacks=training_callbacks("runs/dla34"))
    """
    os.makedirs(output_dir, exist_ok=True)
    callbacks = []
    if evaluation is not None:
        callbacks.append(evaluation)
    callbacks += [
        # Two backups: a process killed while writing one (SIGKILL mid-save
        # leaves a truncated HDF5 file) resumes from the other, an epoch earlier.
        keras.callbacks.BackupAndRestore(os.path.join(output_dir, "backup"), double_checkpoint=True),
        keras.callbacks.ModelCheckpoint(
            os.path.join(output_dir, "best.keras"), monitor=monitor, mode=mode, save_best_only=True
        ),
        keras.callbacks.ModelCheckpoint(os.path.join(output_dir, "last.keras")),
        keras.callbacks.CSVLogger(os.path.join(output_dir, "metrics.csv"), append=True),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(output_dir, "logs")))
    return callbacks


def data_parallel_scope(num_devices, batch_size=None):
    """A context to build and compile a model in, for data-parallel training.

    Keras' own data parallelism, chosen by the backend: under JAX,
    `keras.distribution.DataParallel` over the first `num_devices` devices
    (one SPMD program: the step computes exactly the single-device step on
    the global batch); under TensorFlow, a `tf.distribute.MirroredStrategy`
    (each replica computes the loss of its share of the batch and the
    gradients are averaged, as the official trainer's `DataParallel`). GPUs
    are used when there are any, CPU devices otherwise (for tests: JAX with
    `XLA_FLAGS=--xla_force_host_platform_device_count=N`, or TensorFlow
    logical CPU devices).

    Args:
        num_devices: int or None. None or 1: one device (a no-op context).
        batch_size: int or None. The global batch, which must split evenly.

    Returns:
        A context manager.

    Example:

    >>> with data_parallel_scope(2, batch_size=64):
    ...     model = CenterNet.from_preset("dla34", num_classes=80)
    ...     model.compile(optimizer=keras.optimizers.Adam(2.5e-4))
    >>> model.fit(dataset)  # outside the scope is fine
    """
    if num_devices is None or num_devices == 1:
        return contextlib.nullcontext()
    if not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(f"The number of devices must be a positive int; received {num_devices!r}.")
    if batch_size is not None and batch_size % num_devices:
        raise ValueError(
            f"The batch of {batch_size} does not split evenly over {num_devices} devices."
        )
    backend = keras.backend.backend()
    if backend == "jax":
        devices = keras.distribution.list_devices()
        _check_device_count(devices, num_devices)
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices[:num_devices])
        )
        return contextlib.nullcontext()
    if backend == "tensorflow":
        import tensorflow as tf

        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        _check_device_count([d.name for d in devices], num_devices)
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:num_devices]])
        return strategy.scope()
    raise ValueError(
        f"Data-parallel training runs under the JAX and TensorFlow backends; this is {backend!r}."
    )


def _check_device_count(devices, num_devices):
    if len(devices) < num_devices:
        raise ValueError(
            f"{num_devices} devices were asked for, but this machine has {len(devices)}: "
            f"{', '.join(devices)}."
        )
