"""BiFPN neck: the fast normalised fusion against NumPy, the bidirectional graph, round trips."""

import numpy as np
import pytest

from keras_centernet.necks.bifpn import BiFPNNeck
from keras_centernet.necks.bifpn import FastNormalizedFusion
from tests.necks.common import check_neck_saving
from tests.necks.common import pyramid
from tests.test_case import TestCase
from tests.test_case import to_numpy


class TestFastNormalizedFusion(TestCase):
    @pytest.mark.multi_backend
    def test_weighted_sum_equals_numpy(self, rng):
        a, b, c = (rng.normal(size=(1, 4, 4, 4)).astype("float32") for _ in range(3))
        node = FastNormalizedFusion(4, num_inputs=3)
        node([a, b, c])
        # relu(-1) = 0: the second input is dropped by its weight.
        node.fusion_weights.assign(np.array([2.0, -1.0, 0.5], "float32"))
        # Separable conv = identity: depthwise centre tap 1, pointwise eye, no bias.
        depthwise = np.zeros((3, 3, 4, 1), "float32")
        depthwise[1, 1] = 1
        node.conv.depthwise_kernel.assign(depthwise)
        node.conv.pointwise_kernel.assign(np.eye(4, dtype="float32")[None, None])
        fused = (2.0 * a + 0.5 * c) / (2.5 + 1e-4)
        silu = fused / (1 + np.exp(-fused))
        expected = silu / np.sqrt(1 + 1e-3)  # BN at inference, initial statistics
        np.testing.assert_allclose(to_numpy(node([a, b, c], training=False)), expected, atol=1e-5)

    @pytest.mark.multi_backend
    def test_serialization(self):
        node = FastNormalizedFusion(4, num_inputs=2, epsilon=1e-3)
        revived = self.run_serialization_test(node)
        assert (revived.num_inputs, revived.epsilon) == (2, 1e-3)

    @pytest.mark.multi_backend
    def test_rejects_bad_arguments(self, rng):
        with pytest.raises(ValueError, match="num_inputs"):
            FastNormalizedFusion(4, num_inputs=1)
        node = FastNormalizedFusion(4, num_inputs=2)
        with pytest.raises(ValueError, match="fuses 2 maps"):
            node(pyramid(rng, (4, 4, 4), size=4)[:1] * 3)


class TestBiFPNNeck(TestCase):
    @pytest.mark.multi_backend
    def test_stride4_map_from_the_last_levels(self, rng):
        features = pyramid(rng, (2, 3), size=64) + pyramid(rng, (4, 5, 6, 7), size=16)
        neck = BiFPNNeck(filters=8, num_repeats=2)
        y = neck(features)
        assert tuple(y.shape) == (1, 16, 16, 8)
        assert neck.compute_output_shape([f.shape for f in features]) == (1, 16, 16, 8)

    @pytest.mark.multi_backend
    def test_nodes_of_the_bidirectional_graph(self, rng):
        neck = BiFPNNeck(filters=4, num_repeats=3, num_levels=4)
        neck(pyramid(rng, (4, 5, 6, 7)))
        # Per repeat: 3 top-down nodes of 2 inputs; bottom-up 3, 3, then 2 at the top.
        assert [n.num_inputs for n in neck.top_down_nodes] == [2] * 9
        assert [n.num_inputs for n in neck.bottom_up_nodes] == [3, 3, 2] * 3
        assert len({w.path for w in neck.weights}) == len(neck.weights)

    @pytest.mark.multi_backend
    def test_every_level_reaches_the_output(self, rng):
        features = pyramid(rng, (4, 5, 6, 7))
        neck = BiFPNNeck(filters=4, num_repeats=1)
        base = to_numpy(neck(features, training=False))
        for level in range(4):
            changed = list(features)
            changed[level] = changed[level] + 1.0
            assert np.abs(to_numpy(neck(changed, training=False)) - base).max() > 1e-4, level

    @pytest.mark.multi_backend
    def test_serialization(self):
        revived = self.run_serialization_test(BiFPNNeck(filters=8, num_repeats=2, num_levels=3))
        assert (revived.filters, revived.num_repeats, revived.num_levels) == (8, 2, 3)

    def test_saving_round_trip(self, rng, tmp_path):
        check_neck_saving(
            self, BiFPNNeck(filters=8, num_repeats=2), (4, 5, 6, 7), rng, tmp_path,
            randomize=("fusion_weights", lambda shape: rng.uniform(0.2, 2.0, size=shape)))

    @pytest.mark.multi_backend
    def test_rejects_bad_arguments(self, rng):
        with pytest.raises(ValueError, match="num_repeats"):
            BiFPNNeck(num_repeats=0)
        with pytest.raises(ValueError, match="num_levels"):
            BiFPNNeck(num_levels=1)
        with pytest.raises(ValueError, match="at least 4 feature maps"):
            BiFPNNeck(filters=4)(pyramid(rng, (3, 5)))
