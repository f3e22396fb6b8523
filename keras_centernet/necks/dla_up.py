"""DLA-34's neck: iterative deep aggregation up to stride 4 (official `DLAUp`, `IDAUp`)."""

import keras
from keras import ops

from keras_centernet.convert.official import official_name
from keras_centernet.layers.deformable_conv2d import DeformableConv2D
from keras_centernet.layers.official_layers import batch_normalization
from keras_centernet.layers.depthwise_conv2d_transpose import DepthwiseConv2DTranspose

# PyTorch BatchNorm2d: eps 1e-5; momentum 0.1 there is 0.9 here.


def _check_channels(name, values):
    values = tuple(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"`{name}` must hold positive ints; received {values}.")
    return values


@keras.saving.register_keras_serializable(package="keras_centernet")
class IDAUp(keras.layers.Layer):
    """One iterative deep aggregation (official `IDAUp(o, channels, up_f)`).

    Given maps `x[0], ..., x[n-1]` (`x[i]` at `factors[i]` times the stride
    of `x[0]`), for `i = 1 .. n-1` in order:
    `x[i] = node_i(up_i(proj_i(x[i])) + x[i - 1])`, where `proj_i` and
    `node_i` are the official `DeformConv` (3x3 deformable convolution with
    bias -> BN -> ReLU) and `up_i` a `DepthwiseConv2DTranspose` by `factors[i]` (bilinear
    initialisation). Returns the list with `x[1:]` replaced: every map but
    the first then has `filters` channels and the stride of `x[0]`, and the
    last aggregates them all.

    Name the layer by the official module path (`official_name("ida_up")`):
    its sub-layers are named after it, `<name>-proj_<i>-conv`,
    `<name>-proj_<i>-actf-0`, `<name>-up_<i>`, `<name>-node_<i>-conv`,
    `<name>-node_<i>-actf-0`.

    Args:
        filters: int. Output channels of the projections and nodes (`o`).
        channels: sequence of ints. Channels of the input maps (the first
            must be `filters`, as it is summed with up-sampled maps).
        factors: sequence of ints, as long as `channels`. Stride of each map
            relative to the first (`factors[0]` is unused; the others even).

    Example:

    >>> ida = IDAUp(16, channels=(16, 32), factors=(1, 2), name="ida_up")
    >>> maps = ida([np.zeros((1, 8, 8, 16), "float32"), np.zeros((1, 4, 4, 32), "float32")])
    >>> tuple(maps[-1].shape)
    (1, 8, 8, 16)
    """

    def __init__(self, filters, channels, factors, **kwargs):
        super().__init__(**kwargs)
        channels = _check_channels("channels", channels)
        factors = tuple(int(f) for f in factors)
        if len(channels) < 2 or len(factors) != len(channels):
            raise ValueError(
                "`channels` and `factors` need the same length, at least 2; received "
                f"channels={channels}, factors={factors}."
            )
        _check_channels("filters", (filters,))
        if channels[0] != filters:
            raise ValueError(
                f"The first map is summed with `filters` = {filters} channels; received "
                f"channels={channels}."
            )
        self.filters = filters
        self.channels = channels
        self.factors = factors
        dtype = self.dtype_policy
        self.projections, self.projection_norms = [], []
        self.upsamplings = []
        self.nodes, self.node_norms = [], []
        for i in range(1, len(channels)):
            prefix = f"{self.name}.proj_{i}"
            self.projections.append(
                DeformableConv2D(filters, 3, dtype=dtype, name=official_name(f"{prefix}.conv"))
            )
            self.projection_norms.append(self._batch_norm(f"{prefix}.actf.0"))
            self.upsamplings.append(
                DepthwiseConv2DTranspose(factors[i], dtype=dtype, name=official_name(f"{self.name}.up_{i}"))
            )
            prefix = f"{self.name}.node_{i}"
            self.nodes.append(DeformableConv2D(filters, 3, dtype=dtype, name=official_name(f"{prefix}.conv")))
            self.node_norms.append(self._batch_norm(f"{prefix}.actf.0"))

    def _batch_norm(self, path):
        return batch_normalization(path, self.dtype_policy)

    def build(self, input_shape):
        shape = (None, None, None, self.filters)
        for i, channels in enumerate(self.channels[1:]):
            self.projections[i].build((None, None, None, channels))
            for layer in (self.projection_norms[i], self.upsamplings[i], self.nodes[i], self.node_norms[i]):
                layer.build(shape)

    def call(self, maps, training=None):
        if len(maps) != len(self.channels):
            raise ValueError(f"`{self.name}` expects {len(self.channels)} maps; received {len(maps)}.")
        maps = list(maps)
        for i in range(1, len(maps)):
            x = self.projection_norms[i - 1](self.projections[i - 1](maps[i]), training=training)
            x = self.upsamplings[i - 1](ops.relu(x))
            x = self.node_norms[i - 1](self.nodes[i - 1](x + maps[i - 1]), training=training)
            maps[i] = ops.relu(x)
        return maps

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape[0]
        return [tuple(input_shape[0])] + [(batch, height, width, self.filters)] * (len(self.channels) - 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "channels": list(self.channels),
                "factors": list(self.factors),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_centernet")
class DLAUpNeck(keras.layers.Layer):
    """DLA's up-sampling neck: from the backbone's levels to one stride-4 map.

    The official `DLASeg` between the backbone and the heads, with
    `down_ratio` 4 and `last_level` 5. `dla_up` (`DLAUp`) runs `IDAUp`s
    `ida_0`, `ida_1`, ... that merge ever more of the deeper levels into
    the next shallower one (`ida_0` brings stride 32 to 16, `ida_1` the
    results to 8, `ida_2` to 4), each keeping the shallowest level's
    channels; `ida_up` then merges its stride 4, 8 and 16 results (all but
    the deepest) into one map at stride 4 with `channels[0]` channels.

    Layers are named by the official module paths
    (`dla_up.ida_0.proj_1.conv`, `dla_up.ida_2.up_3`, `ida_up.node_2.actf.0`,
    ...; `-` for `.`), so official checkpoints load by name.

    Args:
        channels: sequence of ints. Channels of the backbone levels used,
            from stride 4 on (DLA-34: `(64, 128, 256, 512)`). Defaults to
            `(64, 128, 256, 512)`.

    Call arguments:
        features: list of maps, the backbone's levels; the last
            `len(channels)` are used (each at twice the stride of the one
            before).

    Example:

    >>> neck = DLAUpNeck(channels=(8, 16, 32))
    >>> features = [np.zeros((1, 16 // 2**i, 16 // 2**i, c), "float32") for i, c in enumerate((8, 16, 32))]
    >>> tuple(neck(features).shape)
    (1, 16, 16, 8)

    Reference:
        Yu, Wang, Shelhamer and Darrell, "Deep Layer Aggregation", CVPR 2018.
    """

    def __init__(self, channels=(64, 128, 256, 512), **kwargs):
        super().__init__(**kwargs)
        channels = _check_channels("channels", channels)
        if len(channels) < 3:
            raise ValueError(f"`channels` needs at least 3 levels; received {channels}.")
        self.channels = channels
        dtype = self.dtype_policy

        # === Layers ===
        # `DLAUp`: after aggregation `i`, the levels it updated all have the
        # channels and the stride of its shallowest level `j`.
        scales = [2**i for i in range(len(channels))]
        in_channels = list(channels)
        self.dla_up = []
        for i in range(len(channels) - 1):
            j = len(channels) - i - 2
            self.dla_up.append(
                IDAUp(
                    channels[j], in_channels[j:], [s // scales[j] for s in scales[j:]],
                    dtype=dtype, name=official_name(f"dla_up.ida_{i}"),
                )
            )
            scales[j + 1:] = [scales[j]] * (len(scales) - j - 1)
            in_channels[j + 1:] = [channels[j]] * (len(channels) - j - 1)
        last = len(channels) - 1
        self.ida_up = IDAUp(
            channels[0], channels[:last], [2**i for i in range(last)],
            dtype=dtype, name=official_name("ida_up"),
        )

    def build(self, input_shape):
        for ida in self.dla_up + [self.ida_up]:
            ida.build([(None, None, None, c) for c in ida.channels])

    def call(self, features, training=None):
        count = len(self.channels)
        if not isinstance(features, (list, tuple)) or len(features) < count:
            raise ValueError(
                f"`DLAUpNeck` expects a list of at least {count} feature maps; received {features!r}."
            )
        levels = list(features[-count:])
        aggregated = [levels[-1]]
        for i, ida in enumerate(self.dla_up):
            start = count - i - 2
            levels[start:] = ida(levels[start:], training=training)
            aggregated.insert(0, levels[-1])
        return self.ida_up(aggregated[: count - 1], training=training)[-1]

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape[-len(self.channels)]
        return (batch, height, width, self.channels[0])

    def get_config(self):
        config = super().get_config()
        config.update({"channels": list(self.channels)})
        return config
