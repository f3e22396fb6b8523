"""Shared round-trip checks for every layer and model (after keras-hub's TestCase)."""

import os

import keras
import numpy as np
from keras import ops


def to_numpy(tree):
    return keras.tree.map_structure(lambda t: np.asarray(ops.convert_to_numpy(t)), tree)


def assert_allclose(actual, expected, atol=1e-6, rtol=1e-6, err_msg=""):
    actual, expected = to_numpy(actual), to_numpy(expected)
    keras.tree.assert_same_structure(actual, expected)
    for a, e in zip(keras.tree.flatten(actual), keras.tree.flatten(expected)):
        np.testing.assert_allclose(a, e, atol=atol, rtol=rtol, err_msg=err_msg)


class TestCase:
    """Base class for pytest test classes: layer, serialisation and saving checks."""

    def run_serialization_test(self, instance):
        """`get_config` -> `from_config` gives an equal config; serialisation round-trips."""
        config = instance.get_config()
        revived = instance.__class__.from_config(config)
        assert revived.get_config() == config
        serialized = keras.saving.serialize_keras_object(instance)
        revived = keras.saving.deserialize_keras_object(serialized)
        assert revived.__class__ is instance.__class__
        assert keras.saving.serialize_keras_object(revived) == serialized
        return revived

    def run_layer_test(self, layer, input_data, expected_output_shape=None,
                       tmp_path=None, atol=1e-6):
        """Calls `layer`, checks shapes, config round-trip and `.keras` saving.

        The revived layer gets the original's weights and must give the same
        output; the layer wrapped in a functional model must survive
        `model.save` / `keras.saving.load_model` with equal outputs.
        """
        output = layer(input_data)
        input_shape = keras.tree.map_structure(lambda t: tuple(t.shape), input_data)
        if expected_output_shape is not None:
            assert tuple(output.shape) == tuple(expected_output_shape)
        assert tuple(layer.compute_output_shape(input_shape)) == tuple(output.shape)

        revived = self.run_serialization_test(layer)
        if not revived.built:
            revived.build(input_shape)
        revived.set_weights(layer.get_weights())
        assert_allclose(revived(input_data), output, atol=atol)

        # Symbolic call: the layer must build in a functional model.
        inputs = keras.Input(shape=tuple(input_data.shape[1:]), batch_size=None)
        model = keras.Model(inputs, layer.__class__.from_config(layer.get_config())(inputs))
        model.layers[-1].set_weights(layer.get_weights())
        assert_allclose(model(input_data), output, atol=atol)
        if tmp_path is not None:
            self.run_model_saving_test(model, input_data, tmp_path, atol=atol)
        return output

    def run_model_saving_test(self, model, input_data, tmp_path, atol=1e-6):
        """`.keras` save and load give the same outputs."""
        expected = model(input_data)
        path = os.path.join(str(tmp_path), "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        assert_allclose(restored(input_data), expected, atol=atol)
        return restored


def value_and_grads(fn, *args):
    """`fn(*args)` (a scalar) and its gradients w.r.t. every argument, on any backend."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)
        return np.asarray(value), [np.asarray(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = fn(*tensors)
        grads = tape.gradient(value, tensors)
        return value.numpy(), [g.numpy() for g in grads]
    if backend == "torch":
        import torch

        tensors = [torch.tensor(np.asarray(a), requires_grad=True) for a in args]
        value = fn(*tensors)
        value.backward()
        return value.detach().cpu().numpy(), [t.grad.cpu().numpy() for t in tensors]
    raise NotImplementedError(f"No gradient helper for backend {backend!r}.")
