"""Modulated deformable convolution (DCNv2) for the JAX backend, with its own gradient.

The `keras.ops` version (`deform_conv.py`) is differentiated automatically: XLA
keeps what the forward pass gathered for the backward pass, gathers and scatters
each of the four bilinear neighbours separately, and reduces each neighbour's
channel products on its own. Here the function is the same but the gradient is
written by hand (`jax.custom_vjp`):

* each sample's 2x2 neighbourhood is read from the zero-padded input in the
  input's own dtype (bfloat16 under mixed precision: half the bytes of
  gathering float32, and the same values), with one gather of (2, 2, Cin)
  windows on a GPU and one row gather per neighbour on a CPU (faster there),
  and mixed in float32 in the reference's order, so the columns are the
  reference's numbers;
* the forward pass keeps only its inputs; the backward pass samples the
  neighbourhoods again for the kernel gradient and for the four channel sums
  per sample that give the offset and mask gradients, all in one pass over
  the column gradient (within one compiled training step XLA shares the
  column sampling of the forward and the backward, so keeping the columns,
  `KEEP_COLUMNS`, measured the same);
* the zero-padded input is written to memory once (an optimisation barrier),
  so that XLA does not fuse the padding, a bounds test per gathered element,
  into every gather (on an H100 the sampling and the channel sums took 45%
  less time);
* the input gradient is one float32 scatter-add of (2, 2, Cin) windows; on a
  GPU the samples are first sorted by destination, so that XLA sums the runs
  of equal destinations in registers before its atomic adds (`_scatter_form`:
  a DLA-34 layer's forward+backward 7-24% shorter on an H100 in bf16);
* where the input projected by every kernel point, `z = x @ W_k` (Cout
  channels a pixel and kernel point), is smaller than the columns (Cin), the
  layer is computed projected first (`KERNEL_FIRST`): `z`'s windows are
  sampled instead of the input's, the same function with float32 sums in
  another order. A forward pass alone takes it wherever `z` is smaller (on an
  H100, up to 2x faster on DLA-34's and ResNet-18-DCN's Cin = 2-4 Cout
  layers), a differentiated one only where `z` is at most a third of the
  columns, since its scatter-add is slower.

Selected by `deform_conv2d(..., implementation="xla")`, and by `"auto"` under
the JAX backend (`deform_conv.py`).
"""

import collections
import functools

import jax
import jax.numpy as jnp
from jax import lax

from keras_centernet.ops.deform_conv import conv_geometry
from keras_centernet.ops.deform_conv import validate_deform_conv_args

# Options, measured in benchmarks/profile_dcn.py: keep the forward's columns
# for the kernel gradient (else sampled again); how neighbours are gathered
# (None: by platform, see `_gather_form`); how the input gradient is
# scattered ("window": one scatter-add of (2, 2, Cin) windows, "rows": one
# per neighbour, "sorted": one scatter-add of windows with the samples sorted
# by their top-left neighbour, "sortedrows": one scatter-add of the rows of
# all four neighbours sorted by their destination; sorted indices let XLA:GPU
# sum the runs of equal destinations in registers before its atomic adds;
# None: by platform and channels, see `_scatter_form`) and in which dtype
# (None: float32, "input": the input's, bfloat16 under mixed precision, as the
# reference's automatic gradient).
KEEP_COLUMNS = False
GATHER_FORM = None
SCATTER_FORM = None
SCATTER_DTYPE = None
# Write the zero-padded input to memory before the gathers (an optimisation
# barrier); else XLA fuses the padding into every gathering fusion, with a
# bounds test per gathered element: on an H100 in bf16 the column sampling
# took 0.84 ms instead of 0.46 and the channel sums 0.92 instead of 0.51 at
# 128x128x64, batch 32 (benchmarks/results/profile_dcn.md).
PAD_BARRIER = True
# Write every sample's terms (window start, corner weights) to memory before
# the gathers (an optimisation barrier), instead of letting XLA recompute them
# from the offsets and the mask for each gathered channel (benchmark option
# `termsbarrier`).
TERMS_BARRIER = False
# Gather bfloat16 (or other 2-byte) inputs as pairs of channels packed into
# uint32, half as many elements of twice the size (benchmark option `packed`).
PACKED_GATHER = False
# The forward pass: "xla" (gathers, then one matmul) or "pallas" (the fused
# Pallas forward kernel of deform_conv_jax.py, which keeps no column tensor;
# used where its shape rules hold: channels powers of two >= 16, output
# pixels a multiple of its tile, columns not kept; else "xla").
FORWARD = "xla"
# The backward pass's column gradient, kernel gradient and channel sums:
# "xla" (two matmuls and a gathering reduction) or "pallas" (one Pallas kernel
# of deform_conv_jax.py, `backward_columns_call`, that keeps the sampled
# columns in its tiles; XLA still scatters the input gradient), where the
# shape rules of `FORWARD = "pallas"` hold. On an H100 in bf16 the kernel took
# 1.23 ms at 128x128x64, batch 32, at its best tiles (2.01 at the default
# ones), where the XLA kernels it replaces take 1.0; with both Pallas passes
# a DLA-34 step needed 8.9 GiB instead of 14.5 at about the same speed
# (benchmarks/results/profile_dcn.md section 9).
BACKWARD = "xla"
# Project first: `sample_k(x) @ W_k = sample_k(x @ W_k)` (bilinear sampling is
# linear in the pixels and the kernel acts on the channels; the zero padding
# projects to zeros), so the forward can be one dense matmul
# `z = x @ [W_0 ... W_8]` (every input pixel, K * Cout values) and one gathering
# sum of `z`'s windows, and the backward the channel sums with `z`'s windows,
# a scatter-add of the output gradient into `dz` and two dense matmuls. Every
# per-sample tensor then has Cout channels instead of Cin, and no column tensor
# is written; but the scatter's destinations are K times as many, so XLA:GPU
# sums fewer runs in registers before its atomic adds (on an H100 the
# scatter took 2x as long at 64x64 128->64 bf16). True or False (both passes),
# or None: `_kernel_first` decides, separately for a forward pass alone
# (inference) and for one that is differentiated (benchmarks/results/
# profile_dcn.md section 11). Where a pass is projected first, it takes no
# Pallas kernel (`FORWARD`, `BACKWARD`).
KERNEL_FIRST = None

Geometry = collections.namedtuple(
    "Geometry",
    "batch height width out_h out_w kh kw strides padding dilation m_pad",
)
Geometry.__doc__ = """Static sizes of one deformable convolution.

`m_pad` is the number of flat output pixels the operands are padded to
(`batch * out_h * out_w` here; the Pallas kernels round it up to a tile).
"""


def geometry_terms(rows, k, dy, dx, m, geom):
    """Sampling terms of kernel point `k` for flat output pixels `rows`.

    Shared by the Pallas kernels (on `(block,)` vectors) and the XLA version
    (on whole arrays, `rows` and `k` broadcast against each other), so that
    both compute the same float32 arithmetic as the `keras.ops` reference.

    Returns `(top_left, ly, lx, weight, inside)`: the flat row of the top-left
    neighbour in the zero-padded input flattened to (B * (H + 2) * (W + 2),
    C), the fractional parts of the offsets, the mask where the sample lies
    inside `(-1, H) x (-1, W)` (else 0), and that inside flag.
    """
    per_image = geom.out_h * geom.out_w
    b = lax.div(rows, per_image)
    rem = rows - b * per_image
    oh = lax.div(rem, geom.out_w)
    ow = rem - oh * geom.out_w
    i = lax.div(k, geom.kw) if not isinstance(k, int) else k // geom.kw
    j = k - i * geom.kw
    base_h = oh * geom.strides[0] - geom.padding[0] + i * geom.dilation[0]
    base_w = ow * geom.strides[1] - geom.padding[1] + j * geom.dilation[1]
    # Integer and fractional parts are split first: the interpolation weights
    # stay exact in float32 (no rounding of `base + offset`).
    fy = jnp.floor(dy)
    fx = jnp.floor(dx)
    ly = dy - fy
    lx = dx - fx
    h0 = fy.astype(jnp.int32) + base_h
    w0 = fx.astype(jnp.int32) + base_w
    h = base_h.astype(jnp.float32) + dy
    w = base_w.astype(jnp.float32) + dx
    # DCNv2 zeroes a sample whose position lies outside (-1, H) x (-1, W).
    inside = (
        (h > -1.0) & (h < float(geom.height)) & (w > -1.0) & (w < float(geom.width))
    )
    weight = jnp.where(inside, m, jnp.zeros_like(m))
    # In the zero-padded input every neighbour of an inside sample lies in
    # [0, H + 1] x [0, W + 1]; the others are clipped there (weight 0).
    padded_w = geom.width + 2
    h0 = jnp.clip(h0 + 1, 0, geom.height)
    w0 = jnp.clip(w0 + 1, 0, geom.width)
    top_left = b * ((geom.height + 2) * padded_w) + h0 * padded_w + w0
    return top_left, ly, lx, weight, inside


def offset_and_mask_grads(sums, ly, lx, weight, inside):
    """Offset and mask gradients of every sample from its four neighbour sums.

    `sums[..., c]` is the sum over input channels of the column gradient
    times neighbour `c` (top-left, top-right, bottom-left, bottom-right). The
    other arguments are those of `geometry_terms`, shaped like one sum.
    Returns `(d_offsets, d_mask)` with a trailing axis (dy, dx) on the first.
    """
    s00, s01, s10, s11 = (sums[..., c] for c in range(4))
    bilinear = (
        (1.0 - ly) * (1.0 - lx) * s00 + (1.0 - ly) * lx * s01
        + ly * (1.0 - lx) * s10 + ly * lx * s11
    )
    d_mask = jnp.where(inside, bilinear, jnp.zeros_like(bilinear))
    d_dy = weight * ((1.0 - lx) * (s10 - s00) + lx * (s11 - s01))
    d_dx = weight * ((1.0 - ly) * (s01 - s00) + ly * (s11 - s10))
    return jnp.stack([d_dy, d_dx], axis=-1), d_mask


def checked_operands(x, offsets, mask, kernel, bias, strides, padding, dilation):
    """The operands as `jax.Array`s, the geometry as pairs and `(out_h, out_w)`.

    Raises the `ValueError` of `validate_deform_conv_args` for bad shapes.
    """
    strides, padding, dilation = conv_geometry(strides, padding, dilation)
    x, offsets, mask, kernel = (jnp.asarray(a) for a in (x, offsets, mask, kernel))
    out_size = validate_deform_conv_args(
        x.shape, offsets.shape, mask.shape, kernel.shape,
        None if bias is None else jnp.shape(bias), strides, padding, dilation,
    )
    return x, offsets, mask, kernel, (strides, padding, dilation), out_size


_WINDOW_GATHER = lax.GatherDimensionNumbers(
    offset_dims=(2, 3, 4), collapsed_slice_dims=(), start_index_map=(0, 1)
)
_WINDOW_SCATTER = lax.ScatterDimensionNumbers(
    update_window_dims=(2, 3, 4), inserted_window_dims=(),
    scatter_dims_to_operand_dims=(0, 1),
)


def corner_weights(ly, lx, weight):
    """Bilinear weights of the four neighbours times `weight` (the mask where inside)."""
    return (
        (1.0 - ly) * (1.0 - lx) * weight,
        (1.0 - ly) * lx * weight,
        ly * (1.0 - lx) * weight,
        ly * lx * weight,
    )


def _sampling(offsets, mask, geom):
    """Top-left rows (M, K), window starts (M, K, 2), the four corner weights (each (M, K)) and the terms.

    `top_left` indexes the zero-padded input flattened to
    (B * (H + 2) * (W + 2), C), `starts` the same neighbour in its
    (B * (H + 2), W + 2, C) view (`_window_starts`); the corner weights
    (top-left, top-right, bottom-left, bottom-right) include the mask.
    """
    num_points = geom.kh * geom.kw
    rows = jnp.arange(geom.m_pad, dtype=jnp.int32)[:, None]
    points = jnp.arange(num_points, dtype=jnp.int32)[None, :]
    top_left, ly, lx, weight, inside = geometry_terms(
        rows, points, offsets[:, 0::2], offsets[:, 1::2], mask, geom
    )
    sampling = (top_left, _window_starts(top_left, geom.width + 2),
                corner_weights(ly, lx, weight), (ly, lx, weight, inside))
    return lax.optimization_barrier(sampling) if TERMS_BARRIER else sampling


def _window_starts(top_left, padded_w):
    """(M, K, 2) row and column of each top-left neighbour in (B * (H + 2), W + 2)."""
    # Rows are never negative: truncating division is floor division here,
    # without the sign corrections of `//` and `%`, which XLA evaluates for
    # every gathered or scattered element.
    return jnp.stack([lax.div(top_left, padded_w), lax.rem(top_left, padded_w)], axis=-1)


def corner_grid(corners):
    """The four corner weights (each (M, K)) as one (M, K, 2, 2) array."""
    return jnp.stack(
        [jnp.stack(corners[:2], axis=-1), jnp.stack(corners[2:], axis=-1)], axis=-2
    )


def _scatter_windows(rows_shape, top_left, d_columns, grid, dtype=jnp.float32,
                     indices_are_sorted=False):
    """Input gradient: every sample's (2, 2, C) window summed into (B*(H+2), W+2, C).

    `d_columns` (M, K, C) is the column gradient in float32, `grid` (M, K, 2, 2)
    the corner weights (`corner_grid`), `top_left` (M, K) each sample's
    top-left neighbour's flat row; the sum is taken in `dtype`.
    """
    updates = d_columns[:, :, None, None, :] * grid[..., None]
    return lax.scatter_add(
        jnp.zeros(rows_shape, dtype), _window_starts(top_left, rows_shape[1]),
        updates.astype(dtype), _WINDOW_SCATTER, indices_are_sorted=indices_are_sorted,
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )


def _scatter_rows(rows_shape, top_left, d_columns, grid, dtype=jnp.float32):
    """As `_scatter_windows`, as one scatter-add of (M, K, C) rows per neighbour."""
    channels = rows_shape[-1]
    padded_w = rows_shape[1]
    flat = jnp.zeros((rows_shape[0] * padded_w, channels), dtype)
    for i in (0, 1):
        for j in (0, 1):
            flat = flat.at[top_left + (i * padded_w + j)].add(
                (d_columns * grid[:, :, i, j, None]).astype(dtype),
                mode="promise_in_bounds",
            )
    return flat.reshape(rows_shape)


def _rows_in_order(values, rows):
    """`values[rows]`, rows in bounds by construction (a sort's order).

    `jnp.take` would fill out-of-bounds rows, a bounds test per element of the
    gathered (S, C) gradient.
    """
    return values.at[rows].get(mode="promise_in_bounds")


def _sorted(keys):
    """`keys` in ascending order and the order that sorts them."""
    return lax.sort((keys, jnp.arange(keys.shape[0], dtype=jnp.int32)), num_keys=1)


def _scatter_sorted_windows(rows_shape, top_left, d_columns, grid, dtype=jnp.float32):
    """As `_scatter_windows`, with the samples sorted by their top-left neighbour first."""
    channels = rows_shape[-1]
    keys, order = _sorted(top_left.reshape(-1))
    # Gather the (S, C) gradients and (S, 2, 2) weights (not the 4x larger
    # products) in sorted order, as S samples of one kernel point each.
    return _scatter_windows(
        rows_shape, keys[:, None],
        _rows_in_order(d_columns.reshape(-1, channels), order)[:, None],
        _rows_in_order(grid.reshape(-1, 2, 2), order)[:, None],
        dtype, indices_are_sorted=True,
    )


def _scatter_sorted_rows(rows_shape, top_left, d_columns, grid, dtype=jnp.float32):
    """As `_scatter_windows`: one scatter-add of all four neighbours' rows, sorted by destination."""
    channels = rows_shape[-1]
    padded_w = rows_shape[1]
    corner_shift = jnp.array([0, 1, padded_w, padded_w + 1], jnp.int32)
    keys, order = _sorted((top_left.reshape(-1, 1) + corner_shift).reshape(-1))
    # Row `n` of the four-neighbour list is sample `n // 4`'s neighbour `n % 4`.
    updates = (
        _rows_in_order(d_columns.reshape(-1, channels), order // 4)
        * _rows_in_order(grid.reshape(-1), order)[:, None]
    )
    flat = jnp.zeros((rows_shape[0] * padded_w, channels), dtype).at[keys].add(
        updates.astype(dtype), indices_are_sorted=True, mode="promise_in_bounds"
    )
    return flat.reshape(rows_shape)


_SCATTERS = {
    "window": _scatter_windows,
    "rows": _scatter_rows,
    "sorted": _scatter_sorted_windows,
    "sortedrows": _scatter_sorted_rows,
}


def padded_rows(x):
    """(B, H, W, C) zero-padded by one pixel and viewed as (B * (H + 2), W + 2, C)."""
    batch, height, width, channels = x.shape
    return jnp.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)]).reshape(
        batch * (height + 2), width + 2, channels
    )


def _scatter_form(channels):
    """The input gradient's scatter: `SCATTER_FORM`, else by platform and channels."""
    if SCATTER_FORM is not None:
        return SCATTER_FORM
    if jax.default_backend() != "gpu":
        return "window"
    # H100, bf16, batch 32 (benchmarks/results/profile_dcn.md): sorting makes a
    # DLA-34 layer's forward+backward 7-24% shorter (128x128x64: 3.98 ->
    # 3.13 ms), but XLA:GPU's sorted scatter of (2, 2, 512) windows took
    # 18.1 ms (0.62 unsorted), where the sorted rows took 0.57.
    return "sorted" if channels <= 256 else "sortedrows"


def input_gradient(rows_shape, top_left, d_columns, grid, dtype=jnp.float32):
    """The input gradient's scatter-add in the form `_scatter_form` picks (see `_scatter_windows`)."""
    return _SCATTERS[_scatter_form(rows_shape[-1])](rows_shape, top_left, d_columns, grid, dtype)


def _gather_form():
    """"window" (one gather of 2x2 windows) or "rows" (one gather per neighbour)."""
    if GATHER_FORM is not None:
        return GATHER_FORM
    # XLA:CPU gathers rows 3-4x faster than 2x2 windows (128x128x64: 23-32 ms
    # against 101-123 ms on 2 cores); a GPU takes one window gather.
    return "rows" if jax.default_backend() == "cpu" else "window"


def _packable(x_rows):
    """Whether `PACKED_GATHER` applies: 2-byte values and an even number of channels."""
    return PACKED_GATHER and x_rows.dtype.itemsize == 2 and x_rows.shape[-1] % 2 == 0


def _gather_windows(x_rows, starts):
    """The (M, K, 2, 2, C) windows of `x_rows` at `starts` (M, K, 2)."""
    rows, cols, channels = x_rows.shape
    if not _packable(x_rows):
        return lax.gather(
            x_rows, starts, _WINDOW_GATHER, slice_sizes=(2, 2, channels),
            mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
        )
    # Channel pairs as one uint32 (the bitcast is exact both ways).
    packed = lax.bitcast_convert_type(
        x_rows.reshape(rows, cols, channels // 2, 2), jnp.uint32)
    window = lax.gather(
        packed, starts, _WINDOW_GATHER, slice_sizes=(2, 2, channels // 2),
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )
    return lax.bitcast_convert_type(window, x_rows.dtype).reshape(
        *window.shape[:-1], channels)


def _neighbours(x_rows, top_left, starts):
    """The four neighbours (top-left, top-right, bottom-left, bottom-right), each (M, K, C).

    `x_rows` is the zero-padded input viewed as (B * (H + 2), W + 2, C), in
    its own dtype; `top_left` the flat row of every top-left neighbour and
    `starts` its (row, column) in `x_rows` (`_window_starts`).
    """
    channels = x_rows.shape[-1]
    padded_w = x_rows.shape[1]
    if _gather_form() == "window":
        window = _gather_windows(x_rows, starts)
        return [window[:, :, i, j] for i in (0, 1) for j in (0, 1)]
    flat = x_rows.reshape(-1, channels)
    return [
        jnp.take(flat, top_left + (i * padded_w + j), axis=0, mode="clip")
        for i in (0, 1) for j in (0, 1)
    ]


def _mixed(neighbours, corners):
    """The four neighbours (each (M, K, C)) weighted by their corners (each (M, K)), summed in float32."""
    mixed = None
    # The reference's order of float32 sums (top-left first), so that the
    # columns are the same numbers.
    for value, corner in zip(neighbours, corners):
        term = value.astype(jnp.float32) * corner[..., None]
        mixed = term if mixed is None else mixed + term
    return mixed


def _neighbour_sums(factor, neighbours):
    """(M, K, 4): the channel sums of float32 `factor` times each neighbour (for `offset_and_mask_grads`)."""
    return jnp.stack(
        [jnp.sum(factor * value.astype(jnp.float32), axis=-1) for value in neighbours], axis=-1)


def _columns(x_rows, top_left, starts, corners, compute_dtype):
    """The (M, K * C) sampled columns, mixed in float32, in `compute_dtype`."""
    columns = _mixed(_neighbours(x_rows, top_left, starts), corners)
    return columns.astype(compute_dtype).reshape(columns.shape[0], -1)


def _pallas_fits(x_rows, kernel_matrix, geom, block_m):
    """Whether the Pallas kernels take these operands as they are (no padding).

    Their tiles need channels that are powers of two of at least 16 and a
    whole number of `block_m`-pixel tiles.
    """
    from keras_centernet.ops import deform_conv_jax

    def fits(n):
        return n == max(16, deform_conv_jax._next_power_of_2(n))

    return (fits(x_rows.shape[-1]) and fits(kernel_matrix.shape[-1])
            and geom.m_pad % block_m == 0)


def _pallas_forward(x_rows, offsets, mask, kernel_matrix, geom, keep_columns):
    """The fused Pallas forward's (M, Cout) output, or None where it does not apply."""
    if FORWARD != "pallas" or keep_columns:
        return None
    from keras_centernet.ops import deform_conv_jax

    cin = x_rows.shape[-1]
    cout = kernel_matrix.shape[-1]
    config = deform_conv_jax.DEFAULT_CONFIG
    if not _pallas_fits(x_rows, kernel_matrix, geom, config.block_m):
        return None
    call = deform_conv_jax.forward_call(
        geom, cin, cout, kernel_matrix.dtype, config,
        deform_conv_jax._default_precision(), jax.default_backend() != "gpu",
    )
    return call(x_rows.reshape(-1, cin), offsets, mask, kernel_matrix,
                jnp.zeros((cout,), jnp.float32))


def _forward(x_rows, offsets, mask, kernel_matrix, geom, keep_columns, kernel_first):
    """The (M, Cout) output and what `keep_columns` keeps (the columns, or the projection `z`)."""
    if kernel_first:
        return _kernel_first_forward(x_rows, offsets, mask, kernel_matrix, geom)
    out = _pallas_forward(x_rows, offsets, mask, kernel_matrix, geom, keep_columns)
    if out is not None:
        return out, None
    top_left, starts, corners, _ = _sampling(offsets, mask, geom)
    columns = _columns(x_rows, top_left, starts, corners, kernel_matrix.dtype)
    return jnp.matmul(columns, kernel_matrix), columns


# === Project first (`KERNEL_FIRST`) ===
# `z` is the zero-padded input projected by every kernel point's matrix,
# (B * (H + 2), W + 2, K, Cout): sample (m, k) reads the 2x2 window of slice k
# at its top-left neighbour.
_POINT_WINDOW_GATHER = lax.GatherDimensionNumbers(
    offset_dims=(2, 3, 4), collapsed_slice_dims=(2,), start_index_map=(0, 1, 2)
)
_POINT_WINDOW_SCATTER = lax.ScatterDimensionNumbers(
    update_window_dims=(2, 3, 4), inserted_window_dims=(2,),
    scatter_dims_to_operand_dims=(0, 1, 2),
)


def _kernel_first(geom, cin, cout, differentiated):
    """Whether to project first: `KERNEL_FIRST`, else by how `z`'s size compares with the columns'.

    The columns hold `M * K * Cin` values (M output pixels), `z` holds
    `(B * (H + 2) * (W + 2)) * K * Cout`. On an H100 (batch 32, 512 px
    shapes of DLA-34 and ResNet-18-DCN, float32 and bf16) the forward alone
    was faster projected first wherever `z` is smaller (128->64 at 64x64:
    0.64 -> 0.33 ms in bf16; the Cin = Cout layers, whose padded `z` is
    larger, were slower in float32), the forward+backward only where `z` is
    at most a third of the columns (256->64 at 32x32: 0.96 -> 0.78 ms in
    bf16, 1.52 -> 0.89 in float32; 128->64 at 64x64: 1.88 -> 2.13 in bf16).
    """
    if KERNEL_FIRST is not None:
        return bool(KERNEL_FIRST)
    z_size = geom.batch * (geom.height + 2) * (geom.width + 2) * cout
    columns_size = geom.m_pad * cin
    return 3 * z_size <= columns_size if differentiated else z_size < columns_size


def _point_matrix(kernel_matrix, num_points):
    """The (K * Cin, Cout) kernel as (Cin, K * Cout): `z = x @ W` for every kernel point at once."""
    cin = kernel_matrix.shape[0] // num_points
    cout = kernel_matrix.shape[-1]
    return kernel_matrix.reshape(num_points, cin, cout).transpose(1, 0, 2).reshape(
        cin, num_points * cout)


def _projected(x_rows, kernel_matrix, num_points):
    """`z` (B * (H + 2), W + 2, K, Cout) in the dtype of `kernel_matrix`."""
    rows, cols, cin = x_rows.shape
    z = jnp.matmul(x_rows.reshape(-1, cin).astype(kernel_matrix.dtype),
                   _point_matrix(kernel_matrix, num_points))
    return z.reshape(rows, cols, num_points, -1)


def _point_starts(top_left, points, cols):
    """(..., 3): each sample's top-left neighbour (row, column) in `z` and its kernel point."""
    points = jnp.broadcast_to(points, top_left.shape)
    return jnp.concatenate([_window_starts(top_left, cols), points[..., None]], axis=-1)


def _projected_neighbours(z, top_left):
    """The four neighbours (as `_neighbours`) of every sample in its kernel point's slice of `z`, each (M, K, Cout)."""
    rows, cols, num_points, cout = z.shape
    if _gather_form() == "window":
        window = lax.gather(
            z, _point_starts(top_left, jnp.arange(num_points, dtype=jnp.int32), cols),
            _POINT_WINDOW_GATHER,
            slice_sizes=(2, 2, 1, cout), mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
        )
        return [window[:, :, i, j] for i in (0, 1) for j in (0, 1)]
    flat = z.reshape(-1, cout)
    points = jnp.arange(num_points, dtype=jnp.int32)
    return [
        jnp.take(flat, (top_left + (i * cols + j)) * num_points + points, axis=0, mode="clip")
        for i in (0, 1) for j in (0, 1)
    ]


def _kernel_first_forward(x_rows, offsets, mask, kernel_matrix, geom):
    """The (M, Cout) output as the corner-weighted sum of `z`'s windows, and `z`."""
    top_left, _, corners, _ = _sampling(offsets, mask, geom)
    z = _projected(x_rows, kernel_matrix, geom.kh * geom.kw)
    mixed = _mixed(_projected_neighbours(z, top_left), corners)
    return jnp.sum(mixed, axis=1).astype(kernel_matrix.dtype), z


def _scatter_projected(z_shape, top_left, g, grid, dtype=jnp.float32):
    """`dz`: every sample's (2, 2) window of output gradient times its corner weights, summed into `z`'s shape.

    `g` (M, Cout) is the output gradient in float32, `grid` (M, K, 2, 2) the
    corner weights; the scatter takes `_scatter_form`'s form (sorted by
    destination on a GPU), the sum is taken in `dtype`.
    """
    rows, cols, num_points, cout = z_shape
    form = _scatter_form(cout)
    points = jnp.arange(num_points, dtype=jnp.int32)
    if form in ("rows", "sortedrows"):
        # Flat rows of z viewed as (B * (H + 2) * (W + 2) * K, Cout).
        shifts = jnp.array([0, 1, cols, cols + 1], jnp.int32)
        dest = (top_left[..., None] + shifts) * num_points + points[:, None]  # (M, K, 4)
        sample = jnp.broadcast_to(jnp.arange(g.shape[0], dtype=jnp.int32)[:, None, None], dest.shape)
        dest, sample, weights = dest.reshape(-1), sample.reshape(-1), grid.reshape(-1)
        if form == "sortedrows":
            dest, order = _sorted(dest)
            sample, weights = _rows_in_order(sample, order), _rows_in_order(weights, order)
        updates = _rows_in_order(g, sample) * weights[:, None]
        flat = jnp.zeros((rows * cols * num_points, cout), dtype).at[dest].add(
            updates.astype(dtype), indices_are_sorted=form == "sortedrows",
            mode="promise_in_bounds",
        )
        return flat.reshape(z_shape)
    if form == "sorted":
        # Sample s = m * K + k, sorted by its destination (top-left, k).
        keys, order = _sorted((top_left * num_points + points).reshape(-1))
        starts = _point_starts(lax.div(keys, num_points), lax.rem(keys, num_points), cols)[:, None]
        g_rows = _rows_in_order(g, lax.div(order, num_points))[:, None]  # (S, 1, Cout)
        grid = _rows_in_order(grid.reshape(-1, 2, 2), order)[:, None]  # (S, 1, 2, 2)
    else:
        starts = _point_starts(top_left, points, cols)  # (M, K, 3)
        g_rows = jnp.broadcast_to(g[:, None], (g.shape[0], num_points, cout))
    updates = g_rows[:, :, None, None, :] * grid[..., None]
    return lax.scatter_add(
        jnp.zeros(z_shape, dtype), starts, updates.astype(dtype), _POINT_WINDOW_SCATTER,
        indices_are_sorted=form == "sorted", mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )


def _kernel_first_backward(x_rows, offsets, mask, kernel_matrix, g, geom, z=None):
    """`(d_x_rows, d_offsets, d_mask, d_kernel)` of the projected form (`z` recomputed unless given)."""
    num_points = geom.kh * geom.kw
    top_left, _, corners, terms = _sampling(offsets, mask, geom)
    if z is None:
        z = _projected(x_rows, kernel_matrix, num_points)
    g32 = g.astype(jnp.float32)
    sums = _neighbour_sums(g32[:, None, :], _projected_neighbours(z, top_left))
    d_offsets, d_mask = offset_and_mask_grads(sums, *terms)
    d_z = _scatter_projected(
        z.shape, top_left, g32, corner_grid(corners),
        jnp.float32 if SCATTER_DTYPE is None else x_rows.dtype,
    ).astype(kernel_matrix.dtype).reshape(-1, num_points * z.shape[-1])
    matrix = _point_matrix(kernel_matrix, num_points)
    cin = x_rows.shape[-1]
    d_x = jnp.matmul(d_z, matrix.T).reshape(x_rows.shape)
    d_matrix = jnp.matmul(x_rows.reshape(-1, cin).astype(kernel_matrix.dtype).T, d_z)
    d_kernel = d_matrix.reshape(cin, num_points, -1).transpose(1, 0, 2).reshape(kernel_matrix.shape)
    return d_x, d_offsets, d_mask, d_kernel


# `kernel_first` is a pair: projected first in a forward pass alone (the
# primal, which JAX runs when nothing differentiates it), and in a
# differentiated one (the fwd and bwd rules). Both compute the same function.
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _deform_matmul(x_rows, offsets, mask, kernel_matrix, geom, keep_columns, kernel_first):
    return _forward(x_rows, offsets, mask, kernel_matrix, geom, keep_columns, kernel_first[0])[0]


def _deform_matmul_fwd(x_rows, offsets, mask, kernel_matrix, geom, keep_columns, kernel_first):
    out, columns = _forward(x_rows, offsets, mask, kernel_matrix, geom, keep_columns,
                            kernel_first[1])
    kept = columns if keep_columns else None
    return out, (x_rows, offsets, mask, kernel_matrix, kept)


def _pallas_backward(x_rows, offsets, mask, kernel_matrix, g, geom, keep_columns):
    """`(d_columns, sums, d_kernel)` from the Pallas backward kernel, or None where it does not apply.

    `d_columns` (M, K, C) float32 (rounded to the compute dtype, as XLA's
    matmul rounds it), `sums` (M, K, 4) float32, as `_deform_matmul_bwd`
    forms them with XLA; `d_kernel` float32.
    """
    if BACKWARD != "pallas" or keep_columns:
        return None
    from keras_centernet.ops import deform_conv_jax

    config = deform_conv_jax.DEFAULT_CONFIG
    if not _pallas_fits(x_rows, kernel_matrix, geom, config.bwd_block_m):
        return None
    cin = x_rows.shape[-1]
    call = deform_conv_jax.backward_columns_call(
        geom, cin, kernel_matrix.shape[-1], kernel_matrix.dtype, config,
        deform_conv_jax._default_precision(), jax.default_backend() != "gpu",
    )
    d_columns, sums, d_kernel = call(
        x_rows.reshape(-1, cin), offsets, mask, kernel_matrix, g)
    return (
        d_columns.reshape(geom.m_pad, geom.kh * geom.kw, cin).astype(jnp.float32),
        deform_conv_jax.neighbour_sums(sums, geom),
        jnp.sum(d_kernel, axis=0),
    )


def column_work(x_rows, top_left, starts, corners, kernel_matrix, g, columns=None):
    """The backward's work on the columns, with XLA: `(d_columns, sums, d_kernel)`.

    `d_columns = g @ W^T` (M, K, Cin) in the compute dtype's values, as float32; `sums`
    (M, K, 4) its channel sums times each neighbour (for `offset_and_mask_grads`);
    `d_kernel = columns^T @ g`. The columns are sampled again unless given. The other
    arguments are `_sampling`'s and `_deform_matmul`'s.
    """
    if columns is None:
        columns = _columns(x_rows, top_left, starts, corners, kernel_matrix.dtype)
    d_kernel = jnp.matmul(columns.T, g)
    d_columns = jnp.matmul(g, kernel_matrix.T).reshape(*top_left.shape, x_rows.shape[-1])
    d_columns = d_columns.astype(jnp.float32)
    sums = _neighbour_sums(d_columns, _neighbours(x_rows, top_left, starts))
    return d_columns, sums, d_kernel


def _column_backward(x_rows, offsets, mask, kernel_matrix, g, geom, columns, keep_columns):
    """`(d_x_rows, d_offsets, d_mask, d_kernel)` of the column form (columns sampled again unless kept)."""
    top_left, starts, corners, terms = _sampling(offsets, mask, geom)
    fused = _pallas_backward(x_rows, offsets, mask, kernel_matrix, g, geom, keep_columns)
    if fused is not None:
        d_columns, sums, d_kernel = fused
    else:
        d_columns, sums, d_kernel = column_work(
            x_rows, top_left, starts, corners, kernel_matrix, g, columns)
    d_offsets, d_mask = offset_and_mask_grads(sums, *terms)
    d_x = input_gradient(
        x_rows.shape, top_left, d_columns, corner_grid(corners),
        jnp.float32 if SCATTER_DTYPE is None else x_rows.dtype,
    )
    return d_x, d_offsets, d_mask, d_kernel


def _deform_matmul_bwd(geom, keep_columns, kernel_first, residuals, g):
    x_rows, offsets, mask, kernel_matrix, kept = residuals
    g = g.astype(kernel_matrix.dtype)
    if kernel_first[1]:
        grads = _kernel_first_backward(x_rows, offsets, mask, kernel_matrix, g, geom, kept)
    else:
        grads = _column_backward(x_rows, offsets, mask, kernel_matrix, g, geom, kept,
                                 keep_columns)
    d_x, d_offsets, d_mask, d_kernel = grads
    return (
        d_x.astype(x_rows.dtype),
        d_offsets.reshape(offsets.shape),
        d_mask,
        d_kernel.astype(kernel_matrix.dtype),
    )


_deform_matmul.defvjp(_deform_matmul_fwd, _deform_matmul_bwd)


def deform_conv2d(x, offsets, mask, kernel, bias=None, strides=1, padding=1,
                  dilation=1, keep_columns=None):
    """Modulated deformable 2D convolution (DCNv2) with a hand-written gradient.

    The same function as `keras_centernet.ops.deform_conv.deform_conv2d`
    (see there for the sampling rule and the layouts), for `jax.Array`
    inputs of static shape: the bilinear weights and the mixing of the four
    neighbours are float32, the matmul runs in the dtype of `kernel` (the
    compute dtype under mixed precision) as in the reference. The gradient
    differs from the reference's automatic one only in the order of float32
    additions (the input gradient is a scatter-add, so its last bits may vary
    between runs on a GPU).

    Args:
        x: array (B, H, W, Cin). The input; gathered in its own dtype.
        offsets: array (B, Ho, Wo, 2 * kh * kw), (dy, dx) per kernel point.
        mask: array (B, Ho, Wo, kh * kw). Modulation, already in (0, 1).
        kernel: array (kh, kw, Cin, Cout).
        bias: optional array (Cout,).
        strides: int or pair. Defaults to 1.
        padding: int or pair. Defaults to 1.
        dilation: int or pair. Defaults to 1.
        keep_columns: bool. Keep the forward pass's sampled columns
            (`B * Ho * Wo * kh * kw * Cin` values in the dtype of `kernel`) for
            the kernel gradient instead of sampling them again in the
            backward pass: one sampling less, the columns' memory more
            (projected first, `KERNEL_FIRST`, the projection `z` is kept
            instead of computed again). Defaults to the module's
            `KEEP_COLUMNS` (False).

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
    >>> y = deform_conv2d(x, offsets, mask, kernel)
    >>> expected = reference.deform_conv2d(x, offsets, mask, kernel, implementation="reference")
    >>> bool(np.allclose(y, expected, atol=1e-4))
    True
    """
    x, offsets, mask, kernel, (strides, padding, dilation), (out_h, out_w) = (
        checked_operands(x, offsets, mask, kernel, bias, strides, padding, dilation)
    )
    batch, height, width, cin = x.shape
    kh, kw, _, cout = kernel.shape
    num_pixels = batch * out_h * out_w
    geom = Geometry(
        batch, height, width, out_h, out_w, kh, kw, strides, padding, dilation,
        num_pixels,
    )
    x_rows = padded_rows(x)
    if PAD_BARRIER:
        x_rows = lax.optimization_barrier(x_rows)
    y = _deform_matmul(
        x_rows,
        offsets.astype(jnp.float32).reshape(num_pixels, 2 * kh * kw),
        mask.astype(jnp.float32).reshape(num_pixels, kh * kw),
        kernel.reshape(kh * kw * cin, cout),
        geom,
        bool(KEEP_COLUMNS if keep_columns is None else keep_columns),
        (_kernel_first(geom, cin, cout, False), _kernel_first(geom, cin, cout, True)),
    )
    if bias is not None:
        y = y + jnp.asarray(bias).astype(y.dtype)
    return y.reshape(batch, out_h, out_w, cout)
