"""IDA neck: DLA's aggregation (`DLAUpNeck`) on any pyramid, with optional projections."""

import numpy as np
import pytest

from keras_centernet.necks.dla_up import DLAUpNeck
from keras_centernet.necks.ida import IDANeck
from tests.necks.common import check_neck_saving
from tests.necks.common import pyramid
from tests.test_case import TestCase
from tests.test_case import to_numpy


class TestIDANeck(TestCase):
    @pytest.mark.multi_backend
    def test_without_projection_is_the_dla_neck(self, rng):
        channels = (4, 6, 8, 10)
        features = pyramid(rng, channels)
        neck = IDANeck(filters=None)
        dla = DLAUpNeck(channels=channels)
        dla(features)
        for weight in dla.weights:
            weight.assign(rng.normal(0, 0.1, size=weight.shape).astype("float32") + to_numpy(weight))
        neck(features)
        neck.aggregation.set_weights(dla.get_weights())
        np.testing.assert_allclose(
            to_numpy(neck(features, training=False)), to_numpy(dla(features, training=False)), atol=1e-5
        )

    @pytest.mark.multi_backend
    def test_projects_wide_backbones_to_dla_widths(self, rng):
        # Six levels; the last four, as wide as a ResNet-50's / 32.
        features = pyramid(rng, (2, 3), size=64) + pyramid(rng, (8, 16, 32, 64), size=16)
        neck = IDANeck(filters=4)
        y = neck(features)
        assert tuple(y.shape) == (1, 16, 16, 4)
        assert neck.aggregation.channels == (4, 8, 16, 32)
        assert neck.compute_output_shape([f.shape for f in features]) == (1, 16, 16, 4)

    @pytest.mark.multi_backend
    def test_serialization(self):
        revived = self.run_serialization_test(IDANeck(filters=None, num_levels=3))
        assert (revived.filters, revived.num_levels) == (None, 3)

    def test_saving_round_trip(self, rng, tmp_path):
        check_neck_saving(self, IDANeck(filters=4), (6, 8, 10, 12), rng, tmp_path,
                          randomize=("offset", lambda shape: rng.normal(0, 0.1, size=shape)))

    @pytest.mark.multi_backend
    def test_rejects_bad_arguments(self, rng):
        with pytest.raises(ValueError, match="num_levels"):
            IDANeck(num_levels=2)
        with pytest.raises(ValueError, match="filters"):
            IDANeck(filters=0)
        with pytest.raises(ValueError, match="at least 4 feature maps"):
            IDANeck(filters=4)(pyramid(rng, (3, 5)))
