"""DLA-34 (Deep Layer Aggregation), the backbone of CenterNet's `pose_dla_dcn.py`, channels-last.

Layers are named by the official module paths (`base-base_layer-0`,
`base-level3-tree1-tree1-conv1`, `base-level5-root-conv`, ...; `-` for `.`),
so official checkpoints load by name with `keras_centernet.convert`.
"""

import keras

from keras_centernet.layers.official_layers import GraphBuilder
from keras_centernet.layers.official_layers import batch_normalization
from keras_centernet.convert.official import official_name
from keras_centernet.necks.dla_up import DLAUpNeck
from keras_centernet.backbones.base import Backbone



@keras.saving.register_keras_serializable(package="keras_centernet")
class DLABackbone(Backbone):
    """Deep Layer Aggregation with basic blocks: the output of every level (strides 1 to 32).

    The official `DLA` of `pose_dla_dcn.py` without its ImageNet classifier:
    a 7x7 stem (`base_layer`), two plain levels (`level0`; `level1`, stride
    2), then four hierarchical `Tree`s (`level2`..`level5`, stride 2 each).
    A tree of depth 1 runs two basic blocks (`tree1` with the stride and a
    residual from the tree's input max-pooled 2x2 and, when the channels
    change, projected by a 1x1 conv + BN; `tree2`), and its `Root`
    concatenates the second block's output, the first's and the children
    (the pooled input for `level_root` trees, the first sub-tree's output
    for the deeper trees), then 1x1 conv + BN + ReLU. A tree of depth 2 is
    two such trees, the second aggregating at its root.

    As in the official code, a tree of depth 2 also owns a projection
    (`base.level3.project`, `base.level4.project`) whose output its first
    sub-tree ignores (it projects again itself): those layers are kept
    outside the graph (`unused_projections`), so that checkpoints load and
    parameter counts match, and they are not computed.

    Inputs are normalised images `(batch, height, width, 3)`; the outputs
    are a list of six maps of `channels[i]` channels at stride `2 ** i`
    (the official `DLA.forward`'s `y`). Height and width should be multiples
    of 32: the max pools drop odd rows and columns as PyTorch's do.

    Args:
        levels: sequence of 6 ints. Convolutions of `level0` and `level1`,
            then the depth of the trees `level2`..`level5`. Defaults to
            `(1, 1, 1, 2, 2, 1)` (DLA-34).
        channels: sequence of 6 ints. Channels of each level. Defaults to
            `(16, 32, 64, 128, 256, 512)` (DLA-34).
        dtype: string or `keras.DTypePolicy`. The dtype policy of the
            layers. Defaults to `None` (the global policy).

    Example:

    >>> import numpy as np
    >>> backbone = DLABackbone()
    >>> [tuple(f.shape) for f in backbone(np.zeros((1, 64, 64, 3), "float32"))]
    [(1, 64, 64, 16), (1, 32, 32, 32), (1, 16, 16, 64), (1, 8, 8, 128), (1, 4, 4, 256), (1, 2, 2, 512)]

    Reference:
        Yu, Wang, Shelhamer and Darrell, "Deep Layer Aggregation", CVPR 2018;
        Zhou, Wang and Krähenbühl, "Objects as Points", arXiv 2019.
    """

    def __init__(
        self,
        levels=(1, 1, 1, 2, 2, 1),
        channels=(16, 32, 64, 128, 256, 512),
        dtype=None,
        **kwargs,
    ):
        levels, channels = tuple(levels), tuple(channels)
        for name, values in (("levels", levels), ("channels", channels)):
            if len(values) != 6 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values
            ):
                raise ValueError(f"`{name}` must be 6 positive ints; received {values}.")
        builder = _GraphBuilder(dtype)

        # === Functional Model ===
        images = keras.Input((None, None, 3), name="images")
        x = builder.conv_bn_relu(images, "base.base_layer", channels[0], kernel_size=7)
        features = []
        x = builder.conv_level(x, "base.level0", channels[0], levels[0])
        features.append(x)
        x = builder.conv_level(x, "base.level1", channels[1], levels[1], strides=2)
        features.append(x)
        for level in range(2, 6):
            x = builder.tree(
                x, f"base.level{level}", levels[level], channels[level],
                strides=2, level_root=level > 2,
            )
            features.append(x)
        super().__init__(inputs=images, outputs=features, **kwargs)

        # === Layers outside the graph ===
        self.unused_projections = builder.unused_projections

        # === Config ===
        self._keep_dtype(dtype)
        self.levels = levels
        self.channels = channels

    def _own_config(self):
        return {
            "levels": list(self.levels),
            "channels": list(self.channels),
        }


class _GraphBuilder(GraphBuilder):
    """Creates DLA's layers, named by official module path, on symbolic tensors."""

    def __init__(self, dtype):
        super().__init__(dtype)
        self.unused_projections = []

    def conv_bn_relu(self, x, name, filters, kernel_size, strides=1, index=0):
        """`nn.Sequential` entries `index`, `index + 1`, `index + 2`: conv (no bias), BN, ReLU."""
        x = self.conv(x, f"{name}.{index}", filters, kernel_size, strides=strides)
        x = self.batch_norm(x, f"{name}.{index + 1}")
        return self.relu(x, f"{name}.{index + 2}")

    def conv_level(self, x, name, filters, convs, strides=1):
        """The official `_make_conv_level`: `convs` 3x3 conv + BN + ReLU, the first with the stride."""
        for i in range(convs):
            x = self.conv_bn_relu(x, name, filters, 3, strides=strides if i == 0 else 1, index=3 * i)
        return x

    def basic_block(self, x, residual, name, filters, strides=1):
        y = self.conv(x, f"{name}.conv1", filters, 3, strides=strides)
        y = self.relu(self.batch_norm(y, f"{name}.bn1"), f"{name}.relu1")
        y = self.batch_norm(self.conv(y, f"{name}.conv2", filters, 3), f"{name}.bn2")
        return self.add_relu([y, residual], f"{name}.add", f"{name}.relu")

    def projection_layers(self, name, filters):
        return (
            keras.layers.Conv2D(
                filters, 1, use_bias=False, dtype=self.dtype, name=official_name(f"{name}.project.0")
            ),
            batch_normalization(f"{name}.project.1", self.dtype),
        )

    def tree(self, x, name, depth, filters, strides=1, level_root=False, children=None):
        """The official `Tree(depth, BasicBlock, in, filters, stride, level_root)` on `x`."""
        children = [] if children is None else children
        channels_in = x.shape[-1]
        bottom = x
        if strides > 1:
            bottom = keras.layers.MaxPooling2D(
                strides, strides, dtype=self.dtype, name=official_name(f"{name}.downsample")
            )(x)
        if level_root:
            children.append(bottom)
        if depth == 1:
            residual = bottom
            if channels_in != filters:
                conv, norm = self.projection_layers(name, filters)
                residual = norm(conv(bottom))
            x1 = self.basic_block(x, residual, f"{name}.tree1", filters, strides=strides)
            x2 = self.basic_block(x1, x1, f"{name}.tree2", filters)
            merged = keras.layers.Concatenate(dtype=self.dtype, name=official_name(f"{name}.root.cat"))(
                [x2, x1] + children
            )
            y = self.batch_norm(self.conv(merged, f"{name}.root.conv", filters, 1), f"{name}.root.bn")
            return self.relu(y, f"{name}.root.relu")
        if channels_in != filters:
            # The official tree computes this projection and its first sub-tree ignores it.
            conv, norm = self.projection_layers(name, filters)
            conv.build((None, None, None, channels_in))
            norm.build((None, None, None, filters))
            self.unused_projections.extend([conv, norm])
        x1 = self.tree(x, f"{name}.tree1", depth - 1, filters, strides=strides)
        children.append(x1)
        return self.tree(x1, f"{name}.tree2", depth - 1, filters, children=children)


def _dla34():
    return DLABackbone(levels=(1, 1, 1, 2, 2, 1), channels=(16, 32, 64, 128, 256, 512))


PRESETS = {
    "dla34": {
        "backbone": _dla34,
        "neck": lambda: DLAUpNeck(channels=(64, 128, 256, 512)),
        # The official `head_conv` default for DLA (`opts.py`).
        "head_channels": 256,
        "size_divisor": 32,
        "description": (
            "DLA-34 with deformable IDA up-sampling (official `pose_dla_dcn.py`: "
            "DLAUp + IDAUp, stride 4); 37.4 COCO AP in the paper."
        ),
    },
}
