"""DLA-34 (Deep Layer Aggregation) backbone of CenterNet (official `pose_dla_dcn.py`, `DLA`), channels-last.

Layers are named by the official module paths (`base-base_layer-0`,
`base-level3-tree1-tree1-conv1`, `base-level5-root-conv`, ...; `-` for `.`),
so official checkpoints load by name with `keras_centernet.convert`.
"""

import keras
from keras import ops

from keras_centernet.convert.official import official_name
from keras_centernet.necks.dla_up import DLAUpNeck

_BN_EPSILON = 1e-5
_BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="keras_centernet")
class DLABackbone(keras.Model):
    """DLA with basic blocks, returning the output of every level (strides 1 to 32).

    The official `DLA`: a 7x7 stem (`base_layer`), two conv levels
    (`level0`, `level1`), then hierarchical `Tree`s (`level2`..`level5`)
    whose `Root` nodes aggregate (concatenate, 1x1 conv, BN, ReLU) the
    blocks of a level with the level's down-sampled input when
    `level_root`. A `Tree` down-samples its input with a `stride` x
    `stride` max pool and projects it with a 1x1 conv + BN when the
    channels change. As in the official code, a `Tree` of two levels
    computes its projection but its sub-tree recomputes its own: the unused
    projection keeps its weights so that checkpoints load.

    Args:
        levels: tuple of 6 ints. Blocks per level (DLA-34: 1, 1, 1, 2, 2, 1).
        channels: tuple of 6 ints. Channels per level (DLA-34: 16, 32, 64,
            128, 256, 512).
        dtype: dtype policy of the layers.

    Example:

    >>> backbone = DLABackbone()
    >>> [tuple(f.shape)[1:3] for f in backbone(np.zeros((1, 64, 64, 3), "float32"))]
    [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]

    Reference:
        Yu et al., "Deep Layer Aggregation", CVPR 2018.
    """

    def __init__(self, levels=(1, 1, 1, 2, 2, 1), channels=(16, 32, 64, 128, 256, 512), **kwargs):
        super().__init__(**kwargs)
        levels, channels = tuple(levels), tuple(channels)
        if len(levels) != 6 or len(channels) != 6:
            raise ValueError(
                f"`levels` and `channels` need 6 entries each; received {levels} and {channels}."
            )
        if not all(isinstance(v, int) and v >= 1 for v in levels + channels):
            raise ValueError(f"`levels` and `channels` must be positive ints; received {levels}, {channels}.")
        self.levels = levels
        self.channels = channels
        self.parts = {}
        # Input channels of every layer that holds weights, to build the
        # unused projections as well.
        self._in_channels = {}
        self._conv("base.base_layer.0", 3, channels[0], 7)
        self._bn("base.base_layer.1", channels[0])
        for index in range(levels[0]):
            self._conv(f"base.level0.{3 * index}", channels[0], channels[0], 3)
            self._bn(f"base.level0.{3 * index + 1}", channels[0])
        for index in range(levels[1]):
            self._conv(f"base.level1.{3 * index}", channels[0] if index == 0 else channels[1], channels[1], 3,
                       strides=2 if index == 0 else 1)
            self._bn(f"base.level1.{3 * index + 1}", channels[1])
        for level in range(2, 6):
            self._tree(f"base.level{level}", levels[level], channels[level - 1], channels[level],
                       level_root=level > 2, root_dim=0, strides=2)

    # --- construction -----------------------------------------------------------

    def _conv(self, path, channels_in, channels_out, kernel_size, strides=1):
        self.parts[path] = keras.layers.Conv2D(
            channels_out, kernel_size, strides=strides, use_bias=False, dtype=self.dtype_policy,
            name=official_name(path),
        )
        self._in_channels[path] = channels_in

    def _bn(self, path, channels):
        self.parts[path] = keras.layers.BatchNormalization(
            epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, dtype=self.dtype_policy, name=official_name(path)
        )
        self._in_channels[path] = channels

    def _block(self, path, channels_in, channels_out, strides=1):
        self._conv(f"{path}.conv1", channels_in, channels_out, 3, strides=strides)
        self._bn(f"{path}.bn1", channels_out)
        self._conv(f"{path}.conv2", channels_out, channels_out, 3)
        self._bn(f"{path}.bn2", channels_out)

    def _tree(self, path, levels, channels_in, channels_out, level_root, root_dim, strides=1):
        if root_dim == 0:
            root_dim = 2 * channels_out
        if level_root:
            root_dim += channels_in
        if levels == 1:
            self._block(f"{path}.tree1", channels_in, channels_out, strides)
            self._block(f"{path}.tree2", channels_out, channels_out)
            self._conv(f"{path}.root.conv", root_dim, channels_out, 1)
            self._bn(f"{path}.root.bn", channels_out)
        else:
            self._tree(f"{path}.tree1", levels - 1, channels_in, channels_out, False, 0, strides)
            self._tree(f"{path}.tree2", levels - 1, channels_out, channels_out, False,
                       root_dim + channels_out)
        if channels_in != channels_out:
            self._conv(f"{path}.project.0", channels_in, channels_out, 1)
            self._bn(f"{path}.project.1", channels_out)

    def build(self, input_shape):
        for path, layer in self.parts.items():
            layer.build((None, None, None, self._in_channels[path]))
        self.built = True

    # --- forward ------------------------------------------------------------------

    def _apply_conv(self, path, x):
        layer = self.parts[path]
        pad = layer.kernel_size[0] // 2
        if pad:
            # PyTorch's symmetric zero padding (Keras "same" is asymmetric at stride 2).
            x = ops.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        return layer(x)

    def _apply_bn(self, path, x, training):
        return self.parts[path](x, training=training)

    def _block_forward(self, path, x, residual, training):
        out = ops.relu(self._apply_bn(f"{path}.bn1", self._apply_conv(f"{path}.conv1", x), training))
        out = self._apply_bn(f"{path}.bn2", self._apply_conv(f"{path}.conv2", out), training)
        return ops.relu(out + residual)

    def _tree_forward(self, path, levels, x, strides, level_root, training, children=None):
        children = [] if children is None else children
        bottom = x
        if strides > 1:
            bottom = ops.max_pool(x, pool_size=strides, strides=strides, padding="valid")
        if level_root:
            children.append(bottom)
        if levels == 1:
            residual = bottom
            if f"{path}.project.0" in self.parts:
                residual = self._apply_bn(
                    f"{path}.project.1", self._apply_conv(f"{path}.project.0", bottom), training
                )
            x1 = self._block_forward(f"{path}.tree1", x, residual, training)
            x2 = self._block_forward(f"{path}.tree2", x1, x1, training)
            merged = ops.concatenate([x2, x1] + children, axis=-1)
            root = self._apply_bn(f"{path}.root.bn", self._apply_conv(f"{path}.root.conv", merged), training)
            return ops.relu(root)
        # The official tree computes its projection here too, but its
        # sub-tree recomputes its own: skip the unused one.
        x1 = self._tree_forward(f"{path}.tree1", levels - 1, x, strides, False, training)
        children.append(x1)
        return self._tree_forward(f"{path}.tree2", levels - 1, x1, 1, False, training, children)

    def call(self, images, training=None):
        x = ops.relu(self._apply_bn("base.base_layer.1", self._apply_conv("base.base_layer.0", images), training))
        outputs = []
        for index in range(self.levels[0]):
            x = ops.relu(self._apply_bn(f"base.level0.{3 * index + 1}",
                                        self._apply_conv(f"base.level0.{3 * index}", x), training))
        outputs.append(x)
        for index in range(self.levels[1]):
            x = ops.relu(self._apply_bn(f"base.level1.{3 * index + 1}",
                                        self._apply_conv(f"base.level1.{3 * index}", x), training))
        outputs.append(x)
        for level in range(2, 6):
            x = self._tree_forward(f"base.level{level}", self.levels[level], x, 2, level > 2, training)
            outputs.append(x)
        return outputs

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        shapes = []
        for level, channels in enumerate(self.channels):
            factor = 2 ** level
            shapes.append((
                batch,
                None if height is None else height // factor,
                None if width is None else width // factor,
                channels,
            ))
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update({"levels": list(self.levels), "channels": list(self.channels)})
        return config


def _dla34():
    return DLABackbone(levels=(1, 1, 1, 2, 2, 1), channels=(16, 32, 64, 128, 256, 512))


PRESETS = {
    "dla34": {
        "backbone": _dla34,
        "neck": lambda: DLAUpNeck(channels=(64, 128, 256, 512)),
        "head_channels": 256,
        "size_divisor": 32,
        "description": (
            "DLA-34 with DCN up-sampling aggregation (official `pose_dla_dcn.py`, "
            "DLAUp + IDAUp); 37.4 COCO AP in the paper."
        ),
    },
}
