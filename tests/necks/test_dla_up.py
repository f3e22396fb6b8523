"""DLA's IDA-up neck and its depthwise transposed convolution (official `pose_dla_dcn.py`)."""

import numpy as np
import pytest
import torch

import keras_centernet as kc
from keras_centernet.convert.official import official_name
from keras_centernet.layers.depthwise_conv2d_transpose import BilinearUpsamplingInitializer
from keras_centernet.layers.depthwise_conv2d_transpose import DepthwiseConv2DTranspose
from keras_centernet.layers.depthwise_conv2d_transpose import bilinear_kernel
from keras_centernet.necks.dla_up import DLAUpNeck
from keras_centernet.necks.dla_up import IDAUp
from tests.official_fixtures import load_manifest
from tests.necks.common import check_neck_saving
from tests.necks.common import pyramid
from tests.test_case import TestCase
from tests.test_case import to_numpy


def torch_depthwise_transpose(x_nhwc, weight, factor):
    """The official up-sampling: `ConvTranspose2d(C, C, 2f, stride=f, padding=f // 2, groups=C)`."""
    channels = x_nhwc.shape[-1]
    layer = torch.nn.ConvTranspose2d(
        channels, channels, 2 * factor, stride=factor, padding=factor // 2,
        output_padding=0, groups=channels, bias=False,
    )
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        y = layer(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)))
    return y.numpy().transpose(0, 2, 3, 1)


class TestDepthwiseConv2DTranspose(TestCase):
    @pytest.mark.multi_backend
    @pytest.mark.parametrize("factor", [2, 4])
    @pytest.mark.parametrize("height, width", [(5, 7), (4, 6), (1, 1)])
    def test_equals_torch_grouped_transposed_conv(self, rng, factor, height, width):
        x = rng.normal(size=(2, height, width, 3)).astype("float32")
        weight = rng.normal(size=(3, 1, 2 * factor, 2 * factor)).astype("float32")
        expected = torch_depthwise_transpose(x, weight, factor)
        # PyTorch's size (n - 1) * f - 2 * (f // 2) + 2f is f * n for even f.
        assert expected.shape == (2, factor * height, factor * width, 3)
        layer = DepthwiseConv2DTranspose(factor)
        layer.build(x.shape)
        variable, transform = layer.official_weight_targets("weight")
        variable.assign(transform(weight))
        np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5)

    def test_bilinear_kernel_by_hand(self):
        # f = 2, c = (2f - 1 - f % 2) / 2f = 0.75: ramp 1 - |i/2 - 0.75|.
        ramp = np.array([0.25, 0.75, 0.75, 0.25])
        np.testing.assert_allclose(bilinear_kernel(4), np.outer(ramp, ramp))
        # f = 4, c = 0.875: ramp 1 - |i/4 - 0.875|.
        ramp = np.array([1, 3, 5, 7, 7, 5, 3, 1]) / 8
        np.testing.assert_allclose(bilinear_kernel(8), np.outer(ramp, ramp))
        kernel = to_numpy(BilinearUpsamplingInitializer()((4, 4, 5, 1)))
        for channel in range(5):
            np.testing.assert_allclose(kernel[:, :, channel, 0], bilinear_kernel(4))

    @pytest.mark.multi_backend
    def test_default_initialisation_upsamples_bilinearly(self):
        # A linear ramp stays linear away from the zero-padded borders.
        ramp = np.arange(6, dtype="float32")
        x = np.broadcast_to(ramp[None, None, :, None], (1, 6, 6, 2))
        y = to_numpy(DepthwiseConv2DTranspose(2)(x))[0, 2:-2, 2:-2, 0]
        expected = (np.arange(12, dtype="float32") - 0.5) / 2
        np.testing.assert_allclose(y, np.broadcast_to(expected[2:-2], y.shape), atol=1e-6)

    def test_layer_round_trips(self, rng, tmp_path):
        x = rng.normal(size=(2, 3, 5, 4)).astype("float32")
        layer = DepthwiseConv2DTranspose(4, kernel_initializer="glorot_uniform", name="up")
        self.run_layer_test(layer, x, expected_output_shape=(2, 12, 20, 4), tmp_path=tmp_path)

    @pytest.mark.multi_backend
    def test_rejects_bad_arguments(self):
        for factor in (0, 1, 3, 2.0, True):
            with pytest.raises(ValueError, match="factor"):
                DepthwiseConv2DTranspose(factor)
        layer = DepthwiseConv2DTranspose(2)
        with pytest.raises(ValueError, match="channel dimension"):
            layer.build((1, 4, 4, None))
        with pytest.raises(KeyError, match="bias"):
            layer.build((1, 4, 4, 3))
            layer.official_weight_targets("bias")


class TestIDAUp(TestCase):
    @pytest.mark.multi_backend
    def test_aggregates_into_the_first_stride(self, rng):
        ida = IDAUp(8, channels=(8, 12, 16), factors=(1, 2, 4), name="ida_up")
        maps = ida(pyramid(rng, (8, 12, 16)))
        assert [tuple(m.shape) for m in maps] == [(1, 16, 16, 8)] * 3
        names = {layer.name for layer in ida._flatten_layers(include_self=False)}
        assert {"ida_up-proj_1-conv", "ida_up-proj_2-actf-0", "ida_up-up_2", "ida_up-node_1-conv"} <= names
        assert ida.upsamplings[1].factor == 4

    @pytest.mark.multi_backend
    def test_rejects_bad_arguments(self, rng):
        with pytest.raises(ValueError, match="same length"):
            IDAUp(8, channels=(8, 12), factors=(1, 2, 4))
        with pytest.raises(ValueError, match="first map"):
            IDAUp(8, channels=(12, 8), factors=(1, 2))
        with pytest.raises(ValueError, match="expects 2 maps"):
            IDAUp(8, channels=(8, 12), factors=(1, 2))(pyramid(rng, (8, 12, 12)))


class TestDLAUpNeck(TestCase):
    def test_layers_are_the_official_modules(self):
        """The layers holding weights are exactly the official `dla_up` and `ida_up` modules."""
        neck = DLAUpNeck()
        neck.build([(None, None, None, c) for c in (16, 32, 64, 128, 256, 512)])
        ours = {
            layer.name
            for layer in neck._flatten_layers(include_self=False, recursive=True)
            if layer.weights and not isinstance(layer, IDAUp)
        }
        modules = set()
        for name, _, _ in load_manifest("dla34")["params"]:
            if name.startswith(("dla_up.", "ida_up.")):
                module = name.rsplit(".", 1)[0]
                modules.add(module.replace(".conv_offset_mask", ""))
        assert ours == {official_name(module) for module in modules}
        # The official channels: ida_0 = IDAUp(256, [256, 512], [1, 2]), ...,
        # ida_up = IDAUp(64, [64, 128, 256], [1, 2, 4]).
        assert [(ida.filters, ida.channels, ida.factors) for ida in neck.dla_up] == [
            (256, (256, 512), (1, 2)),
            (128, (128, 256, 256), (1, 2, 2)),
            (64, (64, 128, 128, 128), (1, 2, 2, 2)),
        ]
        assert (neck.ida_up.filters, neck.ida_up.channels, neck.ida_up.factors) == (
            64, (64, 128, 256), (1, 2, 4)
        )

    @pytest.mark.multi_backend
    def test_one_stride4_map(self, rng):
        neck = DLAUpNeck(channels=(8, 12, 16, 20))
        # Six levels as the DLA backbone gives; the last four are used.
        features = pyramid(rng, (2, 4), size=64) + pyramid(rng, (8, 12, 16, 20), size=16)
        y = neck(features)
        assert tuple(y.shape) == (1, 16, 16, 8)
        assert neck.compute_output_shape([f.shape for f in features]) == (1, 16, 16, 8)

    @pytest.mark.multi_backend
    def test_serialization(self):
        revived = self.run_serialization_test(DLAUpNeck(channels=(8, 12, 16)))
        assert revived.channels == (8, 12, 16)

    def test_saving_round_trip(self, rng, tmp_path):
        channels = (8, 12, 16)
        # Non-trivial DCN offsets, so that every weight matters.
        check_neck_saving(self, DLAUpNeck(channels=channels), channels, rng, tmp_path,
                          randomize=("offset", lambda shape: rng.normal(0, 0.1, size=shape)))

    @pytest.mark.multi_backend
    def test_rejects_bad_arguments(self, rng):
        with pytest.raises(ValueError, match="at least 3"):
            DLAUpNeck(channels=(8, 16))
        with pytest.raises(ValueError, match="positive ints"):
            DLAUpNeck(channels=(8, 16, 0))
        with pytest.raises(ValueError, match="at least 3 feature maps"):
            DLAUpNeck(channels=(8, 12, 16))(pyramid(rng, (8, 12)))

    def test_centernet_preset_has_this_neck(self):
        model = kc.CenterNet.from_preset("dla34", num_classes=2, head_channels=8)
        assert isinstance(model.neck, DLAUpNeck) and model.neck.channels == (64, 128, 256, 512)
        raw = model(np.zeros((1, 64, 96, 3), "float32"))
        assert tuple(raw["heatmap"].shape) == (1, 16, 24, 2)
