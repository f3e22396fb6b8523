"""Modular CenterNet: box heads and heatmap losses compared, and the modular presets' speed.

Issue 14's proof in one GPU call. Two parts, run one after the other so that
the timings have the GPU to themselves:

1. Speed of the modular presets (`mobilenetv3_fpn`, `resnet50_bifpn`; the
   paper presets' are in `architectures.md`): `architectures.py --presets ...`
   (parameters, batch-1 latency and batch-32 images/s of the network and of
   network + decoding, float32 and mixed bfloat16, 512x512).
2. A short training on the demo's synthetic set at the same budget for every
   head: the paper's size + offset heads with L1, the LTRB distances with
   GIoU and DIoU at the centre, LTRB + GIoU at every pixel of the Gaussian
   (TTFNet), and the quality focal loss on the heatmap:
   `benchmarks/demo_settings.py run` (all cases at once, pycocotools AP).

The data are the demo's, dumped here under TensorFlow:

    python benchmarks/demo_settings.py dump .sweep/d128n.npz --num-images 1024
    # GPU machine (JAX; carry the keras and pycocotools wheels and .sweep)
    KERAS_BACKEND=jax python benchmarks/modular.py .sweep/d128n.npz \\
        --output $OUT/modular.md

Each part writes its own table next to the output as it goes
(`modular_speed.md`, `modular_training.md`), so a call cut short keeps what
it measured; the output joins them under one header (`--parts speed` alone
rewrites the speed table and keeps the training table found there). The
committed `results/modular.md` came from two calls (training with a short
speed budget, then `--parts speed`, about 220 s); its last section, what the
figures say, is written by hand.
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402

SPEED_PRESETS = ("resnet50_bifpn", "mobilenetv3_fpn")

# `name:learning_rate:epochs:augmentation[:clamp[:options]]` of demo_settings.py:
# the demo's resnet18_small, 1024 training images, batch 32, the demo's rate.
TRAINING_CASES = tuple(
    f"{name}{epochs}:1e-3:{epochs}:aug::images=1024{options}"
    for epochs in (40, 80)
    for name, options in (
        ("size", ""),
        ("ltrb_giou", ",box_head=ltrb,iou_loss=giou"),
        ("ltrb_diou", ",box_head=ltrb,iou_loss=diou"),
        ("ltrb_giou_gaussian", ",box_head=ltrb,iou_loss=giou,ltrb_gaussian=1"),
        ("size_qfl", ",heatmap_loss=quality_focal"),
    )
)


def run_speed(args, path):
    command = [sys.executable, os.path.join(HERE, "architectures.py"),
               "--presets", *args.presets, "--output", path,
               "--budget", str(args.speed_budget), "--log", path + ".log"]
    if args.quick:
        command += ["--quick", "--size", "64", "--batch", "2"]
    subprocess.run(command, check=False, timeout=args.speed_budget + 120)


def run_training(args, path):
    cases = list(args.cases)
    if args.quick:  # a smoke test of the plumbing: two epochs of 64 images
        cases = [spec.replace(":40:", ":2:").replace(":80:", ":2:").replace(
            "images=1024", "images=64") for spec in cases if ":40:" in spec][:2]
    command = [sys.executable, os.path.join(HERE, "demo_settings.py"), "run", args.data,
               "--cases", *cases, "--output", path, "--timeout", str(args.training_budget)]
    subprocess.run(command, check=False, timeout=args.training_budget + 180)


def read(path, skip_title=True):
    if not os.path.exists(path):
        return "(not measured: this part did not run or did not finish)\n"
    lines = open(path).read().splitlines()
    if skip_title and lines and lines[0].startswith("# "):
        lines = lines[1:]
    # Sections of the part become subsections of the joined file.
    return "\n".join("#" + line if line.startswith("## ") else line for line in lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the demo's data of `demo_settings.py dump`")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "modular.md"))
    parser.add_argument("--parts", nargs="+", choices=("speed", "training"),
                        default=["speed", "training"])
    parser.add_argument("--presets", nargs="+", default=list(SPEED_PRESETS))
    parser.add_argument("--cases", nargs="+", default=list(TRAINING_CASES))
    parser.add_argument("--speed-budget", type=float, default=330.0,
                        help="seconds the speed part may take")
    parser.add_argument("--training-budget", type=float, default=330.0,
                        help="seconds the training part may take")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test of the plumbing")
    args = parser.parse_args()
    stem = os.path.splitext(os.path.abspath(args.output))[0]
    speed_path, training_path = stem + "_speed.md", stem + "_training.md"
    started = time.monotonic()
    if "speed" in args.parts:
        run_speed(args, speed_path)
    if "training" in args.parts:
        run_training(args, training_path)
    text = "\n".join([
        "# Modular CenterNet: heads compared, presets timed (`benchmarks/modular.py`)",
        "",
        "Issue 14's proof. `mobilenetv3_fpn` = MobileNetV3-Large + 128-channel FPN + LTRB head "
        "with GIoU; `resnet50_bifpn` = ResNet-50 + three 64-channel BiFPN layers + the paper's "
        "size/offset heads; both backbones from `keras.applications` with random weights. "
        f"The parts run last time ({', '.join(args.parts)}) took {time.monotonic() - started:.0f} s.",
        "",
        "## Speed of the modular presets (512x512, JAX)",
        "",
        read(speed_path),
        "## The heads at the same training budget (synthetic set, 128 px)",
        "",
        "Cases: the demo's `resnet18_small` (ResNet-18, planes 32, up-convolutions 128-64-64) "
        "trained from scratch on 1024 synthetic training images with the official augmentation, "
        "batch 32, Adam 1e-3 cosine with 3 warm-up epochs; only the box head or heatmap loss "
        "changes. `size` = the paper's size + offset heads with L1 (weights 0.1 and 1); "
        "`ltrb_*` = distances to the four sides at the centre (`box_head=\"ltrb\"`, weight 5 as "
        "TTFNet) with the named IoU loss; `_gaussian` = every pixel of the object's Gaussian "
        "regresses the box, weighted as TTFNet; `qfl` = quality focal loss on the heatmap.",
        "",
        read(training_path),
    ])
    common.write_text(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
