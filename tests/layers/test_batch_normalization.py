"""`OnePassBatchNormalization` against two-pass statistics in float64 and Keras' own layer."""

import keras
import numpy as np
import pytest

from keras_centernet.layers import OnePassBatchNormalization
from tests.test_case import TestCase
from tests.test_case import to_numpy
from tests.test_case import value_and_grads


def batch_norm_numpy(x, gamma, beta, epsilon, axis=-1):
    """Training-mode BatchNorm by hand, float64, two passes."""
    x = x.astype(np.float64)
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = [1] * x.ndim
    shape[axis] = -1
    return (x - mean) / np.sqrt(variance + epsilon) * gamma.reshape(shape) + beta.reshape(shape), \
        mean.reshape(-1), variance.reshape(-1)


class TestOnePassBatchNormalization(TestCase):
    @pytest.mark.multi_backend
    def test_training_values_and_moving_statistics(self, rng):
        # Channel means far from 0 next to their spread: E[x^2] - E[x]^2 alone would cancel.
        x = (rng.normal(size=(4, 5, 6, 3)) * [0.5, 2.0, 1.0] + [3000.0, -50.0, 0.0]).astype("float32")
        norm = OnePassBatchNormalization(epsilon=1e-5, momentum=0.9)
        norm.build(x.shape)
        gamma = rng.uniform(0.5, 2.0, size=3).astype("float32")
        beta = rng.normal(size=3).astype("float32")
        norm.gamma.assign(gamma)
        norm.beta.assign(beta)
        y = to_numpy(norm(x, training=True))
        expected, mean, variance = batch_norm_numpy(x, gamma, beta, 1e-5)
        np.testing.assert_allclose(y, expected, atol=2e-3)
        np.testing.assert_allclose(to_numpy(norm.moving_mean), 0.1 * mean, rtol=1e-6, atol=1e-7)
        batch_variance = (to_numpy(norm.moving_variance) - 0.9) / 0.1
        np.testing.assert_allclose(batch_variance, variance, rtol=1e-4, atol=1e-5)
        # The shift matters: channel 0's variance (0.25 around a mean of 3000) taken as
        # E[x^2] - E[x]^2 in float32 is off by far more.
        channel = x[..., 0]
        naive = np.mean(channel * channel, dtype=np.float32) - np.mean(channel, dtype=np.float32) ** 2
        assert abs(naive - variance[0]) > 100 * abs(batch_variance[0] - variance[0]), naive
        # Inference uses the moving statistics, as Keras' layer.
        np.testing.assert_allclose(
            to_numpy(norm(x, training=False)),
            (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * variance + 1e-5) * gamma + beta, rtol=1e-4, atol=1e-3)

    @pytest.mark.multi_backend
    def test_values_and_gradients_equal_keras_layer(self, rng):
        x = (rng.normal(size=(2, 4, 4, 5)) * 3.0 + 7.0).astype("float32")
        cotangent = rng.normal(size=x.shape).astype("float32")
        layers = [cls(epsilon=1e-5, axis=-1) for cls in (OnePassBatchNormalization, keras.layers.BatchNormalization)]
        results = []
        for layer in layers:
            layer.build(x.shape)
            layer.gamma.assign(np.linspace(0.5, 1.5, 5).astype("float32"))

            def loss(x, gamma, beta, layer=layer):
                with keras.StatelessScope(state_mapping=[(layer.gamma, gamma), (layer.beta, beta)]):
                    y = layer(x, training=True)
                return keras.ops.sum(y * keras.ops.convert_to_tensor(cotangent))

            results.append(value_and_grads(loss, x, to_numpy(layer.gamma), to_numpy(layer.beta)))
        (value, grads), (keras_value, keras_grads) = results
        np.testing.assert_allclose(value, keras_value, rtol=1e-5, atol=1e-4)
        for grad, keras_grad in zip(grads, keras_grads):
            assert np.abs(keras_grad).max() > 0
            np.testing.assert_allclose(grad, keras_grad, rtol=1e-4, atol=1e-5)

    def test_channels_first_and_serialisation(self, rng, tmp_path):
        x = (rng.normal(size=(3, 2, 4, 4)) + 5.0).astype("float32")
        norm = OnePassBatchNormalization(axis=1, epsilon=1e-3)
        expected, _, _ = batch_norm_numpy(x, np.ones(2), np.zeros(2), 1e-3, axis=1)
        np.testing.assert_allclose(to_numpy(norm(x, training=True)), expected, atol=1e-4)
        self.run_layer_test(OnePassBatchNormalization(epsilon=1e-5), x.transpose(0, 2, 3, 1), tmp_path=tmp_path)

    def test_a_mask_takes_keras_masked_statistics(self, rng):
        x = (rng.normal(size=(2, 6, 3)) + 4.0).astype("float32")
        mask = np.array([[True] * 4 + [False] * 2, [True] * 6])
        ours, theirs = OnePassBatchNormalization(), keras.layers.BatchNormalization()
        np.testing.assert_allclose(to_numpy(ours(x, training=True, mask=mask)),
                                   to_numpy(theirs(x, training=True, mask=mask)), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(to_numpy(ours.moving_variance), to_numpy(theirs.moving_variance), rtol=1e-6)


def _reductions_reading_reductions(layer, x):
    """How many full-size reductions of a training call read a value derived from another reduction (JAX)."""
    import jax
    from jax.extend.core import Literal

    def walk(jaxpr, derived_inputs):
        """(count, derived flags of the outputs) of `jaxpr`, nested calls included."""
        derived = {v for v, flag in zip(jaxpr.invars, derived_inputs) if flag}

        def flags(variables):
            return [not isinstance(v, Literal) and v in derived for v in variables]

        count = 0
        for eqn in jaxpr.eqns:
            inner = eqn.params.get("jaxpr")
            if inner is not None:  # a nested jit (jnp.var is one)
                inner_count, outputs = walk(getattr(inner, "jaxpr", inner), flags(eqn.invars))
                count += inner_count
                derived.update(v for v, flag in zip(eqn.outvars, outputs) if flag)
            elif eqn.primitive.name == "reduce_sum" and tuple(eqn.invars[0].aval.shape) == x.shape:
                count += any(flags(eqn.invars))
                derived.update(eqn.outvars)
            elif any(flags(eqn.invars)):
                derived.update(eqn.outvars)
        return count, flags(jaxpr.outvars)

    layer.build(x.shape)
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    closed = jax.make_jaxpr(lambda x: layer.stateless_call(trainable, non_trainable, x, training=True))(x)
    return walk(closed.jaxpr, [False] * len(closed.jaxpr.invars))[0]


@pytest.mark.jax
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="reads the JAX program of the layer")
def test_statistics_take_one_pass_over_the_activations(rng):
    # Keras' layer reduces (x - mean)^2 after reducing x: its second pass waits for
    # the first. Here both reductions read only x (and the shift, a slice of x).
    x = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    assert _reductions_reading_reductions(keras.layers.BatchNormalization(), x) >= 1
    assert _reductions_reading_reductions(OnePassBatchNormalization(), x) == 0
