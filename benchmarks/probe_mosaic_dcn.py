"""Could a Mosaic GPU kernel run a DCN layer faster than XLA? Four probes (issue 10).

The deformable convolution's remaining route to "forward+backward <= 3x a plain conv"
(`results/profile_dcn.md` section 10) is a Hopper kernel that copies each sample's (2, 2, Cin)
window of the zero-padded input into shared memory with the Tensor Memory Accelerator and
feeds the tensor cores from there, so that the (M, 9 Cin) column tensor never reaches global
memory. Hopper's TMA has no row gather, so such a kernel issues one box copy per sample: 4.7
million at DLA-34's 128x128x64 layers (batch 32, nine kernel points). All cases use the
windows `implementation="xla"` samples for the benchmarks' inputs (`deform_conv.make_inputs`:
offsets N(0, 1.5) px; window starts and corner weights from `deform_conv_xla._sampling`).

Gathering every window into an `(S, 2, 2, C)` array in global memory:

* `gather: xla`: the XLA DCN's own window gather (`deform_conv_xla._gather_windows`);
* `gather: tma Bn`: a Mosaic GPU kernel, one program per block of `n` samples: one TMA box
  copy per sample into shared memory (window starts read as scalars from global memory), one
  wait on a barrier counting the block's copies, one TMA store of the block.

The layer's forward, from the padded input, offsets, mask and kernel:

* `forward: conv`: a plain 3x3 convolution of the same shape, for scale;
* `forward: xla`: `implementation="xla"`'s forward (sampling terms, columns, one matmul);
* `forward: mosaic Tn`: the sampling terms by XLA, then `mosaic_forward`: one program per
  `n` output pixels, window copies per kernel point into two buffers, mixing in registers,
  `wgmma` into a float32 accumulator; no column tensor in global memory. One TMA copy a
  window leaves bank conflicts when a neighbour is read; `4 copies a window` (one per
  neighbour row, into a swizzled buffer) has none. `columns in registers`: the mixed block
  handed to `wgmma` in registers, not through shared memory.

The backward's work on the columns, from the same and an output gradient `g`: the column
gradient `g @ W^T` (in bf16, for the input gradient's scatter), the four channel sums of it
times each neighbour (for the offset and mask gradients) and the kernel gradient:

* `backward: conv`: a plain 3x3 convolution's input and kernel gradients, for scale;
* `backward: xla`: `implementation="xla"`'s way (columns sampled again, two matmuls, a
  gathering reduction);
* `backward: mosaic Tn Pp`: the sampling terms by XLA, then `mosaic_backward`: `p` programs
  per kernel point, each over its share of the tiles of `n` pixels, `dW_k` kept in a wgmma
  accumulator, the columns mixed in shared memory and never written out.

The copies alone (`copies: Bn`): one TMA copy per window into shared memory and only each
block's first window written back, with or without the warpgroup barrier Pallas puts before
each copy; their issue rate without the gather's writes.

Gathers and copies are checked against `gather: xla` element for element, forwards and
backwards against the xla case to within bf16 rounding. On an H100 (JAX 0.11.2;
`results/probe_mosaic_dcn.md`) the copies alone took longer than XLA's column sampling, every
fused kernel was slower than XLA's, and those with one copy per window gave wrong values there
(right ones in the interpreter). Needs a Hopper GPU and JAX's Pallas Mosaic GPU
(`jax.experimental.pallas.mosaic_gpu`); a case that does not build says why in the table
instead of a time. `--interpret` runs the kernels in Pallas' Mosaic GPU interpreter on a CPU.

    KERAS_BACKEND=jax python benchmarks/probe_mosaic_dcn.py --output results/probe_mosaic_dcn.md
"""

import argparse
import os
import sys
import traceback

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import deform_conv  # noqa: E402
from keras_centernet.ops import deform_conv_xla as xla  # noqa: E402


def forward_inputs(batch, size, channels, seed=0):
    """`(x_rows, offsets, mask, kernel_matrix, geom)` of a 3x3 DCN layer in bf16, from the
    benchmarks' inputs: `x_rows` is the padded input as `(B * (H + 2), W + 2, C)` rows."""
    x, offsets, mask, kernel, _ = deform_conv.make_inputs(
        np.random.default_rng(seed), batch, size, channels, channels)
    geom = deform_conv.same_geometry(batch, size, size)
    return (xla.padded_rows(jnp.asarray(x, jnp.bfloat16)), jnp.asarray(offsets).reshape(-1, 18),
            jnp.asarray(mask).reshape(-1, 9),
            jnp.asarray(kernel, jnp.bfloat16).reshape(9 * channels, channels), geom)


def sampling_terms(offsets, mask, geom):
    """`(starts, corners)`: the `(M, 9, 2)` window starts in the padded rows and the
    `(M, 9, 4)` corner weights (mask included) that `implementation="xla"` samples with."""
    _, starts, corners, _ = xla._sampling(offsets, mask, geom)
    return starts, jnp.stack(corners, axis=-1)


def _with_sampling(geom, kernel):
    """`kernel(x_rows, starts, corners, *rest)` as a function of the offsets and mask."""
    def run(x_rows, offsets, mask, *rest):
        return kernel(x_rows, *sampling_terms(offsets, mask, geom), *rest)

    return run


def _padded_to_16_bytes(rows):
    """int32 `rows` with the last axis padded to a multiple of 4: a TMA copy's strides are
    multiples of 16 bytes."""
    width = rows.shape[-1]
    return jnp.pad(rows, [(0, 0)] * (rows.ndim - 1) + [(0, -width % 4)])


def _launch(interpret, auto_barriers=True):
    """`plgpu.kernel` options: Pallas' interpreter (on a CPU), and no automatic barriers."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    options = {"interpret": _interpret_params()} if interpret else {}
    if not auto_barriers:
        options["compiler_params"] = plgpu.CompilerParams(unsafe_no_auto_barriers=True)
    return options


def xla_gather(x_rows, starts):
    windows = xla._gather_windows(x_rows, starts)
    return windows.reshape(-1, *windows.shape[2:])


def tma_gather(block, interpret=False):
    """The Mosaic GPU gather: one TMA box copy per sample, `block` samples per program.

    `interpret=True` runs it in Pallas' Mosaic GPU interpreter (on a CPU, to check it).
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    def run(x_rows, starts):
        starts = starts.reshape(-1, 2)
        samples = starts.shape[0]
        channels = x_rows.shape[-1]
        if samples % block:
            raise ValueError(f"{samples} samples are not a whole number of blocks of {block}")

        def body(starts_ref, x_ref, out_ref, windows, copied):
            first = lax.axis_index("blocks") * block

            @pl.loop(0, block)
            def _issue(i):
                s = first + i
                src = x_ref.at[pl.ds(starts_ref[s, 0], 2), pl.ds(starts_ref[s, 1], 2)]
                plgpu.copy_gmem_to_smem(src, windows.at[i], copied)

            plgpu.barrier_wait(copied)
            plgpu.copy_smem_to_gmem(windows, out_ref.at[pl.ds(first, block)])
            plgpu.wait_smem_to_gmem(0)

        return plgpu.kernel(
            body,
            out_type=jax.ShapeDtypeStruct((samples, 2, 2, channels), x_rows.dtype),
            scratch_types=(plgpu.SMEM((block, 2, 2, channels), x_rows.dtype),
                           plgpu.Barrier(num_arrivals=block)),
            grid=(samples // block,),
            grid_names=("blocks",),
            **_launch(interpret),
        )(starts, x_rows)

    return run


def tma_copies(block, auto_barriers=True, interpret=False):
    """The copies alone: one TMA box copy per window into shared memory, nothing written back
    but each block's first window (to check). The block's window starts come to shared
    memory in one copy first. `auto_barriers=False` drops the warpgroup barrier Pallas puts
    before every copy (`CompilerParams.unsafe_no_auto_barriers`; safe here: no buffer is
    read and then written again). Measures how fast copies issue, without the gather's 2.4 GB
    of writes.
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    def run(x_rows, starts):
        starts = starts.reshape(-1, 2)
        samples = starts.shape[0]
        if samples % block:
            raise ValueError(f"{samples} samples are not a whole number of blocks of {block}")
        blocks = samples // block
        block_starts = _padded_to_16_bytes(starts).reshape(blocks, block, -1)

        def body(starts_ref, x_ref, out_ref, starts_s, windows, loaded, copied):
            b = lax.axis_index("blocks")
            plgpu.copy_gmem_to_smem(starts_ref.at[b], starts_s, loaded)
            plgpu.barrier_wait(loaded)

            @pl.loop(0, block)
            def _issue(i):
                src = x_ref.at[pl.ds(starts_s[i, 0], 2), pl.ds(starts_s[i, 1], 2)]
                plgpu.copy_gmem_to_smem(src, windows.at[i], copied)

            plgpu.barrier_wait(copied)
            plgpu.copy_smem_to_gmem(windows.at[0], out_ref.at[b])
            plgpu.wait_smem_to_gmem(0)

        return plgpu.kernel(
            body,
            out_type=jax.ShapeDtypeStruct((blocks, 2, 2, x_rows.shape[-1]), x_rows.dtype),
            scratch_types=(plgpu.SMEM((block, 4), jnp.int32),
                           plgpu.SMEM((block, 2, 2, x_rows.shape[-1]), x_rows.dtype),
                           plgpu.Barrier(num_arrivals=1), plgpu.Barrier(num_arrivals=block)),
            grid=(blocks,),
            grid_names=("blocks",),
            **_launch(interpret, auto_barriers),
        )(block_starts, x_rows)

    return run


def _swizzled(minor, dtype):
    """Tiling and swizzle transforms for shared memory of `minor` elements a row."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    bits = jnp.dtype(dtype).itemsize * 8
    swizzle = plgpu.find_swizzle(minor * bits)
    return (plgpu.TilingTransform((8, swizzle * 8 // bits)), plgpu.SwizzleTransform(swizzle))


class _Windows:
    """How a Mosaic GPU kernel brings a tile's `(2, 2, Cin)` windows of one kernel point into
    shared memory and reads their neighbours, shared by `mosaic_forward` and
    `mosaic_backward`.

    One TMA box copy per window (`neighbour_copies=False`) lands each window as `8 * Cin`
    contiguous bytes, a multiple of the banks' 128: a warp reading one neighbour of eight
    windows hits the same banks (Mosaic GPU refuses that load unless `optimized=False`). One
    copy per neighbour row (`neighbour_copies=True`, Cin a multiple of 64 so that a copy moves
    a multiple of 128 bytes) fills row `i` of the neighbour's `(tile, Cin)` block of a
    swizzled buffer, which a warp reads without conflicts, at four times the copies.
    """

    def __init__(self, tile, x_rows, neighbour_copies, interpret):
        from jax.experimental.pallas import mosaic_gpu as plgpu

        self.tile = tile
        self.channels = x_rows.shape[-1]
        self.padded_w = x_rows.shape[1]
        self.dtype = x_rows.dtype
        self.neighbour_copies = neighbour_copies
        self.interpret = interpret
        if neighbour_copies and self.channels % 64:
            raise ValueError(f"neighbour copies need channels a multiple of 64: {self.channels}")
        self.copies = 4 * tile if neighbour_copies else tile  # a buffer's barrier arrivals
        self.layout = plgpu.Layout.WGMMA

    def source(self, x_rows):
        """The global-memory operand the copies read: `x_rows`, or one row per pixel."""
        return x_rows.reshape(-1, self.channels) if self.neighbour_copies else x_rows

    def buffer(self, slots):
        """`slots` window buffers in shared memory."""
        from jax.experimental.pallas import mosaic_gpu as plgpu

        if not self.neighbour_copies:
            return plgpu.SMEM((slots, self.tile, 2, 2, self.channels), self.dtype)
        # Swizzled, not tiled: a copy fills one row of a neighbour's block (Pallas slices a
        # tiled buffer only at whole tiles of 8 rows).
        return plgpu.SMEM((slots, 4, self.tile, self.channels), self.dtype,
                          transforms=_swizzled(self.channels, self.dtype)[1:])

    def issue(self, x_ref, starts_s, k, windows, arrived):
        """Copy kernel point `k`'s windows of the tile (starts in `starts_s`) into `windows`."""
        from jax.experimental import pallas as pl
        from jax.experimental.pallas import mosaic_gpu as plgpu

        @pl.loop(0, self.tile)
        def _copy(i):
            row, col = starts_s[i, 2 * k], starts_s[i, 2 * k + 1]
            if not self.neighbour_copies:
                plgpu.copy_gmem_to_smem(x_ref.at[pl.ds(row, 2), pl.ds(col, 2)],
                                        windows.at[i], arrived)
                return
            top_left = row * self.padded_w + col
            for corner, shift in enumerate((0, 1, self.padded_w, self.padded_w + 1)):
                plgpu.copy_gmem_to_smem(x_ref.at[pl.ds(top_left + shift, 1)],
                                        windows.at[corner, pl.ds(i, 1)], arrived)

    def neighbour(self, windows, corner):
        """Neighbour `corner` (top-left, top-right, bottom-left, bottom-right) of every window,
        `(tile, Cin)` float32 in registers."""
        if self.neighbour_copies:
            value = _load(windows.at[corner], self.layout, self.interpret)
        else:
            a, b = divmod(corner, 2)
            value = _load(windows.at[:, a, b, :], self.layout, self.interpret, optimized=False)
        return value.astype(jnp.float32)

    def mix(self, windows, corner_rows):
        """The `(tile, Cin)` float32 columns: the neighbours times `corner_rows(c)`, each a
        `(tile,)` row of weights, summed in the reference's order (top-left first)."""
        mixed = None
        for corner in range(4):
            term = self.neighbour(windows, corner) * lax.broadcast_in_dim(
                corner_rows(corner), (self.tile, self.channels), [0])
            mixed = term if mixed is None else mixed + term
        return mixed


def _tile_terms(starts, corners, tile):
    """Per tile of `tile` pixels: the window starts as `(tile, 2K)` int32 rows (padded to 16
    bytes, the TMA's stride unit), and the corner weights as `(4K, tile)` float32 rows, so that
    corner `c` of point `k` is row `4k + c`."""
    samples, points, _ = starts.shape
    if samples % tile:
        raise ValueError(f"{samples} output pixels are not a whole number of tiles of {tile}")
    tiles = samples // tile
    tile_starts = _padded_to_16_bytes(starts.reshape(samples, 2 * points))
    tile_corners = corners.reshape(tiles, tile, 4 * points).transpose(0, 2, 1)
    return tile_starts.reshape(tiles, tile, -1), tile_corners


def _row_loader(corners_s, interpret):
    """`(tile,)` rows of `corners_s` in registers, laid out to broadcast over a tile's rows."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return lambda row: _load(corners_s.at[row], plgpu.Layout.WGMMA.reduce(1), interpret)


def mosaic_forward(tile, interpret=False, registers=False, neighbour_copies=False):
    """A fused DCN forward as one Mosaic GPU kernel: no column tensor in global memory.

    One program per `tile` output pixels (a multiple of 64, one warpgroup). It copies the
    tile's window starts and corner weights and the whole `(K, Cin, Cout)` kernel into
    shared memory once; then, for each kernel point `k`, TMA copies bring the tile's windows
    into shared memory (point `k + 1`'s copies are issued before point `k` is mixed, two
    buffers; `_Windows`), the four neighbours are mixed in float32 in registers with the
    corner weights, rounded to the kernel's dtype and stored as the `(tile, Cin)` column
    block, and `wgmma` adds that block times `W_k` into the float32 accumulator. The columns
    are those of `deform_conv_xla._columns` (same float32 sums, same rounding).
    `registers=True` hands the block to `wgmma` in registers instead (no shared-memory
    store; each `wgmma` is then awaited before the next block is mixed). Pallas' interpreter
    has no `wgmma` from registers.

    Returns `run(x_rows, starts, corners, kernel_matrix)`: `x_rows` the zero-padded input
    as `(B * (H + 2), W + 2, Cin)` rows, `starts` `(M, K, 2)` window starts in it, `corners`
    `(M, K, 4)` float32 corner weights (top-left, top-right, bottom-left, bottom-right, mask
    included), `kernel_matrix` `(K * Cin, Cout)`; the output is `(M, Cout)`.
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    if tile % 64:
        raise ValueError(f"tile must be a multiple of 64 (one warpgroup's wgmma rows), got {tile}")
    if interpret and registers:
        raise ValueError("Pallas' Mosaic GPU interpreter has no wgmma from registers")

    def run(x_rows, starts, corners, kernel_matrix):
        samples, points, _ = starts.shape
        channels = x_rows.shape[-1]
        cout = kernel_matrix.shape[-1]
        dtype = kernel_matrix.dtype
        if x_rows.dtype != dtype:
            raise ValueError(f"input dtype {x_rows.dtype} differs from the kernel's {dtype}")
        tile_starts, tile_corners = _tile_terms(starts, corners, tile)
        tiles = samples // tile
        weights = kernel_matrix.reshape(points, channels, cout)
        win = _Windows(tile, x_rows, neighbour_copies, interpret)

        def body(x_ref, starts_ref, corners_ref, w_ref, out_ref,
                 starts_s, corners_s, w_s, windows, columns, out_s, loaded, arrived):
            t = lax.axis_index("tiles")
            plgpu.copy_gmem_to_smem(starts_ref.at[t], starts_s, loaded)
            plgpu.copy_gmem_to_smem(corners_ref.at[t], corners_s, loaded)
            plgpu.copy_gmem_to_smem(w_ref, w_s, loaded)
            plgpu.barrier_wait(loaded)
            row = _row_loader(corners_s, interpret)

            def accumulate(acc):
                win.issue(x_ref, starts_s, 0, windows.at[0], arrived.at[0])
                for k in range(points):
                    slot = k % 2
                    if k + 1 < points:
                        win.issue(x_ref, starts_s, k + 1, windows.at[1 - slot],
                                  arrived.at[1 - slot])
                    plgpu.barrier_wait(arrived.at[slot])
                    mixed = win.mix(windows.at[slot], lambda c: row(4 * k + c))
                    if registers:
                        plgpu.wgmma(acc, mixed.astype(dtype), w_s.at[k])
                        plgpu.wgmma_wait(0)
                        continue
                    columns[slot] = mixed.astype(dtype)
                    plgpu.commit_smem()
                    plgpu.wgmma(acc, columns.at[slot], w_s.at[k])
                    # At most one wgmma in flight: the next point's block goes to the other
                    # buffer, and this one is free again two points later.
                    plgpu.wgmma_wait(1)
                plgpu.wgmma_wait(0)
                out_s[...] = acc[...].astype(dtype)

            pl.run_scoped(accumulate, plgpu.ACC((tile, cout), jnp.float32))
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(out_s, out_ref.at[pl.ds(t * tile, tile)])
            plgpu.wait_smem_to_gmem(0)

        return plgpu.kernel(
            body,
            out_type=jax.ShapeDtypeStruct((samples, cout), dtype),
            scratch_types=(
                plgpu.SMEM(tile_starts.shape[1:], jnp.int32),
                plgpu.SMEM((4 * points, tile), jnp.float32),
                # wgmma needs one swizzle for both operands.
                plgpu.SMEM((points, channels, cout), dtype,
                           transforms=_swizzled(min(channels, cout), dtype)),
                win.buffer(2),
                plgpu.SMEM((2, tile, channels), dtype,
                           transforms=_swizzled(min(channels, cout), dtype)),
                plgpu.SMEM((tile, cout), dtype, transforms=_swizzled(cout, dtype)),
                plgpu.Barrier(num_arrivals=3),
                plgpu.Barrier(num_arrivals=win.copies, num_barriers=2),
            ),
            grid=(tiles,),
            grid_names=("tiles",),
            **_launch(interpret),
        )(win.source(x_rows), tile_starts, tile_corners, weights)

    return run


def mosaic_backward(tile, parts, interpret=False, neighbour_copies=False):
    """The backward's column gradient, channel sums and kernel gradient as one Mosaic GPU kernel.

    These are what `deform_conv_xla._deform_matmul_bwd` computes with two matmuls and a
    gathering reduction over the (M, 9 Cin) columns; here the columns never reach global
    memory. One program per kernel point `k` and part `p` of the tiles (`parts` programs a
    point; part `p` takes tiles `p, p + parts, ...`). The program keeps `dW_k` (Cin, Cout) in
    a float32 wgmma accumulator over its tiles. For each tile it copies the tile's window
    starts, corner weights and output gradient `g` into shared memory, and the windows of
    point `k` (`_Windows`), mixes the columns as the forward does, then:

    * `wgmma`: `dW_k += columns^T @ g`;
    * `wgmma`: `d_columns = g @ W_k^T`, rounded to the kernel's dtype as XLA's matmul rounds
      it, and copied to global memory (the input gradient's scatter needs it);
    * the four channel sums `sum_c d_columns * neighbour` in float32, for the offset and mask
      gradients.

    Returns `run(x_rows, starts, corners, kernel_matrix, g)` (the first four as for
    `mosaic_forward`, `g` `(M, Cout)` in the kernel's dtype) giving `(d_columns, sums,
    d_kernel)`: `(M, K, Cin)` in the kernel's dtype, `(M, K, 4)` and `(K * Cin, Cout)` float32.
    Cin must be a multiple of 64 (the kernel gradient's wgmma rows).
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    if tile % 64:
        raise ValueError(f"tile must be a multiple of 64 (one warpgroup's wgmma rows), got {tile}")

    def run(x_rows, starts, corners, kernel_matrix, g):
        samples, points, _ = starts.shape
        channels = x_rows.shape[-1]
        cout = kernel_matrix.shape[-1]
        dtype = kernel_matrix.dtype
        if channels % 64:
            raise ValueError(f"channels must be a multiple of 64 (dW's wgmma rows): {channels}")
        if x_rows.dtype != dtype or g.dtype != dtype:
            raise ValueError(f"input {x_rows.dtype} and gradient {g.dtype} must be {dtype}")
        tile_starts, tile_corners = _tile_terms(starts, corners, tile)
        tiles = samples // tile
        if tiles % parts:
            raise ValueError(f"{tiles} tiles are not a whole number of parts of {parts}")
        # W_k^T, for d_columns = g @ W_k^T (Pallas' interpreter has no transposed operands).
        weights_t = kernel_matrix.reshape(points, channels, cout).transpose(0, 2, 1)
        win = _Windows(tile, x_rows, neighbour_copies, interpret)
        operand = _swizzled(min(channels, cout), dtype)  # one swizzle for every wgmma operand

        def body(x_ref, starts_ref, corners_ref, w_ref, g_ref, dcol_ref, sums_ref, dw_ref,
                 starts_s, corners_s, w_s, g_s, windows, columns, columns_t, dcol_s, sums_s,
                 dw_s, weights_in, loaded, arrived):
            k = lax.axis_index("points")
            p = lax.axis_index("parts")
            plgpu.copy_gmem_to_smem(w_ref.at[k], w_s, weights_in)
            plgpu.barrier_wait(weights_in)
            row = _row_loader(corners_s, interpret)

            def over_tiles(dw_acc):
                @pl.loop(0, tiles // parts)
                def _tile(j):
                    t = j * parts + p
                    first = pl.ds(t * tile, tile)
                    plgpu.copy_gmem_to_smem(starts_ref.at[t], starts_s, loaded)
                    plgpu.copy_gmem_to_smem(corners_ref.at[t, pl.ds(4 * k, 4)], corners_s, loaded)
                    plgpu.copy_gmem_to_smem(g_ref.at[first], g_s, loaded)
                    plgpu.barrier_wait(loaded)
                    win.issue(x_ref, starts_s, k, windows.at[0], arrived)
                    plgpu.barrier_wait(arrived)
                    mixed = win.mix(windows.at[0], row).astype(dtype)
                    if interpret:  # no transposed wgmma operands there: write columns^T
                        columns_t[...] = mixed.T
                        columns_tr = columns_t
                    else:
                        columns[...] = mixed
                        columns_tr = plgpu.transpose_ref(columns, (1, 0))
                    plgpu.commit_smem()
                    plgpu.wgmma(dw_acc, columns_tr, g_s)

                    def column_gradient(acc):
                        plgpu.wgmma(acc, g_s, w_s)
                        plgpu.wgmma_wait(0)  # also the kernel gradient's: `columns` is free
                        return acc[...].astype(dtype)

                    d_columns = pl.run_scoped(column_gradient,
                                              plgpu.ACC((tile, channels), jnp.float32))
                    wide = d_columns.astype(jnp.float32)
                    # The last tile's copies out must have read these buffers.
                    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
                    for corner in range(4):
                        sums_s[corner] = jnp.sum(wide * win.neighbour(windows.at[0], corner),
                                                 axis=1)
                    dcol_s[...] = d_columns
                    plgpu.commit_smem()
                    plgpu.copy_smem_to_gmem(dcol_s, dcol_ref.at[first, pl.ds(k * channels,
                                                                             channels)])
                    plgpu.copy_smem_to_gmem(sums_s, sums_ref.at[k, t])

                plgpu.wgmma_wait(0)
                dw_s[...] = dw_acc[...]

            pl.run_scoped(over_tiles, plgpu.ACC((channels, cout), jnp.float32))
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(dw_s, dw_ref.at[k, p])
            plgpu.wait_smem_to_gmem(0)

        d_columns, sums, d_kernel = plgpu.kernel(
            body,
            out_type=(
                jax.ShapeDtypeStruct((samples, points * channels), dtype),
                jax.ShapeDtypeStruct((points, tiles, 4, tile), jnp.float32),
                jax.ShapeDtypeStruct((points, parts, channels, cout), jnp.float32),
            ),
            scratch_types=(
                plgpu.SMEM(tile_starts.shape[1:], jnp.int32),
                plgpu.SMEM((4, tile), jnp.float32),
                plgpu.SMEM((cout, channels), dtype, transforms=operand),
                plgpu.SMEM((tile, cout), dtype, transforms=operand),
                win.buffer(1),
                plgpu.SMEM((tile, channels), dtype, transforms=operand),
                # columns^T, written only in the interpreter (a token buffer on the GPU).
                plgpu.SMEM((channels, tile) if interpret else (8, 8), dtype),
                plgpu.SMEM((tile, channels), dtype, transforms=_swizzled(channels, dtype)),
                plgpu.SMEM((4, tile), jnp.float32),
                plgpu.SMEM((channels, cout), jnp.float32),
                plgpu.Barrier(num_arrivals=1),
                plgpu.Barrier(num_arrivals=3),
                plgpu.Barrier(num_arrivals=win.copies),
            ),
            grid=(points, parts),
            grid_names=("points", "parts"),
            **_launch(interpret),
        )(win.source(x_rows), tile_starts, tile_corners, weights_t, g)
        return (d_columns.reshape(samples, points, channels),
                sums.transpose(1, 3, 0, 2).reshape(samples, points, 4),
                jnp.sum(d_kernel, axis=1).reshape(points * channels, cout))

    return run


def _load(ref, layout, interpret, optimized=True):
    """`ref[...]` in registers with `layout`; `optimized=False` lets Mosaic GPU emit a load
    with shared-memory bank conflicts (a window's corner rows lie 8 * Cin bytes apart, so
    the rows one warp reads fall into the same banks). The interpreter knows neither that
    load nor layouts."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    if interpret:
        return ref[...]
    return plgpu.load(ref, (), layout=layout, optimized=optimized)


def _interpret_params():
    """Pallas' Mosaic GPU interpreter (barriers, TMA copies), where this JAX has one."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams()


def xla_forward(geom):
    """`implementation="xla"`'s forward: sampling terms, the (M, 9 Cin) columns, one matmul."""
    def run(x_rows, offsets, mask, kernel_matrix):
        return xla._forward(x_rows, offsets, mask, kernel_matrix, geom, False)[0]

    return run


def fused_forward(geom, tile, interpret=False, registers=False, neighbour_copies=False):
    """The forward with `mosaic_forward`: XLA computes the sampling terms, the kernel the rest."""
    return _with_sampling(geom, mosaic_forward(tile, interpret, registers, neighbour_copies))


def conv_forward(batch):
    """A plain 3x3 convolution of the same shape (on the padded input, no padding), for scale."""
    def run(x_rows, offsets, mask, kernel_matrix):
        del offsets, mask
        rows, width, channels = x_rows.shape
        x = x_rows.reshape(batch, rows // batch, width, channels)
        kernel = kernel_matrix.reshape(3, 3, channels, -1)
        return lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    return run


def xla_backward(geom):
    """What `mosaic_backward` computes, as `implementation="xla"` computes it
    (`deform_conv_xla.column_work`, after the sampling terms): `(d_columns, sums, d_kernel)`."""
    def run(x_rows, offsets, mask, kernel_matrix, g):
        top_left, starts, corners, _ = xla._sampling(offsets, mask, geom)
        return xla.column_work(x_rows, top_left, starts, corners, kernel_matrix, g)

    return run


def fused_backward(geom, tile, parts, interpret=False, neighbour_copies=False):
    """The same with `mosaic_backward`: XLA computes the sampling terms, the kernel the rest."""
    return _with_sampling(geom, mosaic_backward(tile, parts, interpret, neighbour_copies))


def conv_backward(batch):
    """A plain 3x3 convolution's input and kernel gradients, for scale."""
    forward = conv_forward(batch)

    def run(x_rows, offsets, mask, kernel_matrix, g):
        y, vjp = jax.vjp(lambda x, w: forward(x, offsets, mask, w), x_rows, kernel_matrix)
        return vjp(g.reshape(y.shape))

    return run


def _matches(out, expected, exact):
    """Whether `out` is `expected` (every array of them), exactly or to within bf16 rounding."""
    if exact:
        return "equal" if bool(jnp.array_equal(out, expected)) else "**no**"
    worst = 0.0
    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(expected)):
        got, want = (np.asarray(jnp.asarray(a).astype(jnp.float32)) for a in (got, want))
        scale = float(np.max(np.abs(want)))
        error = float(np.max(np.abs(got - want)))
        # Both round float32 sums of the same bf16 products to bf16 in a different order, so
        # values may differ by about one bf16 step (2**-8 relative).
        if error > 2 ** -7 * scale:
            return f"**no**: max diff {error:.3g}, max {scale:.3g}"
        worst = max(worst, error / scale)
    return f"max diff {worst:.1e} of max"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128, help="feature map height and width")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                        help="windows per program of the gather and copies kernels")
    parser.add_argument("--tiles", type=int, nargs="+", default=[64],
                        help="output pixels per program of the fused forward")
    parser.add_argument("--cases", nargs="+", default=["gather", "copies", "forward", "backward"],
                        choices=["gather", "copies", "forward", "backward"],
                        help="which probes to run")
    parser.add_argument("--parts", type=int, nargs="+", default=[16, 32],
                        help="programs per kernel point of the fused backward")
    parser.add_argument("--interpret", action="store_true",
                        help="run the Mosaic GPU kernels in Pallas' interpreter (on a CPU)")
    parser.add_argument("--output", default=None, help="markdown file to write")
    args = parser.parse_args()

    device = jax.devices()[0]
    inputs = forward_inputs(args.batch, args.size, args.channels)
    x_rows, offsets, mask, _, geom = inputs
    starts, _ = jax.jit(lambda o, m: sampling_terms(o, m, geom))(offsets, mask)
    samples = starts.shape[0] * starts.shape[1]
    window_bytes = samples * 4 * args.channels * 2
    pixels = geom.m_pad
    gathers = [("gather: xla", xla_gather)] + [
        (f"gather: tma B{b}", tma_gather(b, args.interpret)) for b in args.blocks]
    forwards = [("forward: conv (plain, for scale)", conv_forward(args.batch)),
                ("forward: xla", xla_forward(geom))]
    # Pallas' interpreter has no wgmma from registers.
    for registers in (False,) if args.interpret else (False, True):
        for split in (False, True):
            for t in args.tiles:
                name = f"forward: mosaic T{t}" + (", 4 copies a window" if split else "") + (
                    ", columns in registers" if registers else "")
                forwards.append((name, fused_forward(geom, t, args.interpret, registers, split)))

    g = jnp.asarray(np.random.default_rng(1).normal(size=(pixels, args.channels)), jnp.bfloat16)
    backwards = [("backward: conv (plain, input and kernel gradients, for scale)",
                  conv_backward(args.batch)),
                 ("backward: xla (column gradient, channel sums, kernel gradient)",
                  xla_backward(geom))]
    for split in (False, True):
        for parts in args.parts:
            for t in args.tiles:
                name = f"backward: mosaic T{t} P{parts}" + (", 4 copies a window" if split else "")
                backwards.append((name, fused_backward(geom, t, parts, args.interpret, split)))

    rows = []

    def measure(name, fn, operands, expected, exact):
        try:
            compiled = jax.jit(fn)
            out = jax.block_until_ready(compiled(*operands))
            matches = "" if expected is None else _matches(out, expected, exact)
            ms = deform_conv.median_ms(lambda: compiled(*operands), jax.block_until_ready)
            rows.append((name, f"{ms:.3f}", f"{samples / ms / 1e6:.2f}", matches, ""))
        except Exception as error:  # a case that does not build is a result too
            out = None
            message = f"{type(error).__name__}: {error}".replace("\n", " ")[:300]
            traceback.print_exc()
            rows.append((name, "", "", "", message.replace("|", "/")))
        print(rows[-1], flush=True)
        return out

    if "gather" in args.cases or "copies" in args.cases:
        every = measure(*gathers[0], (x_rows, starts), None, exact=True)
    if "gather" in args.cases:
        for name, fn in gathers[1:]:
            measure(name, fn, (x_rows, starts), every, exact=True)
    if "copies" in args.cases:
        for block in args.blocks:
            for auto in (True, False):
                name = f"copies: B{block}" + ("" if auto else ", no auto barriers")
                measure(name, tma_copies(block, auto, args.interpret), (x_rows, starts),
                        None if every is None else every[::block], exact=True)
    if "forward" in args.cases:
        expected = None
        for name, fn in forwards:
            out = measure(name, fn, inputs[:4], expected, exact=False)
            if name == "forward: xla":
                expected = out
    if "backward" in args.cases:
        expected = None
        for name, fn in backwards:
            out = measure(name, fn, (*inputs[:4], g), expected, exact=False)
            if name.startswith("backward: xla"):
                expected = out

    header = [
        "# A DCN layer with Mosaic GPU: windows gathered by TMA, fused forward and backward",
        "",
        f"Device: {device.device_kind}, JAX {jax.__version__}. Batch {args.batch}, "
        f"{args.size}x{args.size}, {args.channels} bf16 channels in and out, 3x3: "
        f"{pixels} output pixels, {samples} windows ({window_bytes / 1e9:.2f} GB of them). "
        "Median of >= 20 calls. Offsets N(0, 1.5) px.",
        "",
        "- `gather`: every window into an (S, 2, 2, C) array; `matches` against `gather: xla`.",
        "- `copies`: one TMA copy per window into shared memory, only each block's first "
        "window written back (`matches` against those of `gather: xla`).",
        "- `forward`: the layer's forward from the padded input, offsets, mask and kernel "
        "(the sampling terms included); `matches` against `forward: xla`.",
        "- `backward`: from the same and an output gradient, the column gradient, the four "
        "channel sums and the kernel gradient (not the scatter of the input gradient, nor "
        "the offset and mask gradients from the sums); `matches` against `backward: xla`.",
        "",
        "| case | ms | M windows/ms | matches | error |",
        "|---|---|---|---|---|",
    ]
    table = "\n".join(header + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
