"""Can a Hopper TMA copy per sample gather a DCN's windows faster than XLA? (issue 10)

The deformable convolution's remaining route to "forward+backward <= 3x a plain conv"
(`results/profile_dcn.md` section 10) is a Mosaic GPU kernel that copies each sample's
(2, 2, Cin) window of the zero-padded input into shared memory with the Tensor Memory
Accelerator and feeds the tensor cores from there. Hopper's TMA has no row gather, so that
kernel issues one box copy per sample: 4.7 million at DLA-34's 128x128x64 layers (batch 32,
nine kernel points). This probe measures that issue rate before anyone writes the kernel.

Both cases gather the same windows, those `implementation="xla"` gathers for the benchmarks'
inputs (`deform_conv.make_inputs`: offsets N(0, 1.5) px; window starts from
`deform_conv_xla._sampling`), into an `(S, 2, 2, C)` array:

* `xla`: the XLA DCN's own window gather (`deform_conv_xla._gather_windows`);
* `tma Bn`: a Mosaic GPU kernel, one program per block of `n` samples: one TMA box copy per
  sample into shared memory (the window starts read as scalars from global memory), one wait
  on a barrier counting the block's copies, one TMA store of the block.

Each case's output is checked against the `xla` case's, element for element. Needs a Hopper
GPU and JAX's Pallas Mosaic GPU (`jax.experimental.pallas.mosaic_gpu`); a case that does not
build says why in the table instead of a time.

    KERAS_BACKEND=jax python benchmarks/probe_tma_gather.py --output results/probe_tma_gather.md
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


def dcn_windows(batch, size, channels, seed=0):
    """`(x_rows, starts)`: the padded bf16 input as `(B * (H + 2), W + 2, C)` rows and the
    `(M, 9, 2)` window starts in it of a 3x3 DCN layer's samples, from the benchmarks' inputs."""
    x, offsets, mask, _, _ = deform_conv.make_inputs(
        np.random.default_rng(seed), batch, size, channels, channels)
    geom = deform_conv.same_geometry(batch, size, size)
    x_rows = xla.padded_rows(jnp.asarray(x, jnp.bfloat16))
    _, starts, _, _ = jax.jit(lambda o, m: xla._sampling(o, m, geom))(
        offsets.reshape(-1, 18), mask.reshape(-1, 9))
    return x_rows, starts


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
            **({"interpret": _interpret_params()} if interpret else {}),
        )(starts, x_rows)

    return run


def _interpret_params():
    """Pallas' Mosaic GPU interpreter (barriers, TMA copies), where this JAX has one."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams()


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
    x_rows, starts = dcn_windows(args.batch, args.size, args.channels)
    samples = starts.shape[0] * starts.shape[1]
    written = samples * 4 * args.channels * 2
    cases = [("xla", xla_gather)] + [(f"tma B{b}", tma_gather(b, args.interpret))
                                     for b in args.blocks]

    expected = None
    rows = []
    for name, fn in cases:
        try:
            compiled = jax.jit(fn)
            out = jax.block_until_ready(compiled(x_rows, starts))
            expected = out if expected is None else expected
            same = bool(jnp.array_equal(out, expected))
            ms = deform_conv.median_ms(lambda: compiled(x_rows, starts), jax.block_until_ready)
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
        f"{samples} windows, {written / 1e9:.2f} GB written. Median of >= 20 calls. "
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
