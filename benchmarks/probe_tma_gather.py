"""Can a Hopper TMA copy per sample gather a DCN's windows faster than XLA? (issue 10)

The deformable convolution's remaining route to "forward+backward <= 3x a plain conv"
(`results/profile_dcn.md` section 10) is a Mosaic GPU kernel that copies each sample's
(2, 2, Cin) window of the zero-padded input into shared memory with the Tensor Memory
Accelerator and feeds the tensor cores from there. Hopper's TMA has no row gather, so that
kernel issues one box copy per sample: 4.7 million at DLA-34's 128x128x64 layers (batch 32,
nine kernel points). This probe measures that issue rate before anyone writes the kernel.

Both cases gather the same windows into an `(S, 2, 2, C)` array:

* `xla`: one `lax.gather` of (2, 2, C) windows, as `deform_conv_xla.py` gathers them;
* `tma Bn`: a Mosaic GPU kernel, one program per block of `n` samples: one TMA box copy per
  sample into shared memory (the window starts read as scalars from global memory), one wait
  on a barrier counting the block's copies, one TMA store of the block.

Window starts follow the benchmarks' offsets (N(0, 1.5) px around each kernel point, samples
in pixel-major order, as the DCN gathers them). Each case's output is checked against the
`xla` case's, element for element. Needs a Hopper GPU and the JAX backend of JAX's Pallas
Mosaic GPU (`jax.experimental.pallas.mosaic_gpu`); a case that does not build says why in the
table instead of a time.

    KERAS_BACKEND=jax python benchmarks/probe_tma_gather.py --output results/probe_tma_gather.md
"""

import argparse
import statistics
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def window_starts(batch, height, width, sigma=1.5, seed=0):
    """`(S, 3)` int32 (image, row, column) of each sample's window in the padded input.

    Samples are ordered (image, output row, output column, kernel point) like the DCN's
    columns; the window's top-left corner is the floor of the 3x3 kernel point shifted by an
    N(0, sigma) offset, clipped so that the 2x2 window lies in the input padded by one pixel.
    """
    rng = np.random.default_rng(seed)
    n, oh, ow, i, j = np.meshgrid(
        np.arange(batch), np.arange(height), np.arange(width), np.arange(3), np.arange(3),
        indexing="ij",
    )
    shape = n.shape
    y = oh - 1 + i + rng.normal(0.0, sigma, shape)
    x = ow - 1 + j + rng.normal(0.0, sigma, shape)
    # +1: row and column 0 of the padded input are the padding.
    y0 = np.clip(np.floor(y).astype(np.int64) + 1, 0, height)
    x0 = np.clip(np.floor(x).astype(np.int64) + 1, 0, width)
    return np.stack([n, y0, x0], axis=-1).reshape(-1, 3).astype(np.int32)


def xla_gather(x_pad, starts):
    channels = x_pad.shape[-1]
    dims = lax.GatherDimensionNumbers(
        offset_dims=(1, 2, 3), collapsed_slice_dims=(0,), start_index_map=(0, 1, 2)
    )
    return lax.gather(x_pad, starts, dims, slice_sizes=(1, 2, 2, channels),
                      mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def tma_gather(block, interpret=False):
    """The Mosaic GPU gather: one TMA box copy per sample, `block` samples per program.

    `interpret=True` runs it in Pallas' Mosaic GPU interpreter (on a CPU, to check it).
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    def run(x_pad, starts):
        samples = starts.shape[0]
        channels = x_pad.shape[-1]
        if samples % block:
            raise ValueError(f"{samples} samples are not a whole number of blocks of {block}")

        def body(starts_ref, x_ref, out_ref, windows, copied):
            first = lax.axis_index("blocks") * block

            @pl.loop(0, block)
            def _issue(i):
                s = first + i
                src = x_ref.at[starts_ref[s, 0], pl.ds(starts_ref[s, 1], 2),
                               pl.ds(starts_ref[s, 2], 2)]
                plgpu.copy_gmem_to_smem(src, windows.at[i], copied)

            plgpu.barrier_wait(copied)
            plgpu.copy_smem_to_gmem(windows, out_ref.at[pl.ds(first, block)])
            plgpu.wait_smem_to_gmem(0)

        out = jax.ShapeDtypeStruct((samples, 2, 2, channels), x_pad.dtype)
        scratch = (plgpu.SMEM((block, 2, 2, channels), x_pad.dtype),
                   plgpu.Barrier(num_arrivals=block))
        grid = dict(grid=(samples // block,), grid_names=("blocks",),
                    **({"interpret": _interpret_params()} if interpret else {}))
        try:  # JAX >= 0.10: out_type / scratch_types
            kernel = plgpu.kernel(body, out_type=out, scratch_types=scratch, **grid)
        except TypeError:
            kernel = plgpu.kernel(body, out_shape=out, scratch_shapes=scratch, **grid)
        return kernel(starts, x_pad)

    return run


def _interpret_params():
    """Pallas' Mosaic GPU interpreter (barriers, TMA copies), where this JAX has one."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams()


def time_ms(fn, *args, repeats=20):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128, help="feature map height and width")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--blocks", type=int, nargs="+", default=[64, 128, 256],
                        help="samples per Mosaic GPU program")
    parser.add_argument("--interpret", action="store_true",
                        help="run the Mosaic GPU kernel in Pallas' interpreter (to check it on a CPU)")
    parser.add_argument("--output", default=None, help="markdown file to write")
    args = parser.parse_args()

    device = jax.devices()[0]
    starts_np = window_starts(args.batch, args.size, args.size)
    starts = jnp.asarray(starts_np)
    key = jax.random.PRNGKey(0)
    x_pad = jax.random.normal(
        key, (args.batch, args.size + 2, args.size + 2, args.channels), jnp.bfloat16)
    samples = starts.shape[0]
    written = samples * 4 * args.channels * 2
    cases = [("xla", xla_gather)] + [(f"tma B{b}", tma_gather(b, args.interpret)) for b in args.blocks]

    expected = None
    rows = []
    for name, fn in cases:
        try:
            compiled = jax.jit(fn)
            out = jax.block_until_ready(compiled(x_pad, starts))
            if expected is None:
                expected = out
                # The gather itself checked against NumPy on a few samples.
                pick = np.linspace(0, samples - 1, 64).astype(int)
                xs = np.asarray(x_pad.astype(jnp.float32))
                for s in pick:
                    n, y0, x0 = starts_np[s]
                    want = xs[n, y0:y0 + 2, x0:x0 + 2]
                    np.testing.assert_array_equal(np.asarray(out[s].astype(jnp.float32)), want)
            same = bool(jnp.array_equal(out, expected))
            ms = time_ms(compiled, x_pad, starts)
            rows.append((name, f"{ms:.3f}", f"{written / ms / 1e6:.0f}",
                         f"{samples / ms / 1e6:.2f}", "yes" if same else "**no**", ""))
        except Exception as error:  # a case that does not build is a result too
            message = f"{type(error).__name__}: {error}".replace("\n", " ")[:300]
            traceback.print_exc()
            rows.append((name, "", "", "", "", message.replace("|", "/")))
        print(rows[-1], flush=True)

    header = [
        "# Gathering a DCN's (2, 2, C) windows: XLA against one TMA box copy per sample",
        "",
        f"Device: {device.device_kind}, JAX {jax.__version__}. Batch {args.batch}, "
        f"{args.size}x{args.size}, {args.channels} bf16 channels, 9 kernel points: "
        f"{samples} windows, {written / 1e9:.2f} GB written. Median of 20 calls. "
        "Offsets N(0, 1.5) px. `same` = equal to the xla case, element for element.",
        "",
        "| case | ms | GB/s written | M windows/ms | same | error |",
        "|---|---|---|---|---|---|",
    ]
    table = "\n".join(header + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
