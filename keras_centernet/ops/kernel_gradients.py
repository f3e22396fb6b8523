"""Convolution kernels' gradients in the kernels' own layout before the optimizer (JAX on GPU).

cuDNN's NHWC convolutions give each filter gradient in its OHWI layout, while
Keras keeps a kernel, and the optimizer's slots, as row-major HWIO. Left
alone, XLA fuses the OHWI -> HWIO transpose into the optimizer's update of
each kernel: under Adam, one multi-output transpose fusion per kernel that
reads and writes at a quarter of the GPU's bandwidth and, unable to write in
place, is followed by copies of the kernel and both moments
(`benchmarks/results/profile_step.md`: 7.6 ms of Hourglass-104's bf16
training step on an H100). `row_major_kernel_gradients` is the identity on
the trainable values; on the way back it asks for each 4-D gradient in the
row-major layout (a transpose of its own) and materialises it through an
optimization barrier, so that the update is an in-place elementwise fusion.
Values and gradients are unchanged: only where XLA puts the transpose.
"""

import functools

import keras

# Platforms (`jax.default_backend()`) on which the JAX training step of a
# `RowMajorKernelGradients` model routes kernel gradients this way. Measured
# on CUDA GPUs; on the CPU the convolutions' kernels are already row-major.
PLATFORMS = ("gpu", "cuda", "rocm")


def applies():
    """Whether `row_major_kernel_gradients` acts here: JAX backend on one of `PLATFORMS`."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() in PLATFORMS


class RowMajorKernelGradients:
    """Model mixin: JAX's training step routes the kernel gradients (`row_major_kernel_gradients`).

    JAX's trainer differentiates `compute_loss_and_updates` with respect to
    its trainable values; where `applies()`, they pass the routing first.
    Other backends never call the method. Put it before `keras.Model`:

    >>> class Detector(RowMajorKernelGradients, keras.Model):
    ...     pass
    """

    def compute_loss_and_updates(self, trainable_variables, *args, **kwargs):
        if applies():
            trainable_variables = row_major_kernel_gradients(trainable_variables)
        return super().compute_loss_and_updates(trainable_variables, *args, **kwargs)


def row_major_kernel_gradients(values):
    """The identity on a list of arrays, whose 4-D gradients leave row-major and materialised.

    JAX only. Each 4-D floating array (a convolution kernel) passes a
    `jax.custom_vjp` identity whose backward constrains the incoming gradient
    to the row-major layout (`jax.experimental.layout.with_layout_constraint`)
    and then puts it through `jax.lax.optimization_barrier`, so that XLA cannot
    fuse the layout change into what consumes the gradient (the optimizer).
    Other arrays pass untouched.

    Args:
        values: list of `jax.Array`, e.g. a model's trainable variables'
            values as JAX's trainer differentiates them.

    Returns:
        A list of the same arrays.

    Example:

    >>> import jax, jax.numpy as jnp
    >>> kernel = jnp.ones((3, 3, 4, 8))
    >>> jax.grad(lambda k: jnp.sum(row_major_kernel_gradients([k])[0] ** 2))(kernel)[0, 0, 0, 0]
    Array(2., dtype=float32)
    """
    import jax.numpy as jnp

    through = _through_row_major()
    return [
        through(value)
        if getattr(value, "ndim", 0) == 4 and jnp.issubdtype(value.dtype, jnp.floating)
        else value
        for value in values
    ]


@functools.cache
def _through_row_major():
    """The `jax.custom_vjp` identity, made once (JAX is imported only where it is used)."""
    import jax
    from jax.experimental.layout import Layout
    from jax.experimental.layout import with_layout_constraint

    @jax.custom_vjp
    def through(value):
        return value

    def forward(value):
        return value, None

    def backward(_, gradient):
        gradient = with_layout_constraint(gradient, Layout(major_to_minor=tuple(range(gradient.ndim))))
        return (jax.lax.optimization_barrier(gradient),)

    through.defvjp(forward, backward)
    return through
