"""Pull/push embedding losses and the smooth-L1 offset loss on cases computed by hand."""

import numpy as np
import pytest

from keras_centernet.losses.embedding import embedding_losses
from keras_centernet.losses.embedding import keypoint_offset_loss
from tests.test_case import to_numpy
from tests.test_case import value_and_grads

EPS = 1e-4


def embedding_maps(tl_values, br_values, width=4):
    """Embedding maps (B, 1, W, 1) with object k's corners at column k (top-left) and W-1-k (bottom-right)."""
    batch = len(tl_values)
    tl = np.zeros((batch, 1, width, 1), "float32")
    br = np.zeros((batch, 1, width, 1), "float32")
    tl_indices = np.zeros((batch, 3), "int32")
    br_indices = np.zeros((batch, 3), "int32")
    mask = np.zeros((batch, 3), "float32")
    for b, (tls, brs) in enumerate(zip(tl_values, br_values)):
        for k, (t, r) in enumerate(zip(tls, brs)):
            tl[b, 0, k, 0], br[b, 0, width - 1 - k, 0] = t, r
            tl_indices[b, k], br_indices[b, k], mask[b, k] = k, width - 1 - k, 1
    return tl, br, tl_indices, br_indices, mask


@pytest.mark.multi_backend
def test_two_objects_by_hand():
    # Object 0: corners 0.0 and 0.2 (mean 0.1); object 1: 0.6 and 0.6 (mean 0.6).
    pull, push = embedding_losses(*embedding_maps([[0.0, 0.6]], [[0.2, 0.6]]))
    # Pull: (0.1^2 + 0.1^2 + 0 + 0) / n, n = 2.
    np.testing.assert_allclose(float(pull), 0.02 / (2 + EPS), rtol=1e-5)
    # Push: diagonal pairs 1 - 1/n each, off-diagonal relu(1 - 0.5) - 1/n, over n(n-1) = 2.
    np.testing.assert_allclose(float(push), (2 * (1 - 1 / (2 + EPS)) + 2 * (0.5 - 1 / (2 + EPS))) / (2 + EPS), rtol=1e-5)
    # ... which is CornerNet's mean hinge over the two ordered pairs j != k.
    np.testing.assert_allclose(float(push), 0.5, rtol=1e-3)


@pytest.mark.multi_backend
def test_three_objects_and_a_batch_sum_per_image_normalisation():
    # Image 0: three objects, means 0, 0.25 and 2 (so 2 is pushed by no one);
    # image 1: two identical objects, means 1 and 1.
    tl = [[-0.5, 0.25, 2.0], [1.0, 1.0]]
    br = [[0.5, 0.25, 2.0], [1.0, 1.0]]
    pull, push = embedding_losses(*embedding_maps(tl, br))
    # Pull: image 0 (0.25 + 0.25) / 3, image 1: 0.
    np.testing.assert_allclose(float(pull), 0.5 / (3 + EPS), rtol=1e-5)
    # Push, image 0: pairs (0, 1), (1, 0) hinge 0.75; with 2: 0. Sum over the
    # 9 ordered pairs minus 9/n, over n(n-1) = 6. Image 1: hinges 1 for all 4
    # pairs, minus 4/n, over 2.
    push_0 = (3 * 1 + 2 * 0.75 - 9 / (3 + EPS)) / (6 + EPS)
    push_1 = (4 * 1 - 4 / (2 + EPS)) / (2 + EPS)
    np.testing.assert_allclose(float(push), push_0 + push_1, rtol=1e-5)
    np.testing.assert_allclose(push_0, 1.5 / 6, rtol=1e-3)
    np.testing.assert_allclose(push_1, 1.0, rtol=1e-3)


@pytest.mark.multi_backend
def test_single_object_and_empty_images():
    # One object: no pull (equal corners), the official push constant ~1
    # ((1 - 1/(1 + eps)) / eps); an image without objects adds nothing.
    pull, push = embedding_losses(*embedding_maps([[0.3], []], [[0.3], []]))
    assert float(pull) == 0.0
    # float32 cancellation in 1 - 1/(1 + eps) leaves ~3e-4 of relative error.
    np.testing.assert_allclose(float(push), (1 - 1 / (1 + EPS)) / EPS, rtol=1e-3)


@pytest.mark.multi_backend
def test_pull_gradient_moves_corners_together():
    tl, br, tl_indices, br_indices, mask = embedding_maps([[0.0, 3.0]], [[1.0, 3.0]])

    def pull(tl_map, br_map):
        return embedding_losses(tl_map, br_map, tl_indices, br_indices, mask)[0]

    _, (grad_tl, grad_br) = value_and_grads(pull, tl, br)
    # d/d e_tl of ((e_tl - e)^2 + (e_br - e)^2) / n = (e_tl - e_br) / n = -1/2.
    np.testing.assert_allclose(grad_tl[0, 0, 0, 0], -1 / (2 + EPS), rtol=1e-5)
    np.testing.assert_allclose(grad_br[0, 0, 3, 0], 1 / (2 + EPS), rtol=1e-5)
    assert grad_tl[0, 0, 1, 0] == 0.0


@pytest.mark.multi_backend
def test_offset_loss_by_hand():
    offset_map = np.zeros((1, 2, 2, 2), "float32")
    offset_map[0, 0, 1] = [0.5, 0.2]
    offset_map[0, 1, 0] = [3.0, 0.0]
    indices = np.array([[1, 2, 0]])
    mask = np.array([[1.0, 1.0, 0.0]], "float32")
    target = np.array([[[0.1, 0.2], [0.5, 0.5], [9.0, 9.0]]], "float32")
    # Object 0: d = (0.4, 0): 0.5 * 0.16; object 1: d = (2.5, 0.5): 2.0 + 0.125; over 2 objects.
    loss = keypoint_offset_loss(offset_map, indices, mask, target)
    np.testing.assert_allclose(float(to_numpy(loss)), (0.08 + 2.0 + 0.125) / (2 + EPS), rtol=1e-5)
