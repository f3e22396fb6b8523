import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(autouse=True)
def _reset_keras_state():
    import keras

    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_dtype_policy("float32")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


@pytest.fixture
def fixture_path():
    def path(*parts):
        full = os.path.join(FIXTURES, *parts)
        if not os.path.exists(full):
            raise FileNotFoundError(
                f"Missing test fixture {full}: fixtures ship with the tests."
            )
        return full

    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
