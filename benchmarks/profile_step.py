"""Where the GPU time of one training step goes, by kind of kernel (JAX backend).

Issues 5 and 10 ask why a preset trains at the speed it does (Hourglass-104 in
float32 is 1.5x the official PyTorch figure where the goal is 2x; DLA-34 is
held down by its deformable convolutions). This script answers from the
device's own kernel timings instead of guesses:

    KERAS_BACKEND=jax python benchmarks/profile_step.py hourglass104:float32 \\
        hourglass104:float32:twopass_bn --output $OUT/profile_step.md

A case is `preset:dtype[:variant]`. Each runs in its own worker process: the
model is compiled as in `training_step.py` (512 px, batch 32, 128 objects,
80 classes, Adam, targets rendered in the step), the compiled step is run back
to back for `--steps` steps (wall time per step), then `--profile-steps`
more steps are traced with `jax.profiler` and every GPU kernel of the trace is
put in one class by its kernel and HLO names:

- `convolution`: cuDNN/CUTLASS convolution kernels (forward, data and weight
  gradients), and the GEMMs that XLA makes of 1x1 convolutions;
- `reduction fusion`: XLA fusions with a reduction (BatchNorm statistics and
  their gradients, the loss);
- `elementwise fusion`: other XLA fusions (normalising, activations, the
  optimizer update, gathers of the deformable convolution);
- `copy / transpose`, `scatter` and `other`.

Variants (benchmark-only, to measure a change against what went before):
`twopass_bn` gives the official architectures' BatchNorm back Keras' training
statistics (`mean`, then `var`: two passes over the activations) instead of
`OnePassBatchNormalization`'s one (the mean and mean square of `x - shift`;
`onepass_bn` measured it before it became the default, 2026-12-07).
`dcn=<options>` sets the XLA deformable convolution's benchmark options
(`common.set_dcn_xla_options`, comma-separated, e.g.
`dla34:mixed_bfloat16:dcn=sortscatter`). `xla=<flags>` adds XLA flags to the
case's worker (comma-separated, without their `--`, e.g.
`hourglass104:mixed_bfloat16:xla=xla_gpu_autotune_level=0`).
`kernelbarrier`, `kernellayout`, `gradbarrier` and `ohwi` try to keep the
kernel gradients' OHWI -> HWIO transposes out of Adam's update
(`kernel_gradient_barrier`, `gradients_barrier`, `ohwi_kernels`). (`bnfold=<n>` and `bnfoldall=<n>`,
BatchNorm statistics folded into wider rows, were measured at commit 067db15
and removed: `profile_bn.md`.)

The table gives, per case, the step time, the share of each class and the
heaviest HLO operations.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import common  # noqa: E402
from training_step import NUM_CLASSES  # noqa: E402
from training_step import random_objects  # noqa: E402

CLASSES = ("convolution", "reduction fusion", "elementwise fusion", "copy / transpose",
           "scatter", "other")


_CONV = re.compile(r"conv(?!ert)")


def kernel_class(kernel, hlo_op):
    """The class of one GPU kernel from its kernel name and its HLO op name."""
    name = kernel.lower()
    op = (hlo_op or "").lower()
    # "conv" but not "convert": XLA names fusions with a type conversion
    # `loop_convert_fusion`, `input_convert_reduce_fusion` (counted here as
    # convolutions until 2026-12-06).
    if any(key in name for key in ("xmma", "cudnn", "implicit_gemm", "fprop", "dgrad", "wgrad",
                                   "cutlass", "gemm", "sm90_", "sm80_", "ampere_", "cublas")) \
            or any(key in op for key in ("dot", "gemm", "cublas")) \
            or _CONV.search(name) or _CONV.search(op):
        return "convolution"
    if "scatter" in name or "scatter" in op:
        return "scatter"
    if "reduce" in name or "reduce" in op or "reduction" in name:
        return "reduction fusion"
    if "transpose" in name or "copy" in name or "transpose" in op or op.startswith("copy"):
        return "copy / transpose"
    if "fusion" in name or "fusion" in op or "loop_" in name or "triton" in name:
        return "elementwise fusion"
    return "other"


def twopass_batchnorm():
    """Patches the official layers' BatchNorm back to Keras' two-pass training statistics."""
    import keras

    from keras_centernet.layers import OnePassBatchNormalization

    OnePassBatchNormalization._moments = keras.layers.BatchNormalization._moments


def kernel_gradient_barrier(row_major=False):
    """Patches every convolution so that its kernel's gradient passes an XLA optimization barrier.

    cuDNN's NHWC convolutions take and give kernels as OHWI; Keras stores HWIO.
    The profile of Hourglass-104 bf16 (`profile_step.md`) shows XLA fusing the
    bf16 OHWI -> f32 HWIO transpose of each kernel gradient into Adam's update,
    as a multi-output transpose fusion (about 5.9 ms a step, a quarter of the
    bandwidth) that cannot write in place (1.7 ms of copies after it). The
    barrier asks XLA to materialise the bf16 gradient first, so that the update
    can be an in-place elementwise fusion (`kernelbarrier`). A barrier's result
    shares its operand's buffer, so XLA may keep the OHWI layout through it;
    with `row_major` the gradient is first constrained to the row-major (HWIO)
    layout (`jax.experimental.layout.with_layout_constraint`, `kernellayout`):
    the transpose is then a bf16 copy before the barrier.
    """
    import jax
    from keras import ops
    from keras.src.layers.convolutional.base_conv import BaseConv

    def backward(_, grad):
        if row_major:
            from jax.experimental.layout import Layout
            from jax.experimental.layout import with_layout_constraint

            grad = with_layout_constraint(grad, Layout(major_to_minor=tuple(range(grad.ndim))))
        return (jax.lax.optimization_barrier(grad),)

    @jax.custom_vjp
    def through_barrier(kernel):
        return kernel

    through_barrier.defvjp(lambda kernel: (kernel, None), backward)
    convolution_op = BaseConv.convolution_op
    BaseConv.convolution_op = lambda self, inputs, kernel: convolution_op(
        self, inputs, through_barrier(ops.convert_to_tensor(kernel)))


def gradients_barrier(model):
    """Puts all gradients through one XLA optimization barrier before the optimizer (`gradbarrier`)."""
    import jax

    apply = model.optimizer.stateless_apply
    model.optimizer.stateless_apply = lambda variables, grads, trainable: apply(
        variables, jax.lax.optimization_barrier(grads), trainable)


def ohwi_kernels():
    """Patches convolutions to store their kernels as OHWI (cuDNN's layout) instead of HWIO (`ohwi`).

    Benchmark-only: the kernel initialisers see the permuted shape (other
    fans), and saved weights would not load into Keras' layer. It measures what
    the kernel transposes around each step cost.
    """
    from keras import ops
    from keras.src.layers.convolutional.base_conv import BaseConv

    add_weight = BaseConv.add_weight

    def permuted_add_weight(self, *args, **kwargs):
        shape = kwargs.get("shape")
        if kwargs.get("name") == "kernel" and shape is not None and len(shape) == 4 and self.groups == 1:
            kwargs["shape"] = (shape[3], shape[0], shape[1], shape[2])
            self._ohwi = True
        return add_weight(self, *args, **kwargs)

    convolution_op = BaseConv.convolution_op

    def transposed_convolution_op(self, inputs, kernel):
        if getattr(self, "_ohwi", False):
            kernel = ops.transpose(kernel, (1, 2, 3, 0))
        return convolution_op(self, inputs, kernel)

    BaseConv.add_weight = permuted_add_weight
    BaseConv.convolution_op = transposed_convolution_op


def case_xla_flags(case):
    """The XLA flags of a case's `xla=<flags>` variant, as `XLA_FLAGS` takes them ("" for other cases)."""
    _, _, *variant = case.split(":")
    if not variant or not variant[0].startswith("xla="):
        return ""
    return " ".join("--" + flag for flag in variant[0][len("xla="):].split(",") if flag)


def kernel_events(trace_dir):
    """(kernel name, HLO op, duration ns) of every GPU kernel in the trace under `trace_dir`."""
    from jax.profiler import ProfileData

    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise RuntimeError(f"no .xplane.pb under {trace_dir}")
    data = ProfileData.from_file(paths[0])
    events = []
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        lines = list(plane.lines)
        # Kernel launches sit on the stream lines; the derived summary lines
        # ("XLA Ops", "XLA Modules", "Steps") would count them again.
        streams = [line for line in lines if line.name.startswith("Stream")] or [
            line for line in lines if line.name not in ("XLA Ops", "XLA Modules", "Steps",
                                                        "Launch Stats", "Source")]
        for line in streams:
            for event in line.events:
                stats = dict(event.stats)
                hlo_op = stats.get("hlo_op") or ""
                events.append((event.name, str(hlo_op), event.duration_ns,
                               str(stats.get("long_name") or stats.get("tf_op") or "")))
    return events


def hlo_definitions(dump_dir, names):
    """`name -> its defining line` in XLA's optimised HLO dumps under `dump_dir` (shapes included)."""
    found = {}
    wanted = {f"%{name} = ": name for name in names}
    for path in glob.glob(os.path.join(dump_dir, "*after_optimizations.txt")):
        with open(path) as file:
            for line in file:
                text = line.strip()
                for prefix, name in wanted.items():
                    if name not in found and (text.startswith(prefix) or text.startswith("ROOT " + prefix)):
                        found[name] = text
    return found


def measure(preset, dtype, variant, size, batch, steps, profile_steps, dump_dir=None):
    """Worker side: step time and the kernel-class breakdown of one case."""
    import jax
    import keras
    import numpy as np

    import keras_centernet as kc

    if variant == "twopass_bn":
        twopass_batchnorm()
    elif variant.startswith("dcn="):
        common.set_dcn_xla_options([o for o in variant[4:].split(",") if o])
    elif variant in ("kernelbarrier", "kernellayout"):
        kernel_gradient_barrier(row_major=variant == "kernellayout")
    elif variant == "ohwi":
        ohwi_kernels()
    elif variant == "gradbarrier" or variant.startswith("xla="):
        pass  # gradbarrier: on the optimizer once compiled, below; xla=: by `worker` (`case_xla_flags`)
    elif variant:
        raise ValueError(f"unknown variant {variant!r}")
    keras.mixed_precision.set_dtype_policy(dtype)
    model = kc.CenterNet.from_preset(preset, num_classes=NUM_CLASSES)
    model.compile(optimizer=keras.optimizers.Adam(1.25e-4))
    if variant == "gradbarrier":
        gradients_barrier(model)
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.uniform(0, 255, size=(batch, size, size, 3)).astype("float32"))
    boxes, labels = random_objects(rng, batch, size)
    targets = {"boxes": jax.device_put(boxes), "labels": jax.device_put(labels)}
    started = time.perf_counter()
    logs = model.train_on_batch(images, targets, return_dict=True)
    compile_s = time.perf_counter() - started
    data = (images, targets, None)
    logs, state, step_ms = common.run_train_function(model, data, steps, warmup=3)

    trace_dir = tempfile.mkdtemp(prefix="profile_step_")
    jax.profiler.start_trace(trace_dir)
    for _ in range(profile_steps):
        logs, state = model.train_function(state, iter([data]))
    jax.block_until_ready((logs, state))
    jax.profiler.stop_trace()
    events = kernel_events(trace_dir)
    by_class = collections.Counter()
    by_op = collections.Counter()
    by_instance = collections.Counter()
    op_class = {}
    long_names = {}
    for kernel, hlo_op, duration, long_name in events:
        kind = kernel_class(kernel, hlo_op)
        by_class[kind] += duration
        key = re.sub(r"\.\d+$", "", hlo_op) if hlo_op else kernel[:60]
        by_op[key] += duration
        op_class[key] = kind
        instance = hlo_op or kernel[:60]
        by_instance[instance] += duration
        op_class[instance] = kind
        long_names.setdefault(instance, long_name[:400])
    top = [op for op, _ in by_instance.most_common(25)]
    definitions = hlo_definitions(dump_dir, top) if dump_dir else {}
    for op in top:
        long_names[op] = definitions.get(op, "")[:400] or long_names[op] or op
    total = sum(by_class.values())
    return {
        "batch": batch, "compile_s": compile_s, "step_ms": step_ms, "img_s": batch * 1e3 / step_ms,
        "kernel_ms_per_step": total / 1e6 / profile_steps, "kernels_per_step": len(events) / profile_steps,
        "classes": {k: by_class[k] / 1e6 / profile_steps for k in CLASSES},
        "top_ops": [(op, by_op[op] / 1e6 / profile_steps, op_class[op])
                    for op, _ in by_op.most_common(12)],
        "top_instances": [(op, by_instance[op] / 1e6 / profile_steps, op_class[op], long_names[op])
                          for op, _ in by_instance.most_common(25)],
        "loss": float(np.asarray(logs["loss"])),
        # Every instruction's time with `--hlo-dump`, to read next to the kept HLO.
        **({"instances": {op: round(ns / 1e6 / profile_steps, 4) for op, ns in by_instance.items()}}
           if dump_dir else {}),
    }


def worker(args):
    dump_root = None
    if args.hlo_dump:
        # XLA's optimised HLO of every module, to name the shapes of the heaviest instructions.
        dump_root = tempfile.mkdtemp(prefix="profile_step_hlo_")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump_root}"
                                   " --xla_dump_hlo_as_text").strip()
    flags = " ".join(case_xla_flags(case) for case in args.cases).strip()
    if flags:  # one case per worker: these are its own
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    import jax

    common.emit("environment", line=common.environment_line(), platform=jax.devices()[0].platform)
    for case in args.cases:
        common.start(case)
        preset, dtype, *variant = case.split(":")
        try:
            values = measure(preset, dtype, variant[0] if variant else "", args.size, args.batch,
                             args.steps, args.profile_steps, dump_root)
            common.emit(case, **values)
        except Exception as error:  # reported in the table, the other cases go on
            common.emit(case, error=f"{type(error).__name__}: {str(error)[:600]}")


def render(results, environment, args):
    lines = [
        "# Where a training step's GPU time goes (`benchmarks/profile_step.py`)",
        "",
        environment,
        f"{args.size}x{args.size} input, batch {args.batch}, 128 objects, {NUM_CLASSES} classes, Adam; "
        f"step = the compiled step back to back ({args.steps} steps); kernel times from a "
        f"`jax.profiler` trace of {args.profile_steps} more steps, per step. The module "
        "docstring defines the classes.",
        "",
    ]
    header = ["case", "img/s", "step ms", "kernel ms", *[f"{c} ms (%)" for c in CLASSES]]
    rows = []
    for case, r in results.items():
        if "error" in r:
            rows.append([case, r["error"]] + [""] * (len(header) - 2))
            continue
        total = r["kernel_ms_per_step"] or float("nan")  # no GPU kernels on a CPU run
        rows.append([case, common.fmt(r["img_s"]), common.fmt(r["step_ms"]), common.fmt(total)]
                    + [f"{r['classes'][c]:.1f} ({100 * r['classes'][c] / total:.0f}%)" for c in CLASSES])
    lines += common.table(header, rows)
    for case, r in results.items():
        if "error" in r:
            continue
        lines += ["", f"Heaviest HLO operations of `{case}` (ms per step):", ""]
        lines += common.table(["HLO op", "ms", "class"],
                              [[f"`{op}`", f"{ms:.2f}", kind] for op, ms, kind in r["top_ops"]])
        if r.get("top_instances"):
            lines += ["", f"Heaviest single HLO instructions of `{case}` (ms per step; the "
                      "instruction as the profiler names it, shapes included):", ""]
            lines += common.table(
                ["HLO instruction", "ms", "class", "what it is"],
                [[f"`{op}`", f"{ms:.2f}", kind, "`" + " ".join(text.split()).replace("|", "/")[:300] + "`"]
                 for op, ms, kind, text in r["top_instances"]])
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=["hourglass104:float32"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--profile-steps", type=int, default=3, help="traced steps per case")
    parser.add_argument("--hlo-dump", action="store_true",
                        help="name the heaviest instructions' shapes from XLA's optimised HLO dump")
    parser.add_argument("--case-timeout", type=float, default=300.0)
    parser.add_argument("--budget", type=float, default=1800.0)
    parser.add_argument("--output", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "profile_step.md"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    results = common.Results(render, args, args.output, write_json=True)
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--size", str(args.size),
               "--batch", str(args.batch), "--steps", str(args.steps),
               "--profile-steps", str(args.profile_steps)] + (["--hlo-dump"] if args.hlo_dump else []) + ["--"]
    common.run_cases(command, args.cases, args.case_timeout, time.monotonic() + args.budget,
                     os.path.splitext(args.output)[0] + ".log", results, one_worker_per_case=True)
    print(results.text())


if __name__ == "__main__":
    main()
