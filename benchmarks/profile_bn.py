"""How fast BatchNorm's memory-bound work runs on the GPU, by formulation (JAX backend).

Hourglass-104's bf16 training step spends about 11 ms of an H100's 132 ms in
reduction fusions, mostly BatchNorm statistics and their gradients
(`profile_step.md`), yet its 201 BatchNorm inputs hold 7.7 GB of bfloat16: one
read at the H100's 3.35 TB/s is 2.3 ms. This script
times the statistics alone and a whole BatchNorm+ReLU forward+backward on
Hourglass-104's activation shapes, for each formulation of the statistics:

- `keras`: `keras.layers.BatchNormalization` (mean, then variance: two passes);
- `onepass`: `OnePassBatchNormalization` as it is by default.

At commit 067db15 two more forms folded consecutive positions into rows of
`n` values before the column reduction (`fold<n>`, and `foldall<n>` that
normalised in that view too); they were slower and were removed
(`results/profile_bn.md`).

    KERAS_BACKEND=jax python benchmarks/profile_bn.py --output $OUT/profile_bn.md

Columns: milliseconds (median of compiled calls) and the rate at which that
reads the activations once (GB/s of the bf16 input; the statistics read it
once, a training forward+backward at least four times: statistics, normalise,
and the backward's reduction and input gradient).
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import common  # noqa: E402

# Hourglass-104's BatchNorm inputs at 512x512 and batch 32 (how many layers of each).
SHAPES = [
    ((32, 128, 128, 256), 17),
    ((32, 64, 64, 256), 26),
    ((32, 256, 256, 128), 1),
    ((32, 32, 32, 384), 22),
    ((32, 16, 16, 384), 26),
]
FORMS = ["keras", "onepass"]


def make_layer(form, shape):
    import keras

    from keras_centernet.layers import OnePassBatchNormalization

    if form == "keras":
        layer = keras.layers.BatchNormalization(epsilon=1e-5, dtype="mixed_bfloat16")
    elif form == "onepass":
        layer = OnePassBatchNormalization(epsilon=1e-5, dtype="mixed_bfloat16")
    else:
        raise ValueError(f"unknown form {form!r}")
    layer.build(shape)
    return layer


def measure(form, shape, mode):
    """Milliseconds of the statistics (`mode="stats"`) or of a BN+ReLU forward+backward (`"train"`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    layer = make_layer(form, shape)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.0, 2.0, size=shape).astype("float32")).astype(jnp.bfloat16)
    if mode == "stats":
        fn = jax.jit(lambda x: layer._moments(x.astype(jnp.float32), None))
        args = (x,)
    else:
        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def forward(x, trainable):
            y, _ = layer.stateless_call(trainable, non_trainable, x, training=True)
            return jax.nn.relu(y)

        def step(x, trainable, dy):
            y, vjp = jax.vjp(forward, x, trainable)
            return y, vjp(dy)

        dy = jnp.asarray(rng.normal(size=shape).astype("float32")).astype(jnp.bfloat16)
        fn = jax.jit(step)
        args = (x, trainable, dy)
    compiled = fn.lower(*args).compile()
    return common.median_ms(lambda: compiled(*args), jax.block_until_ready)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forms", nargs="*", default=FORMS)
    parser.add_argument("--shapes", nargs="*", type=int, default=list(range(len(SHAPES))),
                        help="indices into SHAPES")
    parser.add_argument("--output", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "profile_bn.md"))
    args = parser.parse_args()
    import numpy as np

    lines = ["# BatchNorm's statistics and training pass by formulation (`benchmarks/profile_bn.py`)", "",
             common.environment_line(), "",
             "bfloat16 activations (float32 statistics, `mixed_bfloat16` layers); ms = median of compiled calls; "
             "GB/s = the input's bytes / ms. `hourglass ms` = ms x the number of Hourglass-104 layers of that shape.", ""]
    header = ["shape (layers)", "mode", *[f"{form} ms (GB/s)" for form in args.forms]]
    rows = []
    totals = {(mode, form): 0.0 for mode in ("stats", "train") for form in args.forms}
    for index in args.shapes:
        shape, layers = SHAPES[index]
        gigabytes = float(np.prod(shape)) * 2 / 1e9
        for mode in ("stats", "train"):
            row = [f"{'x'.join(map(str, shape))} ({layers})", mode]
            for form in args.forms:
                try:
                    ms = measure(form, shape, mode)
                    totals[mode, form] += ms * layers
                    row.append(f"{ms:.3f} ({gigabytes / ms * 1e3:.0f})")
                except Exception as error:  # noqa: BLE001 - reported in the table
                    row.append(f"{type(error).__name__}: {str(error)[:80]}")
            rows.append(row)
            print("| " + " | ".join(row) + " |", flush=True)
            common.write_text(args.output, "\n".join(lines + common.table(header, rows)) + "\n")
    for mode in ("stats", "train"):
        rows.append(["**hourglass ms**", mode, *[f"{totals[mode, form]:.1f}" for form in args.forms]])
    lines += common.table(header, rows)
    text = "\n".join(lines) + "\n"
    common.write_text(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
