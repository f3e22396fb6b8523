"""The datasets feed `model.fit`, `evaluate` and `predict` on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_centernet.data import coco_json
from keras_centernet.data import synthetic
from tests.data.coco_folders import simple_folder


class BoxMeanRegressor(keras.Model):
    """Predicts the mean box of an image: enough to read both target keys."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, strides=4)
        self.pool = keras.layers.GlobalAveragePooling2D()

    def call(self, images):
        return self.pool(self.conv(images / 255.0))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        valid = ops.cast(y["labels"] >= 0, "float32")[..., None]
        mean_box = ops.sum(y["boxes"] * valid, axis=1) / (ops.sum(valid, axis=1) + 1.0)
        return ops.mean((y_pred - mean_box / 32.0) ** 2)


@pytest.mark.multi_backend
def test_fit_evaluate_predict_on_synthetic():
    model = BoxMeanRegressor()
    model.compile(optimizer="sgd")
    train = synthetic(num_images=4, image_size=32, batch_size=2, seed=0)
    history = model.fit(train, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    evaluation = synthetic(num_images=3, image_size=32, batch_size=2, seed=0, training=False)
    assert np.isfinite(model.evaluate(evaluation, verbose=0))
    assert model.predict(evaluation, verbose=0).shape == (3, 4)


@pytest.mark.multi_backend
def test_fit_on_a_coco_folder(tmp_path):
    images_dir, path = simple_folder(tmp_path, num_images=4, size=(40, 48))
    model = BoxMeanRegressor()
    model.compile(optimizer="sgd")
    model.fit(coco_json(images_dir, path, batch_size=2, image_size=32, seed=0), verbose=0)
    evaluation = coco_json(images_dir, path, batch_size=2, training=False, image_size=32)
    assert model.predict(evaluation, verbose=0).shape == (4, 4)
