"""The official-network fixtures: weights rebuilt from the documented rule, inputs, comparisons.

See `tests/fixtures/official/README.md` and `weight_rule.md`.
"""

import json
import math
import os

import numpy as np

from tests.conftest import FIXTURES

# Official COCO normalisation, BGR order (`opts.py`).
MEAN_BGR = np.array([0.40789654, 0.44719302, 0.47026115], np.float64)
STD_BGR = np.array([0.28863828, 0.27408164, 0.27809835], np.float64)


def fixture_dir(arch):
    path = os.path.join(FIXTURES, "official", arch)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Missing fixture folder {path}: fixtures ship with the tests.")
    return path


def load_manifest(arch):
    with open(os.path.join(fixture_dir(arch), "manifest.json")) as f:
        return json.load(f)


def rule_state_dict(arch):
    """The official state_dict of `arch` rebuilt in numpy from manifest.json (weight_rule.md)."""
    man = load_manifest(arch)
    rule, seed = man["rule"], man["rule_seed"]
    state = {}
    for i, ((name, shape, _), cat, fan_in) in enumerate(
        zip(man["params"], man["category"], man["fan_in"])
    ):
        shape = tuple(shape)
        if cat == "num_batches_tracked":
            state[name] = np.zeros(shape, np.int64)
            continue
        rng = np.random.default_rng([seed, i])
        if cat == "running_mean":
            v = rng.normal(0.0, 0.1, shape)
        elif cat == "running_var":
            v = rng.uniform(0.5, 1.5, shape)
        elif cat == "bn_weight":
            v = rng.uniform(0.5, 1.5, shape)
        elif cat == "res_last_bn_weight":
            v = rng.uniform(0.1, 0.4, shape)
        elif cat == "bias":
            v = rng.normal(0.0, 0.05, shape)
        elif cat == "conv_weight":
            v = rng.normal(0.0, math.sqrt(rule["conv_gain"] / fan_in), shape)
        elif cat == "dcn_weight":
            v = rng.normal(0.0, math.sqrt(rule["dcn_weight_gain"] / fan_in), shape)
        elif cat == "offset_mask_weight":
            v = rng.normal(0.0, rule["offset_gain"] / math.sqrt(fan_in), shape)
        elif cat == "head_last_weight":
            v = rng.normal(0.0, rule["head_last_gain"] / math.sqrt(fan_in), shape)
        elif cat == "hm_last_bias":
            v = np.full(shape, -2.19)
        elif cat == "wh_last_bias":
            v = rng.uniform(2.0, 8.0, shape)
        elif cat == "reg_last_bias":
            v = rng.uniform(0.25, 0.75, shape)
        else:
            raise ValueError(f"Unknown category {cat!r} of {name}.")
        state[name] = v.astype(np.float32)
    return state


def load_outputs(arch):
    """The float64-model outputs (cast to float32): `x{j}_input`, `x{j}_stack{s}_hm`, ..."""
    with np.load(os.path.join(fixture_dir(arch), "outputs_f64ref.npz")) as data:
        return {k: data[k] for k in data.files}


def load_features(arch):
    with np.load(os.path.join(fixture_dir(arch), "features_x0.npz")) as data:
        return {k: data[k] for k in data.files}


def to_rgb_pixels(x_nchw):
    """Official normalised BGR NCHW input -> our RGB 0..255 NHWC pixels (float32)."""
    bgr = x_nchw.astype(np.float64).transpose(0, 2, 3, 1) * STD_BGR + MEAN_BGR
    return (bgr[..., ::-1] * 255.0).astype(np.float32)


def nhwc(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def assert_maps_close(actual, expected, name, tolerance=1e-4):
    """Max abs error <= tolerance * the reference map's value range."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    value_range = float(expected.max() - expected.min())
    error = float(np.abs(actual - expected).max())
    assert error <= tolerance * value_range, (
        f"{name}: max abs error {error:.3g} > {tolerance} x range {value_range:.3g}"
    )
