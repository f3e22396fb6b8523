"""`ChannelPaddedConv2D` computes `Conv2D`'s values and gradients, on 8 channels under JAX."""

import keras
import numpy as np
import pytest

from keras_centernet.layers import ChannelPaddedConv2D
from tests.test_case import TestCase
from tests.test_case import to_numpy
from tests.test_case import value_and_grads


def conv_pair(rng, **kwargs):
    padded, plain = ChannelPaddedConv2D(5, 7, **kwargs), keras.layers.Conv2D(5, 7, **kwargs)
    for layer in (padded, plain):
        layer.build((None, None, None, 3))
    plain.set_weights([rng.normal(size=w.shape).astype("float32") for w in plain.get_weights()])
    padded.set_weights(plain.get_weights())
    return padded, plain


class TestChannelPaddedConv2D(TestCase):
    @pytest.mark.multi_backend
    @pytest.mark.parametrize("strides,padding", [(2, "valid"), (1, "same")])
    def test_values_and_gradients_equal_conv2d(self, rng, strides, padding):
        padded, plain = conv_pair(rng, strides=strides, padding=padding, use_bias=True)
        assert tuple(padded.kernel.shape) == (7, 7, 3, 5)
        x = rng.normal(size=(2, 17, 15, 3)).astype("float32")
        cotangent = rng.normal(size=tuple(plain.compute_output_shape(x.shape))).astype("float32")
        results = []
        for layer in (padded, plain):
            def loss(x, kernel, bias, layer=layer):
                with keras.StatelessScope(state_mapping=[(layer.kernel, kernel), (layer.bias, bias)]):
                    return keras.ops.sum(layer(x) * keras.ops.convert_to_tensor(cotangent))
            results.append(value_and_grads(loss, x, *to_numpy([layer.kernel, layer.bias])))
        (value, grads), (plain_value, plain_grads) = results
        np.testing.assert_allclose(value, plain_value, rtol=1e-5)
        for grad, plain_grad in zip(grads, plain_grads):
            assert grad.shape == plain_grad.shape and np.abs(plain_grad).max() > 0
            np.testing.assert_allclose(grad, plain_grad, rtol=1e-4, atol=1e-4)

    @pytest.mark.jax
    @pytest.mark.skipif(keras.backend.backend() != "jax", reason="the padding applies under JAX only")
    def test_jax_convolves_eight_channels(self, rng):
        import jax

        padded, _ = conv_pair(rng, strides=2)
        x = rng.normal(size=(1, 16, 16, 3)).astype("float32")
        jaxpr = jax.make_jaxpr(lambda x: padded(x))(x)
        convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
        assert len(convs) == 1
        assert [tuple(v.aval.shape) for v in convs[0].invars] == [(1, 16, 16, 8), (7, 7, 8, 5)]

    def test_config_and_saving(self, rng, tmp_path):
        layer = ChannelPaddedConv2D(4, 3, padding="same", channel_multiple=4)
        revived = self.run_layer_test(layer, rng.normal(size=(2, 8, 8, 3)).astype("float32"), tmp_path=tmp_path)
        assert revived.shape == (2, 8, 8, 4)
        assert ChannelPaddedConv2D.from_config(layer.get_config()).channel_multiple == 4
        with pytest.raises(ValueError, match="channel_multiple"):
            ChannelPaddedConv2D(4, 3, channel_multiple=0)

    def test_official_stems_use_it(self):
        from keras_centernet.backbones.hourglass import HourglassBackbone

        backbone = HourglassBackbone(num_stacks=1, dims=(8, 8), num_blocks=(1, 1), stem_channels=8)
        convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
        assert type(convs[0]) is ChannelPaddedConv2D and convs[0].name == "pre-0-conv"
        assert all(type(layer) is keras.layers.Conv2D for layer in convs[1:])
