"""Kernel gradients routed row-major through a barrier (JAX only): same values, hooked into training."""

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.ops import kernel_gradients
from tests.models.test_centernet_triplets import tiny_model as tiny_triplets_model
from tests.models.test_training import scene_batch
from tests.test_case import to_numpy

pytestmark = [
    pytest.mark.jax,
    pytest.mark.skipif(
        keras.backend.backend() != "jax",
        reason="the layout constraint and barrier are JAX's (the trainer it hooks into too)",
    ),
]


def test_gradients_unchanged_and_routed_through_a_row_major_barrier():
    import jax
    import jax.numpy as jnp

    kernel = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 4, 5)), "float32")
    bias = jnp.arange(5.0)

    def loss(values):
        kernel, bias = values
        return jnp.sum(jnp.tanh(kernel) * 3.0) + jnp.sum(bias**2)

    routed = jax.jit(jax.grad(lambda values: loss(kernel_gradients.row_major_kernel_gradients(values))))
    got = routed([kernel, bias])
    # By hand: d/dk sum(3 tanh k) = 3 (1 - tanh(k)^2); d/db sum(b^2) = 2 b.
    np.testing.assert_allclose(got[0], 3.0 * (1.0 - np.tanh(np.asarray(kernel, "float64")) ** 2), rtol=1e-5)
    np.testing.assert_allclose(got[1], 2.0 * np.arange(5.0), rtol=1e-6)
    # The identity's gradient is the plain one, bit for bit.
    plain = jax.jit(jax.grad(loss))([kernel, bias])
    np.testing.assert_array_equal(got[0], plain[0])
    text = routed.lower([kernel, bias]).as_text()
    # One barrier, for the 4-D kernel only, behind a row-major (minor-to-major 3,2,1,0) constraint.
    assert text.count("stablehlo.optimization_barrier") == 1, text
    assert "LayoutConstraint" in text and "result_layouts = [dense<[3, 2, 1, 0]>" in text, text


def resnet18_centernet():
    return kc.CenterNet.from_preset("resnet18", num_classes=2, max_objects=4)


@pytest.mark.parametrize("build", [resnet18_centernet, tiny_triplets_model], ids=["centernet", "triplets"])
def test_fit_routes_kernel_gradients_and_updates_the_same_weights(monkeypatch, build):
    """One Adam step with the routing on (as on a GPU) and off: the hook runs, the weights agree."""
    images, targets = scene_batch(num_images=2, size=64, max_objects=4)
    calls = []
    route = kernel_gradients.row_major_kernel_gradients

    def recording(values):
        calls.append(sum(getattr(v, "ndim", 0) == 4 for v in values))
        return route(values)

    monkeypatch.setattr(kernel_gradients, "row_major_kernel_gradients", recording)
    weights = {}
    for platforms in ((), ("cpu",)):
        monkeypatch.setattr(kernel_gradients, "PLATFORMS", platforms)
        keras.utils.set_random_seed(3)
        model = build()
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.train_on_batch(images, targets)
        weights[platforms] = [to_numpy(w) for w in model.trainable_weights]
    # Traced once, with the routing on, over every convolution kernel of the model.
    num_kernels = sum(len(w.shape) == 4 for w in model.trainable_weights)
    assert calls == [num_kernels], (calls, num_kernels)
    for off, on in zip(weights[()], weights[("cpu",)]):
        np.testing.assert_allclose(on, off, rtol=1e-5, atol=1e-6)
