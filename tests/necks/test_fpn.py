"""FPN neck: top-down fusion against a NumPy reference, shapes, round trips."""

import numpy as np
import pytest

from keras_centernet.necks.fpn import FPNNeck
from tests.necks.common import check_neck_saving
from tests.necks.common import pyramid
from tests.test_case import TestCase
from tests.test_case import to_numpy


def identity_smoothing(neck):
    """Output conv = centre tap identity, BN at inference = identity: the neck returns relu(p_0)."""
    kernel = np.zeros((3, 3, neck.filters, neck.filters), "float32")
    kernel[1, 1] = np.eye(neck.filters)
    neck.output_conv.kernel.assign(kernel)


class TestFPNNeck(TestCase):
    @pytest.mark.multi_backend
    def test_top_down_fusion_equals_numpy(self, rng):
        channels = (3, 5, 6, 7)
        features = pyramid(rng, channels)
        neck = FPNNeck(filters=4)
        neck(features)
        for lateral in neck.laterals:
            lateral.kernel.assign(rng.normal(size=lateral.kernel.shape).astype("float32"))
            lateral.bias.assign(rng.normal(size=lateral.bias.shape).astype("float32"))
        identity_smoothing(neck)
        weights = [(to_numpy(l.kernel)[0, 0], to_numpy(l.bias)) for l in neck.laterals]
        x = features[3] @ weights[3][0] + weights[3][1]
        for i in (2, 1, 0):
            x = features[i] @ weights[i][0] + weights[i][1] + x.repeat(2, axis=1).repeat(2, axis=2)
        # BN at inference with its initial statistics: x / sqrt(1 + 1e-3).
        expected = np.maximum(x / np.sqrt(1 + 1e-3), 0)
        np.testing.assert_allclose(to_numpy(neck(features, training=False)), expected, atol=1e-5)

    @pytest.mark.multi_backend
    @pytest.mark.parametrize("upsampling", ["nearest", "transposed"])
    def test_stride4_map_from_the_last_levels(self, rng, upsampling):
        # Six levels (strides 1 .. 32, as DLA gives): the last four are used.
        features = pyramid(rng, (2, 3), size=64) + pyramid(rng, (4, 5, 6, 7), size=16)
        neck = FPNNeck(filters=8, upsampling=upsampling)
        y = neck(features)
        assert tuple(y.shape) == (1, 16, 16, 8)
        assert neck.compute_output_shape([f.shape for f in features]) == (1, 16, 16, 8)
        assert len(neck.laterals) == 4

    @pytest.mark.multi_backend
    def test_transposed_upsampling_is_learned(self, rng):
        neck = FPNNeck(filters=4, upsampling="transposed", num_levels=2)
        neck(pyramid(rng, (3, 5)))
        assert [tuple(u.kernel.shape) for u in neck.upsamplings] == [(4, 4, 4, 4)]

    @pytest.mark.multi_backend
    def test_serialization(self):
        revived = self.run_serialization_test(FPNNeck(filters=8, num_levels=3, upsampling="transposed"))
        assert (revived.filters, revived.num_levels, revived.upsampling) == (8, 3, "transposed")

    @pytest.mark.parametrize("upsampling", ["nearest", "transposed"])
    def test_saving_round_trip(self, rng, tmp_path, upsampling):
        check_neck_saving(self, FPNNeck(filters=8, upsampling=upsampling), (4, 5, 6, 7), rng,
                          tmp_path)

    @pytest.mark.multi_backend
    def test_rejects_bad_arguments(self, rng):
        with pytest.raises(ValueError, match="upsampling"):
            FPNNeck(upsampling="bilinear")
        with pytest.raises(ValueError, match="num_levels"):
            FPNNeck(num_levels=1)
        with pytest.raises(ValueError, match="filters"):
            FPNNeck(filters=0)
        with pytest.raises(ValueError, match="at least 4 feature maps"):
            FPNNeck(filters=4)(pyramid(rng, (3, 5)))
