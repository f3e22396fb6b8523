"""BiFPN neck (EfficientDet): weighted bidirectional fusion of a pyramid, repeated, at stride 4."""

import keras
from keras import ops

from keras_centernet.necks.fpn import check_positive_int
from keras_centernet.necks.fpn import check_pyramid
from keras_centernet.necks.fpn import pyramid_shapes


@keras.saving.register_keras_serializable(package="keras_centernet")
class FastNormalizedFusion(keras.layers.Layer):
    """One BiFPN node: fast normalised weighted sum, swish, separable 3x3 conv, BatchNorm.

    `sum_i w_i x_i / (sum_i w_i + epsilon)` with `w_i = relu(v_i)` and one
    learned scalar `v_i` per input (initialised to 1, so the node starts as
    a mean), then swish -> depthwise-separable 3x3 convolution ->
    BatchNormalization, as EfficientDet's nodes.

    Args:
        filters: int. Channels of every input and of the output.
        num_inputs: int >= 2. How many maps the node fuses.
        epsilon: float. Keeps the normalisation finite when every weight is
            0. Defaults to 1e-4 (the paper).

    Call arguments:
        inputs: list of `num_inputs` maps of one shape `(batch, height,
            width, filters)`.
        training: bool. Whether BatchNormalization uses batch statistics.

    Example:

    >>> node = FastNormalizedFusion(8, num_inputs=2)
    >>> tuple(node([np.zeros((1, 4, 4, 8), "float32")] * 2).shape)
    (1, 4, 4, 8)

    Reference:
        Tan, Pang and Le, "EfficientDet: Scalable and Efficient Object
        Detection", CVPR 2020, section 3.3.
    """

    def __init__(self, filters, num_inputs, epsilon=1e-4, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        check_positive_int("num_inputs", num_inputs, minimum=2)
        self.filters = filters
        self.num_inputs = num_inputs
        self.epsilon = float(epsilon)
        self.conv = keras.layers.SeparableConv2D(
            filters, 3, padding="same", dtype=self.dtype_policy, name="conv"
        )
        self.norm = keras.layers.BatchNormalization(
            momentum=0.99, epsilon=1e-3, dtype=self.dtype_policy, name="norm"
        )

    def build(self, input_shape):
        self.fusion_weights = self.add_weight(
            name="fusion_weights", shape=(self.num_inputs,), initializer="ones"
        )
        shape = (None, None, None, self.filters)
        self.conv.build(shape)
        self.norm.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        if len(inputs) != self.num_inputs:
            raise ValueError(f"`{self.name}` fuses {self.num_inputs} maps; received {len(inputs)}.")
        weights = ops.relu(ops.cast(self.fusion_weights, self.compute_dtype))
        fused = sum(weights[i] * x for i, x in enumerate(inputs))
        fused = fused / (ops.sum(weights) + self.epsilon)
        return self.norm(self.conv(ops.silu(fused)), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "num_inputs": self.num_inputs, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="keras_centernet")
class BiFPNNeck(keras.layers.Layer):
    """BiFPN: levels projected to `filters`, `num_repeats` bidirectional fusions, the stride-4 map out.

    The last `num_levels` maps of the pyramid (strides 4, 8, ...) are
    projected by 1x1 convolution + BatchNorm to `filters` channels. Each
    repeat is one EfficientDet BiFPN layer on those levels `p_0` (stride 4)
    .. `p_n`: a top-down path
    `td_i = node(p_i, up(td_{i+1}))` for `i = n-1 .. 0` (`td_n = p_n`),
    then a bottom-up path
    `out_i = node(p_i, td_i, down(out_{i-1}))` for `i = 1 .. n-1`,
    `out_n = node(p_n, down(out_{n-1}))` and `out_0 = td_0`, where `node` is
    a `FastNormalizedFusion`, `up` nearest-neighbour x2 and `down` a 3x3
    max pool with stride 2. The finest level of the last repeat, at stride
    4, is the neck's output.

    Args:
        filters: int. Channels of the levels and the output. Defaults to 64
            (EfficientDet-D0).
        num_repeats: int. BiFPN layers stacked. Defaults to 3
            (EfficientDet-D0).
        num_levels: int >= 2. How many of the backbone's last maps are
            used. Defaults to 4 (strides 4 to 32).
        epsilon: float. Of the fast normalised fusion. Defaults to 1e-4.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        features: list of maps, the backbone's pyramid; the last
            `num_levels` are used (each at twice the stride of the one
            before).
        training: bool. Whether BatchNormalization uses batch statistics.

    Example:

    >>> neck = BiFPNNeck(filters=16, num_repeats=2)
    >>> features = [np.zeros((1, 16 // 2**i, 16 // 2**i, 8 * 2**i), "float32") for i in range(4)]
    >>> tuple(neck(features).shape)
    (1, 16, 16, 16)

    Reference:
        Tan, Pang and Le, "EfficientDet: Scalable and Efficient Object
        Detection", CVPR 2020.
    """

    def __init__(self, filters=64, num_repeats=3, num_levels=4, epsilon=1e-4, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        check_positive_int("num_repeats", num_repeats)
        check_positive_int("num_levels", num_levels, minimum=2)
        dtype = self.dtype_policy

        # === Layers ===
        self.projections = [
            keras.layers.Conv2D(filters, 1, dtype=dtype, name=f"projection_{i}") for i in range(num_levels)
        ]
        self.projection_norms = [
            keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3, dtype=dtype, name=f"projection_norm_{i}")
            for i in range(num_levels)
        ]
        self.top_down_nodes, self.bottom_up_nodes = [], []
        top = num_levels - 1
        for r in range(num_repeats):
            # Flat lists (repeat r's nodes at r * top ..): Keras tracks them.
            self.top_down_nodes += [
                FastNormalizedFusion(filters, 2, epsilon, dtype=dtype, name=f"repeat_{r}_top_down_{i}")
                for i in range(top)
            ]
            self.bottom_up_nodes += [
                FastNormalizedFusion(
                    filters, 2 if i == top else 3, epsilon, dtype=dtype, name=f"repeat_{r}_bottom_up_{i}"
                )
                for i in range(1, num_levels)
            ]

        # === Config ===
        self.filters = filters
        self.num_repeats = num_repeats
        self.num_levels = num_levels
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        shapes = pyramid_shapes("BiFPNNeck", input_shape, self.num_levels)
        level_shape = (None, None, None, self.filters)
        for conv, norm, shape in zip(self.projections, self.projection_norms, shapes):
            conv.build(shape)
            norm.build(level_shape)
        for node in self.top_down_nodes + self.bottom_up_nodes:
            node.build([level_shape] * node.num_inputs)
        self.built = True

    @staticmethod
    def _up(x):
        return ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)

    @staticmethod
    def _down(x):
        return ops.max_pool(x, pool_size=3, strides=2, padding="same")

    def call(self, features, training=None):
        levels = check_pyramid("BiFPNNeck", features, self.num_levels)
        levels = [
            norm(conv(x), training=training)
            for conv, norm, x in zip(self.projections, self.projection_norms, levels)
        ]
        top = self.num_levels - 1
        for r in range(self.num_repeats):
            top_down = self.top_down_nodes[r * top:(r + 1) * top]
            bottom_up = self.bottom_up_nodes[r * top:(r + 1) * top]
            path = [None] * top + [levels[top]]
            for i in range(top - 1, -1, -1):
                path[i] = top_down[i]([levels[i], self._up(path[i + 1])], training=training)
            outputs = [path[0]]
            for i in range(1, top + 1):
                inputs = [levels[i], path[i]] if i < top else [levels[i]]
                outputs.append(bottom_up[i - 1](inputs + [self._down(outputs[-1])], training=training))
            levels = outputs
        return levels[0]

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = pyramid_shapes("BiFPNNeck", input_shape, self.num_levels)[0]
        return (batch, height, width, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "num_repeats": self.num_repeats,
                "num_levels": self.num_levels,
                "epsilon": self.epsilon,
            }
        )
        return config
