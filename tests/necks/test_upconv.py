"""The up-convolution neck = the official `deconv_layers` of `msra_resnet.py` and `resnet_dcn.py`.

The DCN variant with the official weights is proven end to end by
`tests/backbones/test_resnet.py` (fixtures resdcn18, resdcn101); here: the
plain variant against PyTorch for every official kernel size, the official
layer indices and initialisations, and round trips.
"""

import keras
import numpy as np
import pytest

from keras_centernet.convert.official import load_official_weights
from keras_centernet.convert.official import official_name
from keras_centernet.layers.batch_normalization import OnePassBatchNormalization
from keras_centernet.layers.deformable_conv2d import DeformableConv2D
from keras_centernet.necks.upconv import OfficialUpsamplingInitializer
from keras_centernet.necks.upconv import UpConvNeck
from keras_centernet.layers.depthwise_conv2d_transpose import bilinear_kernel
from tests.test_case import TestCase
from tests.test_case import to_numpy

# The official `_get_deconv_cfg`: kernel -> (padding, output_padding).
TORCH_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


def torch_msra_deconv_layers(channels_in, filters, kernel_sizes, seed):
    """The official `msra_resnet.py` `_make_deconv_layer` in PyTorch, random weights and statistics."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    layers = []
    for planes, kernel_size in zip(filters, kernel_sizes):
        padding, output_padding = TORCH_PADDING[kernel_size]
        layers += [
            torch.nn.ConvTranspose2d(
                channels_in, planes, kernel_size, stride=2, padding=padding,
                output_padding=output_padding, bias=False,
            ),
            torch.nn.BatchNorm2d(planes, momentum=0.1),
            torch.nn.ReLU(inplace=True),
        ]
        channels_in = planes
    sequential = torch.nn.Sequential(*layers).eval()
    with torch.no_grad():
        for name, tensor in sequential.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            values = torch.rand(tensor.shape, generator=generator)
            if name.endswith("running_var") or name.endswith(".weight") and tensor.ndim == 1:
                tensor.copy_(0.5 + values)
            else:
                tensor.copy_(values - 0.5)
    return sequential


class TestUpConvNeckFunction(TestCase):
    @pytest.mark.multi_backend
    @pytest.mark.parametrize("kernel_sizes", [(4, 4, 4), (4, 3, 2)])
    def test_plain_neck_equals_official_msra_deconv_layers(self, kernel_sizes):
        import torch

        filters = (6, 5, 4)
        official = torch_msra_deconv_layers(7, filters, kernel_sizes, seed=1)
        x = np.random.default_rng(0).normal(size=(2, 3, 5, 7)).astype("float32")
        with torch.no_grad():
            expected = official(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)

        neck = UpConvNeck(filters=filters, kernel_sizes=kernel_sizes, use_dcn=False)
        neck.build([(None, None, None, 7)])
        # The official names `deconv_layers.<i>.<leaf>` find our layers.
        state_dict = {f"deconv_layers.{k}": v for k, v in official.state_dict().items()}
        assert load_official_weights(neck, state_dict) == []
        actual = to_numpy(neck([x]))
        assert actual.shape == expected.shape == (2, 24, 40, 4)
        np.testing.assert_allclose(actual, expected, atol=1e-5)

    @pytest.mark.multi_backend
    @pytest.mark.parametrize("kernel_size", [2, 3, 4])
    def test_transposed_convolution_pads_as_pytorch(self, kernel_size):
        # One input pixel of value 1 writes the kernel at offset 2 * position
        # - padding of the full (un-padded) output; PyTorch keeps rows
        # `padding .. padding + 2H - 1` of it.
        padding, _ = TORCH_PADDING[kernel_size]
        neck = UpConvNeck(filters=(1,), kernel_sizes=(kernel_size,), use_dcn=False)
        neck.build((None, 3, 3, 1))
        transposed = neck.stages[0][0]
        kernel = np.arange(1, kernel_size**2 + 1, dtype="float32").reshape(kernel_size, kernel_size)
        transposed.kernel.assign(kernel[:, :, None, None])
        x = np.zeros((1, 3, 3, 1), "float32")
        x[0, 1, 1, 0] = 1.0
        y = to_numpy(transposed(x))
        for layer in neck.stages[0][1:-2]:  # the crop, where Keras' padding differs
            y = to_numpy(layer(y))
        expected = np.zeros((12, 12), "float32")
        expected[2 : 2 + kernel_size, 2 : 2 + kernel_size] = kernel
        np.testing.assert_array_equal(y[0, :, :, 0], expected[padding : padding + 6, padding : padding + 6])

    def test_takes_the_last_map_of_a_pyramid(self, rng):
        neck = UpConvNeck(filters=(4, 3), kernel_sizes=(4, 4), use_dcn=True)
        coarse = rng.normal(size=(1, 2, 3, 8)).astype("float32")
        fine = rng.normal(size=(1, 8, 12, 5)).astype("float32")
        np.testing.assert_array_equal(to_numpy(neck([fine, coarse])), to_numpy(neck(coarse)))


class TestUpConvNeckStructure(TestCase):
    def test_dcn_layers_follow_the_official_sequential(self):
        neck = UpConvNeck()
        neck.build([(None, 4, 4, 512)])
        layers = [layer for stage in neck.stages for layer in stage]
        kinds = [DeformableConv2D, OnePassBatchNormalization, keras.layers.ReLU,
                 keras.layers.Conv2DTranspose, OnePassBatchNormalization, keras.layers.ReLU] * 3
        assert [type(layer) for layer in layers] == kinds
        assert [layer.name for layer in layers] == [official_name(f"deconv_layers.{i}") for i in range(18)]
        # resnet_dcn: DCN Cin -> C then ConvTranspose C -> C, C = 256, 128, 64.
        shapes = [tuple(layers[i].kernel.shape) for i in (0, 3, 6, 9, 12, 15)]
        assert shapes == [(3, 3, 512, 256), (4, 4, 256, 256), (3, 3, 256, 128),
                          (4, 4, 128, 128), (3, 3, 128, 64), (4, 4, 64, 64)]
        assert all(layers[i].use_bias for i in (0, 6, 12))
        assert not any(layers[i].use_bias for i in (3, 9, 15))
        assert all(layers[i].epsilon == 1e-5 and layers[i].momentum == 0.9 for i in (1, 4, 10, 16))

    def test_plain_layers_follow_the_official_sequential(self):
        neck = UpConvNeck(filters=(256, 256, 256), use_dcn=False)
        neck.build([(None, 4, 4, 512)])
        layers = [layer for stage in neck.stages for layer in stage]
        assert [layer.name for layer in layers] == [official_name(f"deconv_layers.{i}") for i in range(9)]
        assert [tuple(layers[i].kernel.shape) for i in (0, 3, 6)] == [
            (4, 4, 256, 512), (4, 4, 256, 256), (4, 4, 256, 256)
        ]

    def test_official_initialisation(self):
        # resnet_dcn: fill_up_weights. f = 2, c = 0.75: ramp 1 - |i/2 - 0.75| = (0.25, 0.75, 0.75, 0.25).
        ramp = np.array([0.25, 0.75, 0.75, 0.25])
        np.testing.assert_allclose(bilinear_kernel(4), np.outer(ramp, ramp))
        # Kernel 3: f = 2, c = 0.75 again: (0.25, 0.75, 0.75); kernel 2: f = 1, c = 0: (1, 0).
        np.testing.assert_allclose(bilinear_kernel(3), np.outer([0.25, 0.75, 0.75], [0.25, 0.75, 0.75]))
        np.testing.assert_allclose(bilinear_kernel(2), [[1, 0], [0, 0]])
        kernel = to_numpy(OfficialUpsamplingInitializer(seed=1)((4, 4, 8, 6)))
        for channel_in in range(6):
            np.testing.assert_allclose(kernel[:, :, 0, channel_in], np.outer(ramp, ramp), rtol=1e-6)
        # The other output channels keep PyTorch's default, uniform within 1/sqrt(fan_in),
        # fan_in = out channels x kernel area for a (in, out, k, k) weight.
        bound = 1 / np.sqrt(8 * 16)
        assert np.abs(kernel[:, :, 1:]).max() <= bound
        assert abs(kernel[:, :, 1:].std() - bound / np.sqrt(3)) < 0.2 * bound

        dcn_neck = UpConvNeck(filters=(64,), kernel_sizes=(4,))
        dcn_neck.build((None, 2, 2, 32))
        np.testing.assert_allclose(to_numpy(dcn_neck.stages[0][3].kernel)[:, :, 0, 5], np.outer(ramp, ramp))
        # The official DCN starts with zero offsets and mask logits (mask 0.5).
        assert not to_numpy(dcn_neck.stages[0][0].offset_kernel).any()
        # msra_resnet `init_weights`: transposed convolutions normal(0, 0.001).
        plain_neck = UpConvNeck(filters=(256,), kernel_sizes=(4,), use_dcn=False)
        plain_neck.build((None, 2, 2, 256))
        plain = to_numpy(plain_neck.stages[0][0].kernel)
        assert abs(plain.std() - 0.001) < 1e-4 and abs(plain.mean()) < 1e-5

    @pytest.mark.multi_backend
    def test_layer_round_trip(self, rng, tmp_path):
        neck = UpConvNeck(filters=(8, 4), kernel_sizes=(4, 3), use_dcn=True)
        x = rng.normal(size=(2, 3, 5, 6)).astype("float32")
        self.run_layer_test(neck, x, expected_output_shape=(2, 12, 20, 4), tmp_path=tmp_path, atol=1e-5)
        revived = self.run_serialization_test(neck)
        assert revived.filters == (8, 4) and revived.kernel_sizes == (4, 3) and revived.use_dcn

    @pytest.mark.multi_backend
    def test_compute_output_shape(self):
        neck = UpConvNeck()
        assert neck.compute_output_shape([(2, 16, 16, 64), (2, 4, 6, 512)]) == (2, 32, 48, 64)
        assert neck.compute_output_shape((None, None, 5, 512)) == (None, None, 40, 64)

    @pytest.mark.multi_backend
    @pytest.mark.parametrize(
        "arguments, message",
        [
            ({"filters": ()}, "filters"),
            ({"filters": (256, 0, 64)}, "filters"),
            ({"filters": (256, 128.0, 64)}, "filters"),
            ({"kernel_sizes": (4, 4)}, "kernel_sizes"),
            ({"kernel_sizes": (4, 5, 4)}, "kernel_sizes"),
            ({"use_dcn": "yes"}, "use_dcn"),
        ],
    )
    def test_rejects_bad_arguments(self, arguments, message):
        with pytest.raises(ValueError, match=message):
            UpConvNeck(**arguments)

    @pytest.mark.multi_backend
    def test_rejects_maps_of_unknown_channels(self):
        with pytest.raises(ValueError, match="known"):
            UpConvNeck().build((None, 4, 4, None))
