"""Fused modulated deformable convolution (DCNv2) for the JAX backend.

The `keras.ops` version (`deform_conv.py`) writes the whole sampled column
tensor (`B * Ho * Wo * kh * kw * Cin` float32 values) to memory, reads it back
for the matmul, and its automatic backward scatters into the input. Here the
bilinear gather runs inside the matmul tiles of Pallas (Triton) kernels:

* forward: for a tile of output pixels, each kernel point's four neighbours
  are gathered from the zero-padded input, mixed by the bilinear and mask
  weights in float32 and multiplied with that point's slice of the kernel; no
  column tensor exists in memory.
* backward (one kernel, `jax.custom_vjp`): for a tile of pixels and one kernel
  point, the column gradient `g @ W_k^T` stays in registers; from it and the
  re-gathered neighbours come the input gradient (atomic adds into a float32
  buffer), the four channel sums that give the offset and mask gradients, and
  the kernel gradient (`columns^T @ g`, accumulated over a strip of pixel
  tiles and summed over strips afterwards).

The function is that of `deform_conv2d` in `deform_conv.py` (same sampling,
same float32 weights, same zero padding), selected with
`implementation="fused"`. Measured on an H200 (benchmarks/results/deform_conv.md)
it agrees with the reference to ~1e-6 but runs forward+backward 2-3x slower
than XLA's gather + matmul, and its backward needs more shared memory than the
GPU has with 512 input channels under the default tiles, so it is not the
default (under JAX that is `deform_conv_xla.py`); the kernels' memory is ~4x
lower. The forward kernel alone also serves as the XLA version's forward pass
under its option `FORWARD = "pallas"` (`forward_call`), and a backward kernel
without the atomic adds, which writes the column gradient for XLA's sorted
scatter instead, as its backward under `BACKWARD = "pallas"`
(`backward_columns_call`; slower than XLA's on an H100, see
benchmarks/results/profile_dcn.md section 9).
"""

import collections
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from keras_centernet.ops.deform_conv_xla import Geometry
from keras_centernet.ops.deform_conv_xla import checked_operands
from keras_centernet.ops.deform_conv_xla import corner_weights
from keras_centernet.ops.deform_conv_xla import geometry_terms
from keras_centernet.ops.deform_conv_xla import offset_and_mask_grads

KernelConfig = collections.namedtuple(
    "KernelConfig",
    "block_m block_c block_n fwd_warps fwd_stages bwd_block_m bwd_warps "
    "bwd_stages bwd_programs",
)
KernelConfig.__doc__ = """Tile sizes and launch parameters of the fused kernels.

Args:
    block_m: int. Output pixels per forward tile.
    block_c: int. Input channels gathered per step (both passes).
    block_n: int. Output channels per forward tile.
    fwd_warps: int. Warps per forward program.
    fwd_stages: int. Software-pipelining stages of the forward loop.
    bwd_block_m: int. Output pixels per backward tile.
    bwd_warps: int. Warps per backward program.
    bwd_stages: int. Software-pipelining stages of the backward loop.
    bwd_programs: int. Rough number of backward programs to launch; sets
        how many pixel strips the kernel gradient is split into.
"""

DEFAULT_CONFIG = KernelConfig(
    block_m=64, block_c=64, block_n=64, fwd_warps=4, fwd_stages=2,
    bwd_block_m=64, bwd_warps=4, bwd_stages=2, bwd_programs=1024,
)


def _next_power_of_2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _tile_terms(off_ref, mask_ref, m0, block_m, k, geom):
    """Geometry of kernel point `k` for the pixel tile starting at `m0`."""
    rows = m0 + jnp.arange(block_m, dtype=jnp.int32)
    # Rows past the end (padding up to a whole tile) have mask 0; clamp their
    # coordinates so that their (unused) neighbour rows stay in the input.
    coords = jnp.minimum(rows, geom.batch * geom.out_h * geom.out_w - 1)
    dy = off_ref[pl.ds(m0, block_m), 2 * k]
    dx = off_ref[pl.ds(m0, block_m), 2 * k + 1]
    m = mask_ref[pl.ds(m0, block_m), k]
    return geometry_terms(coords, k, dy, dx, m, geom)


def _corner_rows(top_left, geom):
    padded_w = geom.width + 2
    return (top_left, top_left + 1, top_left + padded_w, top_left + padded_w + 1)


def _gather_corners(x_ref, top_left, c0, block_c, geom):
    return [
        x_ref[rows, pl.ds(c0, block_c)].astype(jnp.float32)
        for rows in _corner_rows(top_left, geom)
    ]


def _dot_precision(dtype, precision):
    if jnp.dtype(dtype) != jnp.float32:
        return None
    return precision


def _forward_kernel(x_ref, off_ref, mask_ref, w_ref, b_ref, y_ref, *, geom,
                    cin, block_m, block_c, block_n, precision):
    m0 = pl.program_id(0) * block_m
    n0 = pl.program_id(1) * block_n
    num_chunks = cin // block_c
    compute_dtype = w_ref.dtype

    def step(t, acc):
        k = lax.div(t, num_chunks)
        c0 = (t - k * num_chunks) * block_c
        top_left, ly, lx, weight, _ = _tile_terms(
            off_ref, mask_ref, m0, block_m, k, geom
        )
        values = _gather_corners(x_ref, top_left, c0, block_c, geom)
        columns = None
        for value, corner in zip(values, corner_weights(ly, lx, weight)):
            term = value * corner[:, None]
            columns = term if columns is None else columns + term
        w = w_ref[pl.ds(k * cin + c0, block_c), pl.ds(n0, block_n)]
        return acc + plgpu.dot(
            columns.astype(compute_dtype), w,
            precision=_dot_precision(compute_dtype, precision),
        )

    acc = lax.fori_loop(
        0, geom.kh * geom.kw * num_chunks, step,
        jnp.zeros((block_m, block_n), jnp.float32),
    )
    acc = acc + b_ref[pl.ds(n0, block_n)][None, :]
    y_ref[pl.ds(m0, block_m), pl.ds(n0, block_n)] = acc.astype(y_ref.dtype)


def _scatter_add(ref, rows, c0, width, values, keep, interpret):
    if interpret:
        # The interpreter's atomic add drops repeated rows; a scatter-add on
        # the whole (small, test-sized) buffer gives the atomic semantics.
        cols = c0 + jnp.arange(width, dtype=jnp.int32)
        ref[...] = ref[...].at[rows[:, None], cols[None, :]].add(values)
    else:
        plgpu.atomic_add(
            ref, (rows, pl.ds(c0, width)), values,
            mask=jnp.broadcast_to(keep[:, None], values.shape),
        )


def _backward_strip(x_ref, off_ref, mask_ref, w_ref, g_ref, sums_ref, dw_ref,
                    emit, *, geom, cin, block_m, block_c, tiles_per_strip,
                    precision, round_columns):
    """The body of both backward kernels: one strip of pixel tiles, one kernel point's channel chunk.

    For each tile the column gradient `g @ W_k^T` stays in registers (rounded
    to the compute dtype first with `round_columns`, as XLA's matmul rounds
    it); `emit(m0, k, c0, top_left, d_columns, corners, keep)` takes it to
    the input gradient. From it and the re-gathered neighbours come the four
    channel sums that give the offset and mask gradients (`sums_ref`) and
    the kernel gradient (`columns^T @ g`, accumulated over the strip and
    written to `dw_ref`, summed over strips afterwards).
    """
    strip = pl.program_id(0)
    point = pl.program_id(1)
    num_chunks = cin // block_c
    k = lax.div(point, num_chunks)
    chunk = point - k * num_chunks
    c0 = chunk * block_c
    compute_dtype = w_ref.dtype
    dot_precision = _dot_precision(compute_dtype, precision)
    w = w_ref[pl.ds(k * cin + c0, block_c), :]
    cout = w.shape[1]

    def step(t, acc):
        m0 = (strip * tiles_per_strip + t) * block_m
        top_left, ly, lx, weight, _ = _tile_terms(
            off_ref, mask_ref, m0, block_m, k, geom
        )
        g = g_ref[pl.ds(m0, block_m), :]
        d_columns = plgpu.dot(g, w, trans_b=True, precision=dot_precision)
        if round_columns:
            d_columns = d_columns.astype(compute_dtype).astype(jnp.float32)
        values = _gather_corners(x_ref, top_left, c0, block_c, geom)
        corners = corner_weights(ly, lx, weight)
        emit(m0, k, c0, top_left, d_columns, corners, weight != 0.0)
        columns = None
        for corner, (value, corner_weight) in enumerate(zip(values, corners)):
            # Channel sums of d_columns * neighbour: the offset and mask
            # gradients follow from these four numbers per pixel and point.
            sums_ref[chunk, 4 * k + corner, pl.ds(m0, block_m)] = (
                jnp.sum(d_columns * value, axis=1)
            )
            term = value * corner_weight[:, None]
            columns = term if columns is None else columns + term
        return acc + plgpu.dot(
            columns.astype(compute_dtype), g, trans_a=True,
            precision=dot_precision,
        )

    acc = lax.fori_loop(
        0, tiles_per_strip, step, jnp.zeros((block_c, cout), jnp.float32)
    )
    dw_ref[strip, pl.ds(k * cin + c0, block_c), :] = acc


def _backward_kernel(x_ref, off_ref, mask_ref, w_ref, g_ref, _dx_in,
                     dx_ref, sums_ref, dw_ref, *, geom, block_c, interpret, **kwargs):
    """The fused backward: the input gradient by atomic adds into `dx_ref`."""

    def emit(m0, k, c0, top_left, d_columns, corners, keep):
        del m0, k
        for rows, corner_weight in zip(_corner_rows(top_left, geom), corners):
            _scatter_add(
                dx_ref, rows, c0, block_c, d_columns * corner_weight[:, None],
                keep, interpret,
            )

    _backward_strip(x_ref, off_ref, mask_ref, w_ref, g_ref, sums_ref, dw_ref,
                    emit, geom=geom, block_c=block_c, round_columns=False, **kwargs)


def _backward_columns_kernel(x_ref, off_ref, mask_ref, w_ref, g_ref,
                             dcol_ref, sums_ref, dw_ref, *, block_m, block_c,
                             cin, **kwargs):
    """The backward without atomic adds: the column gradient goes to `dcol_ref`.

    It is rounded to the compute dtype as XLA's matmul rounds it, for the
    input gradient's scatter-add, which XLA sorts by destination.
    """

    def emit(m0, k, c0, top_left, d_columns, corners, keep):
        del top_left, corners, keep
        dcol_ref[pl.ds(m0, block_m), pl.ds(k * cin + c0, block_c)] = (
            d_columns.astype(dcol_ref.dtype)
        )

    _backward_strip(x_ref, off_ref, mask_ref, w_ref, g_ref, sums_ref, dw_ref,
                    emit, block_m=block_m, block_c=block_c, cin=cin,
                    round_columns=True, **kwargs)


def backward_columns_call(geom, cin, cout, compute_dtype, config, precision,
                          interpret):
    """The backward `pallas_call` without atomic adds.

    `(x_flat, offsets, mask, w, g) -> (d_columns, sums, d_kernel_strips)`:
    operands as in `forward_call`, `g` (m_pad, cout) in `compute_dtype`;
    `d_columns` (m_pad, K * cin) in `compute_dtype`, `sums` (chunks, 4 * K,
    m_pad) float32 (sum them over the chunks: `neighbour_sums`) and the
    kernel gradient's (strips, K * cin, cout) float32 partial sums. `m_pad`
    must be a multiple of `config.bwd_block_m`. The XLA version's backward
    under its option `BACKWARD = "pallas"` (`deform_conv_xla.py`): XLA
    scatters the column gradient into the input gradient.
    """
    block_c = min(config.block_c, cin)
    block_m = config.bwd_block_m
    num_points = geom.kh * geom.kw
    num_chunks = cin // block_c
    num_tiles = geom.m_pad // block_m
    strips = _strips(num_tiles, num_points * num_chunks, config.bwd_programs)
    kernel = functools.partial(
        _backward_columns_kernel, geom=geom, cin=cin, block_m=block_m,
        block_c=block_c, tiles_per_strip=num_tiles // strips,
        precision=precision,
    )
    return pl.pallas_call(
        kernel,
        grid=(strips, num_points * num_chunks),
        out_shape=(
            jax.ShapeDtypeStruct((geom.m_pad, num_points * cin), compute_dtype),
            jax.ShapeDtypeStruct((num_chunks, 4 * num_points, geom.m_pad), jnp.float32),
            jax.ShapeDtypeStruct((strips, num_points * cin, cout), jnp.float32),
        ),
        compiler_params=plgpu.CompilerParams(
            num_warps=config.bwd_warps, num_stages=config.bwd_stages
        ),
        interpret=interpret,
        name="deform_conv2d_backward_columns",
    )


def neighbour_sums(sums, geom):
    """`backward_columns_call`'s channel sums as (m_pad, K, 4), summed over chunks."""
    num_points = geom.kh * geom.kw
    return jnp.transpose(
        jnp.sum(sums, axis=0).reshape(num_points, 4, geom.m_pad), (2, 0, 1)
    )


def _strips(num_tiles, points, target_programs):
    """Largest divisor of `num_tiles` giving about `target_programs` programs."""
    wanted = max(1, min(num_tiles, target_programs // max(points, 1)))
    for strips in range(wanted, 0, -1):
        if num_tiles % strips == 0:
            return strips
    return 1


def forward_call(geom, cin, cout, compute_dtype, config, precision, interpret):
    """The forward `pallas_call`: `(x_flat, offsets, mask, w, bias) -> (m_pad, cout)`.

    `x_flat` is the zero-padded input flattened to (B * (H + 2) * (W + 2),
    cin), `offsets` and `mask` (m_pad, 2K) and (m_pad, K) float32, `w`
    (K * cin, cout) in `compute_dtype`, `bias` (cout,) float32; `cin` and
    `cout` are powers of two of at least 16 and `m_pad` a multiple of
    `config.block_m`. Also the forward pass of the XLA version's `pallas`
    option (`deform_conv_xla.FORWARD`).
    """
    block_c = min(config.block_c, cin)
    block_n = min(config.block_n, cout)
    block_m = config.block_m
    kernel = functools.partial(
        _forward_kernel, geom=geom, cin=cin, block_m=block_m,
        block_c=block_c, block_n=block_n, precision=precision,
    )
    return pl.pallas_call(
        kernel,
        grid=(geom.m_pad // block_m, cout // block_n),
        out_shape=jax.ShapeDtypeStruct((geom.m_pad, cout), compute_dtype),
        compiler_params=plgpu.CompilerParams(
            num_warps=config.fwd_warps, num_stages=config.fwd_stages
        ),
        interpret=interpret,
        name="deform_conv2d_forward",
    )


@functools.lru_cache(maxsize=None)
def _build(geom, cin, cout, x_dtype, compute_dtype, config, precision,
           interpret):
    """The `custom_vjp` function of padded, flattened operands for one shape."""
    block_c = min(config.block_c, cin)
    bwd_block_m = config.bwd_block_m
    num_points = geom.kh * geom.kw
    num_chunks = cin // block_c
    padded_rows = geom.batch * (geom.height + 2) * (geom.width + 2)
    bwd_params = plgpu.CompilerParams(
        num_warps=config.bwd_warps, num_stages=config.bwd_stages
    )
    forward = forward_call(geom, cin, cout, compute_dtype, config, precision, interpret)

    @jax.custom_vjp
    def op(x, offsets, mask, w, bias):
        return forward(x, offsets, mask, w, bias)

    def op_fwd(x, offsets, mask, w, bias):
        return forward(x, offsets, mask, w, bias), (x, offsets, mask, w)

    def op_bwd(residuals, g):
        x, offsets, mask, w = residuals
        num_tiles = geom.m_pad // bwd_block_m
        strips = _strips(num_tiles, num_points * num_chunks, config.bwd_programs)
        tiles_per_strip = num_tiles // strips
        kernel = functools.partial(
            _backward_kernel, geom=geom, cin=cin, block_m=bwd_block_m,
            block_c=block_c, tiles_per_strip=tiles_per_strip,
            precision=precision, interpret=interpret,
        )
        dx, sums, dw = pl.pallas_call(
            kernel,
            grid=(strips, num_points * num_chunks),
            out_shape=(
                jax.ShapeDtypeStruct((padded_rows, cin), jnp.float32),
                jax.ShapeDtypeStruct(
                    (num_chunks, 4 * num_points, geom.m_pad), jnp.float32
                ),
                jax.ShapeDtypeStruct(
                    (strips, num_points * cin, cout), jnp.float32
                ),
            ),
            input_output_aliases={5: 0},
            compiler_params=bwd_params,
            interpret=interpret,
            name="deform_conv2d_backward",
        )(x, offsets, mask, w, g, jnp.zeros((padded_rows, cin), jnp.float32))
        d_offsets, d_mask = _offset_and_mask_grads(sums, offsets, mask, geom)
        return (
            dx.astype(x.dtype),
            d_offsets,
            d_mask,
            jnp.sum(dw, axis=0).astype(w.dtype),
            jnp.sum(g.astype(jnp.float32), axis=0),
        )

    op.defvjp(op_fwd, op_bwd)
    return op


def _offset_and_mask_grads(sums, offsets, mask, geom):
    """Offset and mask gradients from the backward kernel's per-chunk neighbour sums."""
    num_points = geom.kh * geom.kw
    sums = neighbour_sums(sums, geom)
    rows = jnp.minimum(
        jnp.arange(geom.m_pad, dtype=jnp.int32),
        geom.batch * geom.out_h * geom.out_w - 1,
    )[:, None]
    points = jnp.arange(num_points, dtype=jnp.int32)[None, :]
    _, ly, lx, weight, inside = geometry_terms(
        rows, points, offsets[:, 0::2], offsets[:, 1::2], mask, geom
    )
    d_offsets, d_mask = offset_and_mask_grads(sums, ly, lx, weight, inside)
    return d_offsets.reshape(geom.m_pad, 2 * num_points), d_mask


def _default_precision():
    setting = jax.config.jax_default_matmul_precision
    if setting is not None and str(setting).lower() in (
        "highest", "float32", "precision.highest"
    ):
        return lax.Precision.HIGHEST
    return lax.Precision.DEFAULT


def deform_conv2d(x, offsets, mask, kernel, bias=None, strides=1, padding=1,
                  dilation=1, config=None, precision=None, interpret=None):
    """Modulated deformable 2D convolution (DCNv2) with fused Pallas kernels.

    The same function as `keras_centernet.ops.deform_conv.deform_conv2d`
    (see there for the sampling rule and the layouts), for `jax.Array`
    inputs of static shape. The bilinear samples are never written to
    memory: they are formed inside the matmul tiles, in float32, and cast to
    the dtype of `kernel` (the compute dtype under mixed precision) just
    before the product, which accumulates in float32. The gradient is a
    custom VJP: the input gradient is accumulated with atomic adds in
    float32, so its last bits may vary between runs.

    Args:
        x: array (B, H, W, Cin). The input; gathered in its own dtype.
        offsets: array (B, Ho, Wo, 2 * kh * kw), (dy, dx) per kernel point.
        mask: array (B, Ho, Wo, kh * kw). Modulation, already in (0, 1).
        kernel: array (kh, kw, Cin, Cout).
        bias: optional array (Cout,).
        strides: int or pair. Defaults to 1.
        padding: int or pair, zero padding. Defaults to 1.
        dilation: int or pair. Defaults to 1.
        config: optional `KernelConfig`. Defaults to `DEFAULT_CONFIG`.
        precision: optional `jax.lax.Precision` of the float32 products
            (`DEFAULT` lets the GPU use TF32, `HIGHEST` keeps IEEE float32).
            Defaults to `HIGHEST` where `jax_default_matmul_precision` asks
            for float32, else `DEFAULT`. Ignored for other dtypes.
        interpret: optional bool, run the kernels in the Pallas interpreter.
            Defaults to `True` unless the default backend is a GPU.

    Returns:
        Array (B, Ho, Wo, Cout) in the dtype of `kernel`.

    Example (the same values as the `keras.ops` reference):

    >>> import numpy as np
    >>> from keras_centernet.ops import deform_conv as reference
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(2, 6, 6, 4)).astype("float32")
    >>> offsets = rng.normal(size=(2, 6, 6, 18)).astype("float32")
    >>> mask = rng.uniform(size=(2, 6, 6, 9)).astype("float32")
    >>> kernel = rng.normal(size=(3, 3, 4, 5)).astype("float32")
    >>> fused = deform_conv2d(x, offsets, mask, kernel)
    >>> expected = reference.deform_conv2d(x, offsets, mask, kernel, implementation="reference")
    >>> bool(np.allclose(fused, expected, atol=1e-4))
    True
    """
    x, offsets, mask, kernel, (strides, padding, dilation), (out_h, out_w) = (
        checked_operands(x, offsets, mask, kernel, bias, strides, padding, dilation)
    )
    config = DEFAULT_CONFIG if config is None else config
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    if precision is None:
        precision = _default_precision()
    batch, height, width, cin = x.shape
    kh, kw, _, cout = kernel.shape
    compute_dtype = kernel.dtype
    # Triton tiles need power-of-two sizes of at least 16.
    cin_p = max(16, _next_power_of_2(cin))
    cout_p = max(16, _next_power_of_2(cout))
    num_pixels = batch * out_h * out_w
    tile = math.lcm(config.block_m, config.bwd_block_m)
    m_pad = -(-num_pixels // tile) * tile
    geom = Geometry(
        batch, height, width, out_h, out_w, kh, kw, strides, padding, dilation,
        m_pad,
    )

    x_flat = jnp.pad(
        x, [(0, 0), (1, 1), (1, 1), (0, cin_p - cin)]
    ).reshape(-1, cin_p)
    offsets = offsets.astype(jnp.float32).reshape(num_pixels, 2 * kh * kw)
    mask = mask.astype(jnp.float32).reshape(num_pixels, kh * kw)
    if m_pad != num_pixels:
        offsets = jnp.pad(offsets, [(0, m_pad - num_pixels), (0, 0)])
        mask = jnp.pad(mask, [(0, m_pad - num_pixels), (0, 0)])
    w = kernel
    if cin_p != cin or cout_p != cout:
        w = jnp.pad(w, [(0, 0), (0, 0), (0, cin_p - cin), (0, cout_p - cout)])
    w = w.reshape(kh * kw * cin_p, cout_p)
    if bias is None:
        b = jnp.zeros((cout_p,), jnp.float32)
    else:
        b = jnp.pad(jnp.asarray(bias).astype(jnp.float32), [(0, cout_p - cout)])

    op = _build(
        geom, cin_p, cout_p, jnp.dtype(x.dtype), jnp.dtype(compute_dtype),
        config, precision, bool(interpret),
    )
    y = op(x_flat, offsets, mask, w, b)
    return y[:num_pixels, :cout].reshape(batch, out_h, out_w, cout)
