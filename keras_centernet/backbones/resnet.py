"""ResNet backbones of CenterNet (official `resnet_dcn.py` and `msra_resnet.py`), channels-last.

Layers are named by the official module paths (`conv1`, `layer1-0-conv1`,
`layer2-0-downsample-0`, ...; `-` for `.`), so official checkpoints load by
name with `keras_centernet.convert`.
"""

import keras

from keras_centernet.layers.official_layers import GraphBuilder
from keras_centernet.necks.upconv import UpConvNeck
from keras_centernet.backbones.base import Backbone


# depth -> (block, blocks per stage), as the official `resnet_spec`.
RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


@keras.saving.register_keras_serializable(package="keras_centernet")
class ResNetBackbone(Backbone):
    """ResNet-18/34/50/101/152 returning its feature pyramid (strides 4, 8, 16, 32).

    The ResNet of the official CenterNet (`resnet_dcn.py`, `msra_resnet.py`;
    torchvision's v1) without its classifier: a 7x7/2 convolution (`conv1`,
    `bn1`, `relu`), a 3x3/2 max pool (`maxpool`), then four stages
    (`layer1` .. `layer4`) of 64, 128, 256 and 512 planes. ResNet-18/34 use
    basic blocks (two 3x3 convolutions), ResNet-50/101/152 bottlenecks
    (1x1, 3x3, 1x1 with 4x expansion; the stride on the 3x3 convolution).
    The first block of a stage that changes stride or width projects its
    shortcut with a 1x1 strided convolution and BN (`downsample.0/1`).
    Convolutions with stride 2 and the max pool pad symmetrically as
    PyTorch does. BatchNorm: epsilon 1e-5, momentum 0.9 (PyTorch's 0.1).

    Every layer is named by its official module path (`official_name`):
    `conv1`, `bn1`, `layer1-0-conv1`, `layer2-0-downsample-0`,
    `layer4-2-bn3`, ..., so official checkpoints load by name with
    `keras_centernet.convert`. The outputs are those of the last block of
    each stage (`layer<k>-<n>-relu`), the official `layer1` .. `layer4`.

    Inputs are normalised images `(batch, height, width, 3)`; height and
    width multiples of 32 give maps of exactly 1/4 .. 1/32 of them.

    Args:
        depth: int. 18, 34, 50, 101 or 152. Defaults to 18.
        width: int. Planes of the stem and the first stage; each later stage
            doubles them. Defaults to 64 (the paper's ResNets; smaller widths
            make fast CPU models, such as the `resnet18_small` preset).
        dtype: string or `keras.DTypePolicy`. The dtype policy of the layers.
            Defaults to `None` (the global policy).

    Example:

    >>> import numpy as np
    >>> backbone = ResNetBackbone(depth=18)
    >>> [tuple(f.shape) for f in backbone(np.zeros((1, 64, 64, 3), "float32"))]
    [(1, 16, 16, 64), (1, 8, 8, 128), (1, 4, 4, 256), (1, 2, 2, 512)]

    Reference:
        He, Zhang, Ren and Sun, "Deep Residual Learning for Image
        Recognition", CVPR 2016.
    """

    def __init__(self, depth=18, width=64, dtype=None, **kwargs):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth not in RESNET_SPECS:
            raise ValueError(f"`depth` must be one of {sorted(RESNET_SPECS)}; received {depth!r}.")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"`width` must be a positive int; received {width!r}.")
        block, blocks = RESNET_SPECS[depth]
        self._builder = GraphBuilder(dtype)

        # === Functional Model ===
        images = keras.Input((None, None, 3), name="images")
        x = self._conv(images, width, 7, 2, "conv1")
        x = self._batch_norm(x, "bn1")
        x = self._relu(x, "relu")
        # MaxPool2d(3, 2, padding=1) pads with -inf; after a ReLU every value
        # is >= 0, so zero padding gives the same maxima.
        x = keras.layers.ZeroPadding2D(1, dtype=dtype, name="maxpool-pad")(x)
        x = keras.layers.MaxPooling2D(3, 2, dtype=dtype, name="maxpool")(x)
        features = []
        channels_in = width
        stage_planes = (width, 2 * width, 4 * width, 8 * width)
        for stage, (planes, count) in enumerate(zip(stage_planes, blocks)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                name = f"layer{stage + 1}.{index}"
                if block == "basic":
                    x = self._basic_block(x, channels_in, planes, stride, name)
                    channels_in = planes
                else:
                    x = self._bottleneck(x, channels_in, planes, stride, name)
                    channels_in = planes * 4
            features.append(x)
        super().__init__(inputs=images, outputs=features, **kwargs)

        # === Config ===
        self._keep_dtype(dtype)
        self.depth = depth
        self.width = width

    # The official argument order of `conv3x3(in, out, stride)`, on the shared builder.
    def _conv(self, x, filters, kernel_size, strides, name):
        return self._builder.conv(x, name, filters, kernel_size, strides)

    def _batch_norm(self, x, name):
        return self._builder.batch_norm(x, name)

    def _relu(self, x, name):
        return self._builder.relu(x, name)

    def _shortcut(self, x, channels_in, channels_out, stride, name):
        if stride == 1 and channels_in == channels_out:
            return x
        x = self._conv(x, channels_out, 1, stride, f"{name}.downsample.0")
        return self._batch_norm(x, f"{name}.downsample.1")

    def _basic_block(self, x, channels_in, planes, stride, name):
        shortcut = self._shortcut(x, channels_in, planes, stride, name)
        y = self._conv(x, planes, 3, stride, f"{name}.conv1")
        y = self._relu(self._batch_norm(y, f"{name}.bn1"), f"{name}.relu1")
        y = self._batch_norm(self._conv(y, planes, 3, 1, f"{name}.conv2"), f"{name}.bn2")
        return self._builder.add_relu([y, shortcut], f"{name}.add", f"{name}.relu")

    def _bottleneck(self, x, channels_in, planes, stride, name):
        shortcut = self._shortcut(x, channels_in, planes * 4, stride, name)
        y = self._relu(self._batch_norm(self._conv(x, planes, 1, 1, f"{name}.conv1"), f"{name}.bn1"),
                       f"{name}.relu1")
        y = self._relu(self._batch_norm(self._conv(y, planes, 3, stride, f"{name}.conv2"), f"{name}.bn2"),
                       f"{name}.relu2")
        y = self._batch_norm(self._conv(y, planes * 4, 1, 1, f"{name}.conv3"), f"{name}.bn3")
        return self._builder.add_relu([y, shortcut], f"{name}.add", f"{name}.relu")

    def _own_config(self):
        return {
            "depth": self.depth,
            "width": self.width,
        }


def _preset(depth, use_dcn, filters, description, width=64):
    return {
        "backbone": lambda: ResNetBackbone(depth=depth, width=width),
        "neck": lambda: UpConvNeck(filters=filters, kernel_sizes=(4, 4, 4), use_dcn=use_dcn),
        # The official `opts.py`: head_conv 64 for every architecture but DLA.
        "head_channels": 64,
        "size_divisor": 32,
        "description": description,
    }


PRESETS = {
    "resnet18": _preset(
        18, False, (256, 256, 256),
        "ResNet-18 with three plain 4x4 up-convolutions of 256 channels (official "
        "`msra_resnet.py`, `--arch res_18`).",
    ),
    "resnet18_small": _preset(
        18, False, (128, 64, 64),
        "ResNet-18 at half width (32 to 256 planes) with three plain 4x4 up-convolutions of "
        "128, 64, 64 channels: 3.6M parameters, not in the paper; a fast CPU model that learns "
        "from scratch in minutes (the demo's).",
        width=32,
    ),
    "resnet18_dcn": _preset(
        18, True, (256, 128, 64),
        "ResNet-18 with three DCN + 4x4 up-convolution stages of 256, 128, 64 channels "
        "(official `resnet_dcn.py`, `--arch resdcn_18`); 28.1 COCO AP in the paper "
        "(val2017, no test-time augmentation).",
    ),
    "resnet34_dcn": _preset(
        34, True, (256, 128, 64),
        "ResNet-34 with DCN up-convolutions (official `resnet_dcn.py`, `--arch resdcn_34`).",
    ),
    "resnet50_dcn": _preset(
        50, True, (256, 128, 64),
        "ResNet-50 with DCN up-convolutions (official `resnet_dcn.py`, `--arch resdcn_50`).",
    ),
    "resnet101_dcn": _preset(
        101, True, (256, 128, 64),
        "ResNet-101 with three DCN + 4x4 up-convolution stages (official `resnet_dcn.py`, "
        "`--arch resdcn_101`); 34.6 COCO AP in the paper (val2017, no test-time augmentation).",
    ),
}
