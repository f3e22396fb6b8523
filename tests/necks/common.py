"""What the neck tests share: random pyramids and the saving round trip of a neck."""

import keras
import numpy as np


def pyramid(rng, channels, size=16, batch=1):
    """Feature maps of halving size, one per entry of `channels`."""
    return [
        rng.normal(size=(batch, size // 2**i, size // 2**i, c)).astype("float32")
        for i, c in enumerate(channels)
    ]


def check_neck_saving(test, neck, channels, rng, tmp_path, randomize=None):
    """`.keras` round trip of `neck` on a pyramid of `channels` (a `TestCase` check).

    Args:
        randomize: optional `(substring of a weight path, sampler(shape))`: such
            weights are set to random values first (e.g. DCN offsets, which
            start at zero), so that every weight matters.
    """
    inputs = [keras.Input((None, None, c)) for c in channels]
    model = keras.Model(inputs, neck(inputs))
    if randomize is not None:
        key, sample = randomize
        for weight in model.weights:
            if key in weight.path:
                weight.assign(np.asarray(sample(weight.shape), "float32"))
    return test.run_model_saving_test(model, pyramid(rng, channels), tmp_path, atol=1e-5)
