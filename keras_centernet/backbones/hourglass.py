"""Stacked hourglass networks (CornerNet's Hourglass-104 as used by CenterNet; Hourglass-52)."""

import keras

from keras_centernet.layers.official_layers import GraphBuilder
from keras_centernet.convert.official import official_name
from keras_centernet.backbones.base import Backbone


@keras.saving.register_keras_serializable(package="keras_centernet")
class HourglassBackbone(Backbone):
    """Stacked hourglass network: one stride-4 feature map per stack.

    The official CenterNet `large_hourglass.py` (after CornerNet) without its
    heads. A stem (`pre`: 7x7 convolution, stride 2, then a residual block,
    stride 2) brings the image to stride 4; each stack is an hourglass
    (`kps.<s>`, a recursive `kp_module` of order `len(dims) - 1`) followed by
    a 3x3 convolution (`cnvs.<s>`) whose output is that stack's feature map.
    Between stacks, `inters_.<s>` (1x1 conv + BN of the previous input) and
    `cnvs_.<s>` (1x1 conv + BN of the stack's output) are summed, passed
    through a ReLU and a residual block (`inters.<s>`) to form the next
    stack's input.

    One `kp_module` level with `dims[0] = c`, `dims[1] = d` and
    `num_blocks[0] = m`: `up1` = m residual blocks (c -> c) at full
    resolution; `low1` = a residual block c -> d with stride 2 then m - 1
    blocks d -> d (the official `max1` pooling is the identity: the stride-2
    convolution downsamples); `low2` = the next level, or `num_blocks[-1]`
    blocks d -> d innermost; `low3` = m - 1 blocks d -> d then one d -> c;
    the output is `up1 + upsample_nearest_x2(low3)`. A residual block is
    3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus a skip (1x1 conv + BN
    when the stride or channels change, else the identity), then ReLU.

    Every layer that holds weights is named by its official module path
    (`pre.0.conv`, `kps.0.up1.0.conv1`, `kps.0.low2.low2.low1.0.skip.0`,
    `cnvs.1.bn`, `inters_.0.1`, ...), so `keras_centernet.convert` loads
    official checkpoints by name. The feature maps of the official forward
    hooks are the outputs of the layers `pre.1.relu`, `kps.<s>.merge`,
    `cnvs.<s>.relu` and `inters.<s>.relu`.

    Inputs are normalised images `(batch, height, width, 3)` with height and
    width multiples of `4 * 2 ** (len(dims) - 1)` (128 for the paper's
    hourglasses).

    Args:
        num_stacks: int. Number of stacked hourglasses. Defaults to 2
            (Hourglass-104); 1 gives Hourglass-52.
        dims: sequence of ints. Channels of each hourglass level, outermost
            first; `len(dims) - 1` is the number of downsamplings inside
            each hourglass. Defaults to `(256, 256, 384, 384, 384, 512)`.
        num_blocks: sequence of ints, as long as `dims`. Residual blocks per
            level (the last entry: blocks of the innermost level). Defaults
            to `(2, 2, 2, 2, 2, 4)`.
        stem_channels: int. Channels of the stem's 7x7 convolution. Defaults
            to 128.
        output_channels: int. Channels of each stack's output map (the
            official `cnv_dim`). Defaults to 256.
        dtype: string or `keras.DTypePolicy`. The dtype policy of the layers.
            Defaults to `None` (the global policy).

    Example:

    >>> import numpy as np
    >>> backbone = HourglassBackbone(num_stacks=2, dims=(16, 16, 24), num_blocks=(1, 1, 1))
    >>> features = backbone(np.zeros((1, 64, 64, 3), "float32"))
    >>> [tuple(f.shape) for f in features]
    [(1, 16, 16, 256), (1, 16, 16, 256)]

    Reference:
        Law and Deng, "CornerNet: Detecting Objects as Paired Keypoints",
        ECCV 2018 (the network); Newell, Yang and Deng, "Stacked Hourglass
        Networks for Human Pose Estimation", ECCV 2016; Duan et al.,
        "CenterNet: Keypoint Triplets for Object Detection", ICCV 2019
        (Hourglass-52).
    """

    def __init__(
        self,
        num_stacks=2,
        dims=(256, 256, 384, 384, 384, 512),
        num_blocks=(2, 2, 2, 2, 2, 4),
        stem_channels=128,
        output_channels=256,
        dtype=None,
        **kwargs,
    ):
        _check_positive_int("num_stacks", num_stacks)
        _check_positive_int("stem_channels", stem_channels)
        _check_positive_int("output_channels", output_channels)
        dims, num_blocks = tuple(dims), tuple(num_blocks)
        if len(dims) < 2 or len(dims) != len(num_blocks):
            raise ValueError(
                "`dims` and `num_blocks` must have the same length, at least 2 (one "
                f"per hourglass level); received dims={dims}, num_blocks={num_blocks}."
            )
        for name, values in (("dims", dims), ("num_blocks", num_blocks)):
            if not all(isinstance(v, int) and v >= 1 for v in values):
                raise ValueError(f"`{name}` must hold positive ints; received {values}.")
        builder = _GraphBuilder(dtype)

        # === Functional Model ===
        images = keras.Input((None, None, 3), name="images")
        x = builder.convolution(images, "pre.0", stem_channels, kernel_size=7, strides=2)
        inter = builder.residual(x, "pre.1", dims[0], strides=2)
        features = []
        for stack in range(num_stacks):
            hourglass = builder.hourglass(inter, f"kps.{stack}", dims, num_blocks)
            features.append(
                builder.convolution(hourglass, f"cnvs.{stack}", output_channels, kernel_size=3)
            )
            if stack < num_stacks - 1:
                inter = builder.add_relu(
                    [
                        builder.conv_bn(inter, f"inters_.{stack}", dims[0]),
                        builder.conv_bn(features[-1], f"cnvs_.{stack}", dims[0]),
                    ],
                    # The sum and the official (shared, weightless) `relu` of `exkp`.
                    f"inters_merge.{stack}",
                    f"inters_merge.{stack}.relu",
                )
                inter = builder.residual(inter, f"inters.{stack}", dims[0])
        super().__init__(inputs=images, outputs=features, **kwargs)

        # === Config ===
        self._keep_dtype(dtype)
        self.num_stacks = num_stacks
        self.dims = dims
        self.num_blocks = num_blocks
        self.stem_channels = stem_channels
        self.output_channels = output_channels

    def _own_config(self):
        return {
            "num_stacks": self.num_stacks,
            "dims": list(self.dims),
            "num_blocks": list(self.num_blocks),
            "stem_channels": self.stem_channels,
            "output_channels": self.output_channels,
        }


def _check_positive_int(name, value):
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; received {value!r}.")


class _GraphBuilder(GraphBuilder):
    """Creates the hourglass' layers, named by official module path, on symbolic tensors."""

    def conv_bn(self, x, name, filters, strides=1):
        """The official `nn.Sequential(Conv2d 1x1 no bias, BatchNorm2d)` (`.0`, `.1`)."""
        x = self.conv(x, f"{name}.0", filters, kernel_size=1, strides=strides)
        return self.batch_norm(x, f"{name}.1")

    def convolution(self, x, name, filters, kernel_size, strides=1):
        """The official `convolution`: conv (no bias) -> BN -> ReLU."""
        x = self.conv(x, f"{name}.conv", filters, kernel_size, strides=strides)
        x = self.batch_norm(x, f"{name}.bn")
        return self.relu(x, f"{name}.relu")

    def residual(self, x, name, filters, strides=1):
        """The official `residual` block."""
        y = self.conv(x, f"{name}.conv1", filters, 3, strides=strides)
        y = self.relu(self.batch_norm(y, f"{name}.bn1"), f"{name}.relu1")
        y = self.batch_norm(self.conv(y, f"{name}.conv2", filters, 3), f"{name}.bn2")
        if strides != 1 or x.shape[-1] != filters:
            x = self.conv_bn(x, f"{name}.skip", filters, strides=strides)
        return self.add_relu([y, x], f"{name}.add", f"{name}.relu")

    def residuals(self, x, name, channels, strides=1):
        """An `nn.Sequential` of residual blocks, block `i` giving `channels[i]`."""
        for index, filters in enumerate(channels):
            x = self.residual(x, f"{name}.{index}", filters, strides=strides if index == 0 else 1)
        return x

    def hourglass(self, x, name, dims, num_blocks):
        """The official `kp_module` of order `len(dims) - 1`."""
        current, inner = dims[0], dims[1]
        count = num_blocks[0]
        up1 = self.residuals(x, f"{name}.up1", [current] * count)
        # `max1` is the identity: `low1` downsamples with its first block's stride.
        low1 = self.residuals(x, f"{name}.low1", [inner] * count, strides=2)
        if len(dims) > 2:
            low2 = self.hourglass(low1, f"{name}.low2", dims[1:], num_blocks[1:])
        else:
            low2 = self.residuals(low1, f"{name}.low2", [inner] * num_blocks[1])
        low3 = self.residuals(low2, f"{name}.low3", [inner] * (count - 1) + [current])
        up2 = keras.layers.UpSampling2D(
            2, interpolation="nearest", dtype=self.dtype, name=official_name(f"{name}.up2")
        )(low3)
        return keras.layers.Add(dtype=self.dtype, name=official_name(f"{name}.merge"))([up1, up2])


def _hourglass104():
    return HourglassBackbone(num_stacks=2)


def _hourglass52():
    return HourglassBackbone(num_stacks=1)


PRESETS = {
    "hourglass104": {
        "backbone": _hourglass104,
        "neck": None,
        # The official hourglass heads ignore `head_conv`: their hidden width
        # is the hourglass width, 256.
        "head_channels": 256,
        # Stride 4 of the stem times 2**5 inside each hourglass.
        "size_divisor": 128,
        "description": (
            "Hourglass-104 (two stacks, CornerNet's backbone; official "
            "`large_hourglass.py`), heads on both stacks; 40.3 COCO AP in the paper."
        ),
    },
    "hourglass52": {
        "backbone": _hourglass52,
        "neck": None,
        "head_channels": 256,
        "size_divisor": 128,
        "description": (
            "Hourglass-52 (one stack of the same hourglass; the backbone of "
            "Keypoint-Triplets CenterNet-52, without its cascade corner/center pooling)."
        ),
    },
}
