"""Decoding equals the official `ctdet_decode` (fixtures' `x*_dets`) and hand-computed cases."""

import numpy as np
import pytest

from keras_centernet.layers.decoder import CenterNetDecoder
from keras_centernet.layers.decoder import decode_detections
from tests.official_fixtures import assert_same_detections
from tests.official_fixtures import load_outputs
from tests.official_fixtures import nhwc
from tests.test_case import TestCase
from tests.test_case import to_numpy


@pytest.mark.multi_backend
@pytest.mark.parametrize("arch", ["resdcn18", "dla34", "hg104", "resdcn101"])
def test_equals_official_ctdet_decode(arch):
    outputs = load_outputs(arch)
    inputs = sorted({key.split("_")[0] for key in outputs if key.endswith("_dets")})
    for x in inputs:
        last = max(int(k.split("_")[1][5:]) for k in outputs if k.startswith(f"{x}_stack"))
        maps = {name: nhwc(outputs[f"{x}_stack{last}_{name}"]) for name in ("hm", "wh", "reg")}
        # stride 1: the official dets are in map pixels.
        detections = to_numpy(decode_detections(maps["hm"], maps["wh"], maps["reg"], 100, stride=1))
        assert_same_detections({k: v[0] for k, v in detections.items()}, outputs[f"{x}_dets"][0])
        # And at stride 4, in input pixels.
        scaled = to_numpy(decode_detections(maps["hm"], maps["wh"], maps["reg"], 100, stride=4))
        np.testing.assert_allclose(scaled["boxes"], detections["boxes"] * 4, rtol=1e-6)


@pytest.mark.multi_backend
def test_hand_computed_peaks():
    logits = np.full((1, 6, 6, 2), -10.0, "float32")
    logits[0, 1, 1, 0] = 2.0          # a peak
    logits[0, 1, 2, 0] = 1.0          # its neighbour: suppressed
    logits[0, 4, 3, 1] = logits[0, 4, 4, 1] = 0.5   # a plateau: both kept (official)
    size = np.zeros((1, 6, 6, 2), "float32")
    size[0, 1, 1] = [4.0, 2.0]
    offset = np.zeros((1, 6, 6, 2), "float32")
    offset[0, 1, 1] = [0.25, 0.5]
    detections = to_numpy(decode_detections(logits, size, offset, max_detections=4, stride=4))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    np.testing.assert_allclose(detections["scores"][0, :3], [sigmoid(2.0), sigmoid(0.5), sigmoid(0.5)], rtol=1e-6)
    np.testing.assert_array_equal(detections["labels"][0, :3], [0, 1, 1])
    # Centre (1.25, 1.5), size (4, 2) -> (-0.75, 0.5, 3.25, 2.5), times 4.
    np.testing.assert_allclose(detections["boxes"][0, 0], np.array([-0.75, 0.5, 3.25, 2.5]) * 4, rtol=1e-6)
    plateau = sorted(tuple(b) for b in detections["boxes"][0, 1:3] / 4)
    assert plateau == [(3.0, 4.0, 3.0, 4.0), (4.0, 4.0, 4.0, 4.0)]
    # The fourth is the best of what remains: a background pixel at sigmoid(-10).
    assert detections["scores"][0, 3] == pytest.approx(sigmoid(-10.0), rel=1e-5)


class TestCenterNetDecoder(TestCase):
    @pytest.mark.multi_backend
    def test_threshold_and_counts(self):
        logits = np.full((2, 4, 4, 1), -10.0, "float32")
        logits[0, 1, 1, 0], logits[0, 3, 3, 0] = 3.0, 0.0   # scores .953 and .5
        maps = {"heatmap": logits, "size": np.ones((2, 4, 4, 2), "float32"),
                "offset": np.zeros((2, 4, 4, 2), "float32")}
        detections = to_numpy(CenterNetDecoder(max_detections=5, score_threshold=0.4)(maps))
        np.testing.assert_array_equal(detections["num_detections"], [2, 0])
        np.testing.assert_array_equal(detections["labels"][0], [0, 0, -1, -1, -1])
        np.testing.assert_array_equal(detections["scores"][1], 0)
        np.testing.assert_array_equal(detections["boxes"][0, 2:], 0)
        np.testing.assert_allclose(detections["boxes"][0, 0], [2, 2, 6, 6])

    def test_round_trip_and_bad_arguments(self):
        self.run_serialization_test(CenterNetDecoder(max_detections=7, score_threshold=0.2, stride=8))
        with pytest.raises(ValueError, match="max_detections"):
            CenterNetDecoder(max_detections=0)


@pytest.mark.multi_backend
def test_top_k_over_classes_and_border_peaks():
    # Class 0 has three peaks above class 1's only peak: K = 2 keeps two of class 0.
    # Peaks on the border and in a corner count (the pool pads with -inf, as torch).
    logits = np.full((1, 5, 5, 2), -8.0, "float32")
    logits[0, 0, 0, 0], logits[0, 4, 2, 0], logits[0, 2, 4, 0] = 4.0, 3.0, 2.0
    logits[0, 2, 2, 1] = 1.0
    maps = (logits, np.zeros((1, 5, 5, 2), "float32"), np.zeros((1, 5, 5, 2), "float32"))
    detections = to_numpy(decode_detections(*maps, max_detections=2, stride=1))
    np.testing.assert_array_equal(detections["labels"][0], [0, 0])
    np.testing.assert_allclose(detections["boxes"][0], [[0, 0, 0, 0], [2, 4, 2, 4]])
    detections = to_numpy(decode_detections(*maps, max_detections=4, stride=1))
    np.testing.assert_array_equal(detections["labels"][0], [0, 0, 0, 1])
    np.testing.assert_allclose(detections["boxes"][0, 2:], [[4, 2, 4, 2], [2, 2, 2, 2]])


class TestCenterNetDecoderInModels(TestCase):
    @pytest.mark.multi_backend
    def test_compiled_functional_model(self):
        """Symbolic shapes, then `predict` (compiled: XLA on TensorFlow and JAX)."""
        import keras

        inputs = {
            name: keras.Input((6, 6, channels), name=name)
            for name, channels in (("heatmap", 2), ("size", 2), ("offset", 2))
        }
        outputs = CenterNetDecoder(max_detections=3)(inputs)
        assert tuple(outputs["boxes"].shape) == (None, 3, 4)
        assert tuple(outputs["num_detections"].shape) == (None,)
        model = keras.Model(inputs, outputs)
        logits = np.full((2, 6, 6, 2), -300.0, "float32")  # sigmoid underflows to 0: not counted
        logits[0, 2, 3, 1] = 1.5
        size = np.zeros((2, 6, 6, 2), "float32")
        size[0, 2, 3] = [2.0, 1.0]
        offset = np.full((2, 6, 6, 2), 0.5, "float32")
        detections = model.predict({"heatmap": logits, "size": size, "offset": offset}, verbose=0)
        np.testing.assert_array_equal(detections["num_detections"], [1, 0])
        np.testing.assert_array_equal(detections["labels"][:, 0], [1, -1])
        # Centre (3.5, 2.5), size (2, 1), stride 4.
        np.testing.assert_allclose(detections["boxes"][0, 0], np.array([2.5, 2.0, 4.5, 3.0]) * 4)
