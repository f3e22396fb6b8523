"""BatchNormalization whose training statistics take one pass over the activations."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_centernet")
class OnePassBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with its batch statistics read in one pass.

    Keras takes the training statistics as `mean(x)`, then `mean((x - mean)**2)`:
    two reductions, the second waiting for the first, so every activation is
    read twice before it is normalised. This layer computes the mean and the
    mean square in one reduction over `x - s`, with `s` one value per channel
    taken from the batch (its first element), and the variance as
    `E[(x - s)**2] - E[x - s]**2`. The shift keeps that difference
    well-conditioned: without it, `E[x**2] - E[x]**2` in float32 loses the
    variance of a channel whose mean is large next to its spread
    (catastrophic cancellation). `s` is held constant for the gradient, which
    is exact since the variance does not depend on it.

    Same weights, configuration, inference and moving-average updates as
    `keras.layers.BatchNormalization`; with a mask or `synchronized=True` it
    is Keras' own computation. Under JAX on an H100 the one-pass statistics
    made an Hourglass-104 bf16 training step 3% faster (137.2 -> 133.1 ms,
    `benchmarks/results/training_step.md`).

    Example:
    >>> import numpy as np
    >>> norm = OnePassBatchNormalization(epsilon=1e-5)
    >>> x = np.random.default_rng(0).normal(1000.0, 2.0, size=(8, 4, 4, 3)).astype("float32")
    >>> y = keras.ops.convert_to_numpy(norm(x, training=True))
    >>> bool(np.allclose(y.std(axis=(0, 1, 2)), 1.0, atol=1e-2))
    True
    """

    # The statistics' reduction sees the activations as rows of about this many
    # values: `fold` consecutive positions (of `channels` each) per row, see `_fold`.
    # None: one row per position, as Keras reduces. A benchmark setting for now.
    statistics_columns = None
    # With folding, also normalise in the folded view (so that the backward's
    # reductions, for gamma, beta and the statistics, are folded too).
    fold_normalisation = False

    def _fold(self, shape, axes):
        """How many positions one row of the statistics' reduction holds (1: no folding).

        XLA:GPU reduces an `(N, H, W, C)` tensor over all but its `C` minor
        values as a column reduction of only `C` columns. Reshaped to rows of
        `fold * C` values (`fold` consecutive positions; free in the row-major
        layout) it has `fold` times more columns to spread over the GPU, and the
        `fold` partial sums of a channel are added afterwards.
        """
        rank = len(shape)
        if (not self.statistics_columns or self.axis % rank != rank - 1
                or sorted(a % rank for a in axes) != list(range(rank - 1))
                or any(not isinstance(d, int) for d in shape)):
            return 1
        rows, channels = 1, shape[-1]
        for d in shape[:-1]:
            rows *= d
        fold = 1
        while fold * 2 * channels <= self.statistics_columns and rows % (fold * 2) == 0:
            fold *= 2
        return fold

    def call(self, inputs, training=None, mask=None):
        fold = self._fold(tuple(inputs.shape), list(self._reduction_axes))
        if (not self.fold_normalisation or fold == 1 or not training or not self.trainable
                or mask is not None or self.synchronized or self.renorm):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        x = ops.reshape(ops.cast(inputs, "float32"), (-1, fold * channels))
        shift = ops.stop_gradient(x[0, :channels])
        centred = x - ops.tile(shift, (fold,))
        count = x.shape[0] * fold
        centred_mean = ops.sum(ops.reshape(ops.sum(centred, axis=0), (fold, channels)), axis=0) / count
        mean_square = ops.sum(ops.reshape(ops.sum(ops.square(centred), axis=0), (fold, channels)), axis=0) / count
        variance = ops.maximum(mean_square - ops.square(centred_mean), 0.0)
        mean = centred_mean + shift
        self.moving_mean.assign(ops.cast(self.moving_mean, "float32") * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            ops.cast(self.moving_variance, "float32") * self.momentum + variance * (1.0 - self.momentum))
        inv = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            inv = inv * ops.cast(self.gamma, "float32")
        # (x - mean) * inv rather than Keras' x * inv - mean * inv: the gradient
        # of inv is then a sum over centred values, which keeps it accurate for
        # channels whose mean is large next to their spread.
        outputs = (x - ops.tile(mean, (fold,))) * ops.tile(inv, (fold,))
        if self.center:
            outputs = outputs + ops.tile(ops.cast(self.beta, "float32"), (fold,))
        return ops.cast(ops.reshape(outputs, inputs.shape), self.compute_dtype)

    def _moments(self, inputs, mask):
        if mask is not None or self.synchronized:
            return super()._moments(inputs, mask)
        axes = list(self._reduction_axes)
        first = tuple(0 if axis in axes else slice(None) for axis in range(len(inputs.shape)))
        shift = ops.stop_gradient(inputs[first])  # (channels,)
        broadcast = [1] * len(inputs.shape)
        broadcast[self.axis] = -1
        centred = inputs - ops.reshape(shift, broadcast)
        fold = self._fold(tuple(inputs.shape), axes)
        if fold > 1:
            channels = inputs.shape[-1]
            wide = ops.reshape(centred, (-1, fold * channels))
            count = wide.shape[0] * fold
            centred_mean = ops.sum(ops.reshape(ops.sum(wide, axis=0), (fold, channels)), axis=0) / count
            mean_square = ops.sum(ops.reshape(ops.sum(ops.square(wide), axis=0), (fold, channels)), axis=0) / count
        else:
            centred_mean = ops.mean(centred, axis=axes)
            mean_square = ops.mean(ops.square(centred), axis=axes)
        variance = ops.maximum(mean_square - ops.square(centred_mean), 0.0)
        return centred_mean + shift, variance
