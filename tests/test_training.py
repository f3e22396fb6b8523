"""Training recipes: the time-budget helpers that set the length of `centernet demo`."""

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet import training


@pytest.mark.parametrize(
    "seconds, step, steps_per_epoch, max_epochs, expected",
    [
        (480, 0.25, 64, 160, 30),  # 480 / (0.25 * 64) = 30 epochs
        (100, 0.5, 10, 160, 20),  # exactly 20 epochs of 5 s
        (99.9, 0.5, 10, 160, 19),  # a part epoch is not started
        (3600, 0.01, 32, 160, 160),  # a fast machine stops at the most epochs
        (1, 2.0, 64, 160, 1),  # a budget shorter than an epoch still trains one
    ],
)
def test_epochs_for_time_budget(seconds, step, steps_per_epoch, max_epochs, expected):
    assert training.epochs_for_time_budget(seconds, step, steps_per_epoch, max_epochs) == expected


@pytest.mark.parametrize("arguments", [(0, 0.1, 10, 5), (10, 0, 10, 5), (10, 0.1, 0, 5),
                                       (10, 0.1, 10, 0)])
def test_epochs_for_time_budget_rejects_non_positive_values(arguments):
    with pytest.raises(ValueError, match="must be positive"):
        training.epochs_for_time_budget(*arguments)


def tiny_detector():
    return kc.CenterNet(
        backbone=kc.backbones.ResNetBackbone(depth=18, width=8),
        neck=kc.necks.UpConvNeck(filters=(16, 16, 16), use_dcn=False),
        num_classes=3, head_channels=8,
    )


def one_batch():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    boxes = np.zeros((2, 4, 4), "float32")
    labels = np.full((2, 4), -1, "int32")
    boxes[:, 0] = [8, 8, 40, 48]
    labels[:, 0] = [0, 2]
    return images, {"boxes": boxes, "labels": labels}


@pytest.mark.multi_backend
def test_seconds_per_step_leaves_the_model_as_it_was():
    """The timed steps change BatchNorm statistics; every weight is put back afterwards."""
    model = tiny_detector()
    images, targets = one_batch()
    before = [np.array(w) for w in model.get_weights()]
    seconds = training.seconds_per_step(model, images, targets, steps=2)
    assert 0 < seconds < 60
    after = model.get_weights()
    assert len(after) == len(before)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)
    # The restoring is needed: a zero-rate step leaves the trainable weights but moves
    # BatchNorm's statistics.
    trainable = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
    statistics = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.train_on_batch(images, targets)
    for old, variable in zip(trainable, model.trainable_weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(variable))
    assert any(not np.array_equal(old, keras.ops.convert_to_numpy(variable))
               for old, variable in zip(statistics, model.non_trainable_weights))
    # The model then compiles for its real optimizer and trains as usual.
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.train_on_batch(images, targets)
    assert any(not np.array_equal(old, new) for old, new in zip(before, model.get_weights()))


def test_seconds_per_step_rejects_no_steps():
    with pytest.raises(ValueError, match="steps"):
        training.seconds_per_step(tiny_detector(), *one_batch(), steps=0)
