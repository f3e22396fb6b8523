"""FairMOT's identity loss against a NumPy cross-entropy."""

import math

import keras
import numpy as np
import pytest

from keras_centernet.losses.reid import reid_embedding_scale
from keras_centernet.losses.reid import reid_loss
from tests.test_case import to_numpy


class TestReidLoss:
    @pytest.mark.multi_backend
    def test_equals_numpy_cross_entropy(self, rng):
        embedding_map = rng.normal(size=(2, 4, 4, 3)).astype("float32")
        indices = np.array([[1, 5, 0], [15, 2, 0]], "int32")
        mask = np.array([[1, 1, 0], [1, 1, 0]], "float32")
        identities = np.array([[0, 3, 2], [-1, 1, 4]], "int32")  # one unknown, one padding slot
        kernel = rng.normal(size=(3, 5)).astype("float32")
        classifier = keras.layers.Dense(5, use_bias=False)
        classifier.build((None, 3))
        classifier.kernel.assign(kernel)
        scale = reid_embedding_scale(5)
        assert scale == pytest.approx(math.sqrt(2) * math.log(4))
        losses = []
        for b, k in [(0, 0), (0, 1), (1, 1)]:
            e = embedding_map[b].reshape(16, 3)[indices[b, k]]
            logits = scale * e / np.linalg.norm(e) @ kernel
            losses.append(np.log(np.exp(logits).sum()) - logits[identities[b, k]])
        actual = reid_loss(embedding_map, indices, mask, identities, classifier, scale)
        np.testing.assert_allclose(float(to_numpy(actual)), np.mean(losses), rtol=1e-5)

    @pytest.mark.multi_backend
    def test_zero_without_identities(self):
        classifier = keras.layers.Dense(4)
        loss = reid_loss(np.ones((1, 2, 2, 3), "float32"), np.zeros((1, 2), "int32"), np.ones((1, 2), "float32"),
                         -np.ones((1, 2), "int32"), classifier, 1.0)
        assert float(to_numpy(loss)) == 0.0
