"""Corner pooling (CornerNet), cascade corner pooling and centre pooling (Keypoint Triplets), in `keras.ops`.

A corner pooling is a running maximum along one axis of a channels-last map.
`keras.ops` has no cumulative maximum, so `cumulative_max` is a log-step
doubling scan: after step `k` every position holds the maximum of the `2**k`
positions ahead of it, so `ceil(log2(n))` steps of `maximum(x, shifted x)`
cover an axis of length `n`. With static sizes the shifts are slices and a
concatenation (no gather, no padding value): every backend runs it, it
differentiates like `maximum`, and it converts to TFLite's builtin ops.
"""

import keras
from keras import ops

from keras_centernet.convert.official import official_name
from keras_centernet.layers.official_layers import batch_normalization

# direction -> (axis of a (B, H, W, C) map, whether the maximum runs from the end).
# The official `TopPool` gives row i the maximum of rows i..H-1 (everything
# below it: a top-left corner looks down), `LeftPool` column j the maximum of
# columns j..W-1; `BottomPool` and `RightPool` look up and left.
POOL_DIRECTIONS = {
    "top": (1, True),
    "left": (2, True),
    "bottom": (1, False),
    "right": (2, False),
}

CORNERS = ("top_left", "bottom_right")


def _slice(x, axis, start, stop):
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def cumulative_max(x, axis, reverse=False):
    """Running maximum of `x` along `axis` (from the end when `reverse`).

    `reverse=False`: `y[i] = max(x[0], ..., x[i])`; `reverse=True`:
    `y[i] = max(x[i], ..., x[n-1])`. A doubling scan of `ceil(log2(n))`
    `maximum`s of `x` and a shifted copy; a shift by `s` repeats the `s`
    edge elements of `x` itself (`max(x[i], x[i])` changes nothing), so no
    padding value is needed. An axis of unknown size (TensorFlow graphs
    traced with `None` sizes) runs the same scan in `ops.while_loop` with
    gathers.

    Args:
        x: tensor of any rank.
        axis: int. The axis to scan.
        reverse: bool. Scan from the last element. Defaults to False.

    Returns:
        A tensor of the shape and dtype of `x`.

    Example:

    >>> cumulative_max(np.array([1.0, 3.0, 2.0, 0.0, 5.0]), axis=0)
    # [1, 3, 3, 3, 5]; reverse=True: [5, 5, 5, 5, 5]
    """
    x = ops.convert_to_tensor(x)
    rank = len(x.shape)
    if not -rank <= axis < rank:
        raise ValueError(f"`axis` {axis} is out of range for a tensor of rank {rank}.")
    axis = axis % rank
    size = x.shape[axis]
    if size is None:
        return _dynamic_cumulative_max(x, axis, reverse)
    shift = 1
    while shift < size:
        if reverse:
            shifted = ops.concatenate([_slice(x, axis, shift, size), _slice(x, axis, size - shift, size)], axis)
        else:
            shifted = ops.concatenate([_slice(x, axis, 0, shift), _slice(x, axis, 0, size - shift)], axis)
        x = ops.maximum(x, shifted)
        shift *= 2
    return x


def _dynamic_cumulative_max(x, axis, reverse):
    size = ops.shape(x)[axis]
    positions = ops.arange(size)

    def body(shift, y):
        if reverse:
            source = ops.minimum(positions + shift, size - 1)
        else:
            source = ops.maximum(positions - shift, 0)
        return shift * 2, ops.maximum(y, ops.take(y, source, axis=axis))

    _, x = ops.while_loop(lambda shift, y: shift < size, body, (ops.convert_to_tensor(1), x))
    return x


def corner_pool(x, direction):
    """CornerNet's corner pooling of a `(B, H, W, C)` map in one direction.

    Args:
        x: float tensor `(B, H, W, C)`.
        direction: `"top"` (max over the rows below and at each pixel, the
            official `TopPool`), `"left"` (columns to the right: `LeftPool`),
            `"bottom"` (rows above: `BottomPool`) or `"right"` (columns to
            the left: `RightPool`).

    Returns:
        A tensor of the shape of `x`.

    Example:

    >>> x = np.zeros((1, 4, 4, 1), "float32"); x[0, 2, 1, 0] = 1
    >>> corner_pool(x, "top")[0, :, 1, 0]   # rows 0..2 see the 1 below them
    # [1, 1, 1, 0]

    Reference:
        Law and Deng, "CornerNet: Detecting Objects as Paired Keypoints",
        ECCV 2018, section 3.4.
    """
    if direction not in POOL_DIRECTIONS:
        raise ValueError(f"`direction` must be one of {sorted(POOL_DIRECTIONS)}; received {direction!r}.")
    axis, reverse = POOL_DIRECTIONS[direction]
    return cumulative_max(x, axis, reverse=reverse)


def center_pool(vertical, horizontal=None):
    """Centre pooling: the maximum along the column of `vertical` plus that along the row of `horizontal`.

    The official `pool_cross` chains `TopPool` then `BottomPool` (a whole
    column's maximum) on one branch and `LeftPool` then `RightPool` (a whole
    row's) on the other; this is the same sum with a plain `max`.

    Args:
        vertical: float tensor `(B, H, W, C)`, pooled along each column.
        horizontal: float tensor `(B, H, W, C)`, pooled along each row.
            Defaults to `vertical`.

    Returns:
        A tensor `(B, H, W, C)`.

    Example:

    >>> center_pool(x)[0, i, j] == x[0, :, j].max(0) + x[0, i, :].max(0)

    Reference:
        Duan et al., "CenterNet: Keypoint Triplets for Object Detection",
        ICCV 2019, section 3.4.
    """
    horizontal = vertical if horizontal is None else horizontal
    return ops.max(vertical, axis=1, keepdims=True) + ops.max(horizontal, axis=2, keepdims=True)


@keras.saving.register_keras_serializable(package="keras_centernet")
class CornerPooling(keras.layers.Layer):
    """A weightless corner pooling layer (see `corner_pool`).

    Args:
        direction: `"top"`, `"left"`, `"bottom"` or `"right"` (the official
            `TopPool`, `LeftPool`, `BottomPool`, `RightPool`).

    Example:

    >>> layer = CornerPooling("top")
    >>> tuple(layer(np.zeros((1, 8, 8, 4), "float32")).shape)
    (1, 8, 8, 4)

    Reference:
        Law and Deng, "CornerNet", ECCV 2018.
    """

    def __init__(self, direction, **kwargs):
        super().__init__(**kwargs)
        if direction not in POOL_DIRECTIONS:
            raise ValueError(f"`direction` must be one of {sorted(POOL_DIRECTIONS)}; received {direction!r}.")
        self.direction = direction

    def call(self, x):
        return corner_pool(x, self.direction)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config["direction"] = self.direction
        return config


class _PoolingModule(keras.layers.Layer):
    """Shared parts of the official `pool` and `pool_cross` modules."""

    def __init__(self, pool_channels=128, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(pool_channels, int) or pool_channels < 1:
            raise ValueError(f"`pool_channels` must be a positive int; received {pool_channels!r}.")
        self.pool_channels = pool_channels

    def _conv(self, filters, kernel_size, path):
        return keras.layers.Conv2D(
            filters, kernel_size, padding="same", use_bias=False,
            dtype=self.dtype_policy, name=official_name(path),
        )

    def _convolution(self, filters, path):
        """The official `convolution(3, ...)`: 3x3 conv (no bias) -> BN -> ReLU."""
        return [
            self._conv(filters, 3, f"{path}.conv"),
            batch_normalization(f"{path}.bn", self.dtype_policy),
            keras.layers.ReLU(dtype=self.dtype_policy, name=official_name(f"{path}.relu")),
        ]

    def _make_merge(self, channels):
        # p_conv1 + p_bn1 on the pooled sum, conv1 + bn1 on the input, ReLU, conv2.
        self.p_conv1 = self._conv(channels, 3, "p_conv1")
        self.p_bn1 = batch_normalization("p_bn1", self.dtype_policy)
        self.conv1 = self._conv(channels, 1, "conv1")
        self.bn1 = batch_normalization("bn1", self.dtype_policy)
        self.conv2 = self._convolution(channels, "conv2")

    def _build_merge(self, input_shape):
        pooled_shape = tuple(input_shape[:-1]) + (self.pool_channels,)
        self.p_conv1.build(pooled_shape)
        channels_shape = tuple(input_shape[:-1]) + (self.channels,)
        self.p_bn1.build(channels_shape)
        self.conv1.build(input_shape)
        self.bn1.build(channels_shape)
        self._build_sequence(self.conv2, channels_shape)

    def _build_sequence(self, layers, shape):
        for layer in layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        return shape

    @staticmethod
    def _run(layers, x, training):
        for layer in layers:
            x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
        return x

    def _merge(self, x, pooled, training):
        merged = self.p_bn1(self.p_conv1(pooled), training=training)
        merged = ops.relu(merged + self.bn1(self.conv1(x), training=training))
        return self._run(self.conv2, merged, training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)


@keras.saving.register_keras_serializable(package="keras_centernet")
class CascadeCornerPooling(_PoolingModule):
    """Cascade corner pooling, the official `tl_pool` / `br_pool` module of Keypoint-Triplets CenterNet.

    For the top-left corner, each of two branches first looks along the
    boundary, then into the object from the boundary's maximum: branch 1
    adds `left_pool(look_conv1(x))` (the maximum along the row, a top
    boundary) to `p1_conv1(x)`, convolves (`P1_look_conv`) and applies
    `top_pool`; branch 2 adds `top_pool(look_conv2(x))` to `p2_conv1(x)`,
    convolves (`P2_look_conv`) and applies `left_pool`. The two are summed,
    convolved (`p_conv1`, `p_bn1`), added to `bn1(conv1(x))`, passed
    through a ReLU and a 3x3 `convolution` (`conv2`). The bottom-right
    corner is the same with `bottom` and `right` pools. `look_conv*`,
    `p*_conv1` and `conv2` are conv (no bias) -> BN -> ReLU; sub-layers are
    named by their official module paths.

    Args:
        corner: `"top_left"` or `"bottom_right"`.
        channels: int. Output channels (the official `dim`, 256); the input
            must have as many, as the official module. Defaults to 256.
        pool_channels: int. Channels of the pooled branches. Defaults to
            128 (official).

    Example:

    >>> layer = CascadeCornerPooling("top_left", channels=16, pool_channels=8)
    >>> tuple(layer(np.zeros((1, 8, 8, 16), "float32")).shape)
    (1, 8, 8, 16)

    Reference:
        Duan et al., "CenterNet: Keypoint Triplets for Object Detection",
        ICCV 2019, section 3.4 and figure 5; the official
        `models/CenterNet-52.py` (`pool`).
    """

    def __init__(self, corner, channels=256, pool_channels=128, **kwargs):
        super().__init__(pool_channels=pool_channels, **kwargs)
        if corner not in CORNERS:
            raise ValueError(f"`corner` must be one of {CORNERS}; received {corner!r}.")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"`channels` must be a positive int; received {channels!r}.")
        self.corner = corner
        self.channels = channels
        # pool1 runs into the object vertically, pool2 horizontally.
        self.directions = ("top", "left") if corner == "top_left" else ("bottom", "right")
        self.look_conv1 = self._convolution(pool_channels, "look_conv1")
        self.look_conv2 = self._convolution(pool_channels, "look_conv2")
        self.p1_conv1 = self._convolution(pool_channels, "p1_conv1")
        self.p2_conv1 = self._convolution(pool_channels, "p2_conv1")
        self.P1_look_conv = self._conv(pool_channels, 3, "P1_look_conv")
        self.P2_look_conv = self._conv(pool_channels, 3, "P2_look_conv")
        self._make_merge(channels)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.channels:
            raise ValueError(
                f"CascadeCornerPooling takes inputs of `channels` ({self.channels}) channels; "
                f"received shape {tuple(input_shape)}."
            )
        for branch in (self.look_conv1, self.look_conv2, self.p1_conv1, self.p2_conv1):
            self._build_sequence(branch, input_shape)
        pooled_shape = tuple(input_shape[:-1]) + (self.pool_channels,)
        self.P1_look_conv.build(pooled_shape)
        self.P2_look_conv.build(pooled_shape)
        self._build_merge(input_shape)

    def call(self, x, training=None):
        vertical, horizontal = self.directions
        look_along = corner_pool(self._run(self.look_conv1, x, training), horizontal)
        pool1 = corner_pool(self.P1_look_conv(self._run(self.p1_conv1, x, training) + look_along), vertical)
        look_down = corner_pool(self._run(self.look_conv2, x, training), vertical)
        pool2 = corner_pool(self.P2_look_conv(self._run(self.p2_conv1, x, training) + look_down), horizontal)
        return self._merge(x, pool1 + pool2, training)

    def get_config(self):
        config = super().get_config()
        config.update({"corner": self.corner, "channels": self.channels, "pool_channels": self.pool_channels})
        return config


@keras.saving.register_keras_serializable(package="keras_centernet")
class CenterPooling(_PoolingModule):
    """Centre pooling, the official `center_pool` (`pool_cross`) module of Keypoint-Triplets CenterNet.

    Branch 1 takes the maximum of `p1_conv1(x)` along each column, branch 2
    that of `p2_conv1(x)` along each row (`center_pool`); their sum is
    convolved (`p_conv1`, `p_bn1`), added to `bn1(conv1(x))`, passed through
    a ReLU and a 3x3 `convolution` (`conv2`). A centre keypoint so sees the
    strongest responses on the horizontal and vertical lines through it.

    Args:
        channels: int. Output channels (and input channels). Defaults to 256.
        pool_channels: int. Channels of the pooled branches. Defaults to 128.

    Example:

    >>> layer = CenterPooling(channels=16, pool_channels=8)
    >>> tuple(layer(np.zeros((1, 8, 8, 16), "float32")).shape)
    (1, 8, 8, 16)

    Reference:
        Duan et al., "CenterNet: Keypoint Triplets for Object Detection",
        ICCV 2019, section 3.4 and figure 4.
    """

    def __init__(self, channels=256, pool_channels=128, **kwargs):
        super().__init__(pool_channels=pool_channels, **kwargs)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"`channels` must be a positive int; received {channels!r}.")
        self.channels = channels
        self.p1_conv1 = self._convolution(pool_channels, "p1_conv1")
        self.p2_conv1 = self._convolution(pool_channels, "p2_conv1")
        self._make_merge(channels)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.channels:
            raise ValueError(
                f"CenterPooling takes inputs of `channels` ({self.channels}) channels; "
                f"received shape {tuple(input_shape)}."
            )
        self._build_sequence(self.p1_conv1, input_shape)
        self._build_sequence(self.p2_conv1, input_shape)
        self._build_merge(input_shape)

    def call(self, x, training=None):
        pooled = center_pool(self._run(self.p1_conv1, x, training), self._run(self.p2_conv1, x, training))
        return self._merge(x, pooled, training)

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "pool_channels": self.pool_channels})
        return config
