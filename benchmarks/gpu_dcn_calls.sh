#!/usr/bin/env bash
# The GPU measurements of the XLA deformable convolution (issue 10), in device
# calls of under 10 minutes each, from the repository's root with `.whl`
# carried (benchmarks/README.md says how to fill it):
#
#   bash benchmarks/gpu_dcn_calls.sh 1   # profile_dcn.py (bf16) + DLA-34 bf16 steps: default, each scatter form
#   bash benchmarks/gpu_dcn_calls.sh 4   # DLA-34 bf16 steps: lowscatter, pallasfwd, keep
#   bash benchmarks/gpu_dcn_calls.sh 2   # training_step.py: resnet18_dcn, dla34 (+ augmentation)
#   bash benchmarks/gpu_dcn_calls.sh 3   # deform_conv.py: reference and xla, batch 1 and 32
#   bash benchmarks/gpu_dcn_calls.sh 5   # profile_dcn.py with HLO: xla, pallasfwd + DLA-34 bf16 steps
#   bash benchmarks/gpu_dcn_calls.sh 6   # a DLA-34 bf16 step + deform_conv.py xla at batch 32
#   bash benchmarks/gpu_dcn_calls.sh 7   # profile_dcn.py with HLO: the gather forms, padding fused or not
#   bash benchmarks/gpu_dcn_calls.sh 8   # profile_dcn.py with HLO: sampling terms written first (and kept), packed gathers + DLA-34 steps
#   bash benchmarks/gpu_dcn_calls.sh 9   # hourglass104 bf16 training step on an H100 (one-pass BatchNorm)
#   bash benchmarks/gpu_dcn_calls.sh 10  # profile_bn.py + hourglass104 bf16 profile, its HLO and every instruction's time kept
#   bash benchmarks/gpu_dcn_calls.sh 11  # hourglass104 bf16 step: kernel gradients' transposes kept out of Adam's update
#   bash benchmarks/gpu_dcn_calls.sh 12  # hourglass104 bf16 (+ augmented) training_step, kernel gradients fused into Adam / routed
#   bash benchmarks/gpu_dcn_calls.sh 13  # profile_dcn.py: the Pallas backward and its tiles + DLA-34 bf16 steps with it
#   bash benchmarks/gpu_dcn_calls.sh 14  # DLA-34 bf16 steps: the default and both Pallas passes at the best backward tiles;
#                                        # the default resnet18_dcn bf16 step
#   bash benchmarks/gpu_dcn_calls.sh 15  # probe_mosaic_dcn.py: one TMA box copy per DCN window against XLA's gather,
#                                        # and fused Mosaic GPU forward and backward kernels against XLA's
#   bash benchmarks/gpu_dcn_calls.sh 16  # profile_dcn.py + deform_conv.py: projected first (KERNEL_FIRST) or not
#   bash benchmarks/gpu_dcn_calls.sh 17  # resnet18_dcn and DLA-34 bf16 inference: columns first, projected first where smaller
#
# Done on 2026-12-06 (H100; results/profile_dcn.md, deform_conv_xla.md,
# training_step.md): phase 1 before the sorted default, phase 2 in bf16
# without augmentation, phase 3 for xla at batch 32 (all three under the
# earlier `sum(y)` loss, profile_dcn.md section 6); then 5, 7 and 6 with the
# loss that needs the forward. 2026-12-07 (H100s, profile_dcn.md section 8, profile_step.md,
# training_step.md): 8's bf16 profile alone (neither option helps: both stay off), and 9. Then, a
# later session of 2026-12-07: 10 (one H100; results/profile_bn.md, profile_step.md) and phase 2's
# bf16 rows without augmentation (one-pass BatchNorm). A third session of 2026-12-07: 12 (one
# H100; training_step.md). A fourth session of 2026-12-07: 13, trimmed by hand to the device time
# left (its profile's first five variants on shapes 0 and 1, then the pallasfwd,pallasbwd step
# alone), and three tile sweeps of pallasbwd (profile_dcn.md section 9). A fifth session of
# 2026-12-07 (one H100; training_step.md, deform_conv_xla.md): 14 (its DLA-34 steps ran past the
# then 95 s per step on the cold machine and were rerun by hand on the warm one), then by hand on
# the same machine 2's fp32 rows without augmentation and 3 without batch 1. Not run, and moot:
# 11 (12 measured the routing it was to motivate, which is the default since) and 8's DLA-34
# steps. 15 ran in the sixth session of 2026-12-07 (one H100, at 61410ad, before the `copies`
# probe existed), then by hand on a fresh H100 `--cases copies gather --blocks 16 32 64 128 256`
# (results/probe_mosaic_dcn.md; profile_dcn.md section 10: the Mosaic GPU route is closed on
# Hopper). 16 ran on 2026-12-08 (one H100, at d4e8ec1; results/profile_dcn_kernel_first.md,
# deform_conv_kernel_first.md, profile_dcn.md section 11). Pending: 17 (no machine came in the
# rest of that session), the whole-model inference effect of the projected forward.
#
# Results go to $OUT (at most 8 files a call come back). Phase 2's json joins
# the earlier table here with `python benchmarks/training_step.py --render-only
# --merge benchmarks/results/training_step.json <new json>` (each row keeps its
# GPU and DCN implementation), then `python benchmarks/gpu.py`.
set -u
phase=${1:?"phase: 1 to 17"}
OUT=${OUT:-/tmp/gpu_dcn_calls}
mkdir -p "$OUT" /tmp/gpu_dcn_work
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader

step() {  # one bf16 training step (preset $2, DLA-34 by default) with the XLA DCN's options $1
  # File names from $OUT may hold letters, digits, '.', '_' and '-' only.
  local name preset=${2:-dla34}
  name=step_${preset}_$(echo "${1:-default}" | tr ',=' '__')
  # A cold machine compiles a DLA-34 step in about 85 s.
  BENCH_DCN_XLA_OPTIONS=$1 timeout 160 python3 benchmarks/training_step.py --presets $preset \
    --dtypes mixed_bfloat16 --skip-render --augment-presets --steps 10 \
    --output /tmp/gpu_dcn_work/$name.md 2>&1 | grep -E "^$preset|Error" | cut -c1-300
  # The json joins training_step.json with `training_step.py --render-only --merge`.
  cp /tmp/gpu_dcn_work/$name.md /tmp/gpu_dcn_work/$name.json "$OUT/" 2>/dev/null
}

case $phase in
  1)
    timeout 200 python3 benchmarks/profile_dcn.py conv xla xla:winscatter xla:sortrowscatter \
      xla:lowscatter xla:pallasfwd reference --dtypes bfloat16 --budget 170 \
      --output "$OUT/profile_dcn.md" 2>&1 | grep "^|" | cut -c1-400
    for options in "" winscatter sortrowscatter; do step "$options"; done
    ;;
  4)
    for options in lowscatter pallasfwd keep; do step "$options"; done
    ;;
  2)
    timeout 570 python3 benchmarks/training_step.py --presets resnet18_dcn dla34 \
      --augment-presets resnet18_dcn dla34 --budget 540 --case-timeout 200 \
      --output /tmp/gpu_dcn_work/training_step.md 2>&1 | grep -vi warning | tail -25
    cp /tmp/gpu_dcn_work/training_step.md /tmp/gpu_dcn_work/training_step.json "$OUT/"
    ;;
  3)
    timeout 580 python3 benchmarks/deform_conv.py --implementations reference,xla \
      --batches 1 32 --bf16-batches 32 --budget 540 --output "$OUT/deform_conv_xla.md" \
      2>&1 | grep -vi warning | tail -12
    ;;
  5)
    # The timed loss's output gradient needs the forward (deform_conv.weighted_square); command
    # buffers off, so that each kernel keeps its HLO name (the HLO says what it holds).
    export XLA_FLAGS=--xla_gpu_enable_command_buffer=
    timeout 150 python3 benchmarks/profile_dcn.py conv xla xla:pallasfwd \
      --dtypes bfloat16 --shapes 0 1 2 --budget 120 --hlo-dump /tmp/gpu_dcn_work/hlo \
      --output "$OUT/profile_dcn_bf16.md" 2>&1 | grep "^|" | cut -c1-400
    timeout 50 python3 benchmarks/profile_dcn.py conv xla xla:pallasfwd --dtypes float32 \
      --shapes 0 --budget 30 --output "$OUT/profile_dcn_fp32.md" 2>&1 | grep "^|" | cut -c1-400
    tar czf "$OUT/profile_dcn_hlo.tgz" -C /tmp/gpu_dcn_work hlo
    unset XLA_FLAGS
    for options in "" pallasfwd; do step "$options"; done
    ;;
  6)
    BENCH_DCN_XLA_OPTIONS= timeout 150 python3 benchmarks/training_step.py --presets dla34 \
      --dtypes mixed_bfloat16 --skip-render --augment-presets --steps 10 \
      --output "$OUT/step_default.md" 2>&1 | grep -E "^dla34|Error" | cut -c1-400
    timeout 320 python3 benchmarks/deform_conv.py --implementations xla --batches 32 \
      --bf16-batches 32 --budget 290 --output "$OUT/deform_conv_xla.md" 2>&1 \
      | grep -vi warning | tail -12
    ;;
  7)
    export XLA_FLAGS=--xla_gpu_enable_command_buffer=
    timeout 150 python3 benchmarks/profile_dcn.py conv xla xla:rows xla:padfused xla:rows:padfused \
      --dtypes bfloat16 --shapes 0 1 --budget 120 --hlo-dump /tmp/gpu_dcn_work/hlo \
      --output "$OUT/profile_dcn_gather.md" 2>&1 | grep "^|" | cut -c1-400
    tar czf "$OUT/profile_dcn_hlo.tgz" -C /tmp/gpu_dcn_work hlo
    ;;
  8)
    export XLA_FLAGS=--xla_gpu_enable_command_buffer=
    timeout 190 python3 benchmarks/profile_dcn.py conv xla xla:termsbarrier xla:termsbarrier:keep xla:packed \
      xla:termsbarrier:packed --dtypes bfloat16 --shapes 0 1 --budget 160 \
      --hlo-dump /tmp/gpu_dcn_work/hlo --output "$OUT/profile_dcn_terms.md" 2>&1 \
      | grep "^|" | cut -c1-400
    timeout 60 python3 benchmarks/profile_dcn.py conv xla xla:termsbarrier --dtypes float32 \
      --shapes 0 --budget 40 --output "$OUT/profile_dcn_terms_fp32.md" 2>&1 | grep "^|" | cut -c1-400
    tar czf "$OUT/profile_dcn_hlo.tgz" -C /tmp/gpu_dcn_work hlo
    unset XLA_FLAGS
    for options in "" termsbarrier termsbarrier,packed; do step "$options"; done
    ;;
  9)
    # hourglass104 bf16 training with OnePassBatchNormalization, on an H100
    # (the official figures are an H100's; hourglass104 met 2x the official bf16 only on an H200).
    timeout 230 python3 benchmarks/training_step.py --presets hourglass104 \
      --dtypes mixed_bfloat16 --augment-presets --skip-render --case-timeout 200 --budget 220 \
      --output /tmp/gpu_dcn_work/training_step_bn.md 2>&1 | grep -E "^hourglass|Error" | cut -c1-600
    cp /tmp/gpu_dcn_work/training_step_bn.md /tmp/gpu_dcn_work/training_step_bn.json "$OUT/"
    ;;
  10)  # ran at 067db15 with the folded-statistics forms and variants too (results/profile_bn.md)
    timeout 120 python3 benchmarks/profile_bn.py --output "$OUT/profile_bn.md" 2>&1 | grep "^|" | cut -c1-300
    export XLA_FLAGS=--xla_gpu_enable_command_buffer=  # each kernel keeps its HLO name
    timeout 170 python3 benchmarks/profile_step.py hourglass104:mixed_bfloat16 --hlo-dump \
      --budget 165 --case-timeout 165 --output "$OUT/profile_step_hlo.md" 2>&1 | grep "^| hourglass" | cut -c1-300
    gzip -c "$(ls -S /tmp/profile_step_hlo_*/*after_optimizations.txt | head -1)" > "$OUT/hourglass_bf16_hlo.txt.gz"
    unset XLA_FLAGS
    ;;
  11)
    export XLA_FLAGS=--xla_gpu_enable_command_buffer=  # each kernel keeps its HLO name
    timeout 560 python3 benchmarks/profile_step.py hourglass104:mixed_bfloat16 \
      hourglass104:mixed_bfloat16:kernelbarrier hourglass104:mixed_bfloat16:kernellayout \
      hourglass104:mixed_bfloat16:ohwi --budget 550 --case-timeout 135 \
      --output "$OUT/profile_step_transposes.md" 2>&1 | grep "^| hourglass" | cut -c1-300
    unset XLA_FLAGS
    ;;
  12)
    # Hourglass-104 bf16 steps (and training_step's default cases with augmentation, resnet18_dcn
    # and dla34 bf16) with the kernel gradients' layout change fused into Adam (as before
    # ops.kernel_gradients) and routed row-major through a barrier (the default since).
    for routing in fused routed; do
      BENCH_KERNEL_GRADIENTS=$routing timeout 285 python3 benchmarks/training_step.py \
        --presets hourglass104 --dtypes mixed_bfloat16 --skip-render --budget 270 \
        --case-timeout 270 --output "$OUT/step_hourglass_$routing.md" 2>&1 \
        | grep -E "^hourglass|Error" | cut -c1-400
    done
    ;;
  13)
    # The Pallas backward (deform_conv_xla.BACKWARD = "pallas": column gradient, channel sums and
    # kernel gradient in one kernel, XLA's sorted scatter for the input gradient), its tiles, and
    # with the Pallas forward; then DLA-34 bf16 steps without and with both.
    export XLA_FLAGS=--xla_gpu_enable_command_buffer=
    timeout 150 python3 benchmarks/profile_dcn.py conv xla xla:pallasbwd xla:pallasfwd:pallasbwd \
      xla:pallasbwd:cfg.bwd_block_m=128 xla:pallasbwd:cfg.bwd_warps=8 \
      --dtypes bfloat16 --shapes 0 1 --budget 125 --output "$OUT/profile_dcn_pallasbwd.md" 2>&1 \
      | grep -E "^\||Error" | cut -c1-420
    unset XLA_FLAGS
    step ""
    step pallasfwd,pallasbwd
    ;;
  14)
    # DLA-34 bf16 steps in one call: the default, then both Pallas passes at the backward's best
    # tiles of profile_dcn.md section 9 (32768 programs, one stage; at the default tiles the pair
    # was as fast as the default and 5.6 GiB lighter).
    # Then the plain resnet18_dcn bf16 row with the kernel gradients routed (the dla34 one is
    # the first step here).
    step ""
    step pallasfwd,pallasbwd,cfg.bwd_programs=32768,cfg.bwd_stages=1
    step "" resnet18_dcn
    ;;
  15)
    # Whether a Mosaic GPU DCN could gather its windows with one TMA copy each faster than XLA,
    # and how fast fused kernels that do so run (profile_dcn.md section 10): 4.7M windows of
    # 128x128x64, batch 32, four block sizes; the forward and the backward's column work
    # against XLA's and a plain conv's.
    timeout 450 python3 benchmarks/probe_mosaic_dcn.py --blocks 16 32 64 128 256 --tiles 64 \
      --parts 16 32 \
      --output "$OUT/probe_mosaic_dcn.md" 2>&1 | grep -E "^\||^\(|Error" | cut -c1-600
    ;;
  16)
    # Projected first (deform_conv_xla.KERNEL_FIRST): z = x @ W_k for every kernel point, then
    # z's windows (Cout channels) sampled instead of the input's (Cin), no column tensor.
    # Every DLA-34 / ResNet-18-DCN shape in bf16, both forms and its scatter forms; then the
    # whole networks, both forms, float32 and bfloat16.
    export XLA_FLAGS=--xla_gpu_enable_command_buffer=
    timeout 190 python3 benchmarks/profile_dcn.py conv xla:columnsfirst xla:kernelfirst \
      --dtypes bfloat16 --shapes 0 1 2 3 4 5 6 --budget 150 --output "$OUT/profile_dcn_kf.md" \
      2>&1 | grep -E "^\||Error" | cut -c1-300
    timeout 60 python3 benchmarks/profile_dcn.py conv xla:kernelfirst:sortrowscatter \
      xla:kernelfirst:winscatter --dtypes bfloat16 --shapes 0 1 --budget 40 \
      --output "$OUT/profile_dcn_kf_scatter.md" 2>&1 | grep -E "^\||Error" | cut -c1-300
    unset XLA_FLAGS
    timeout 320 python3 benchmarks/deform_conv.py --implementations xla:columnsfirst,xla:kernelfirst \
      --batches 32 --bf16-batches 32 --budget 290 --output "$OUT/deform_conv_kf.md" 2>&1 \
      | grep -vi warning | tail -14
    ;;
  17)
    # Inference (architectures.py: bs1 latency, batch-32 img/s) of resnet18_dcn and DLA-34 in
    # bf16 with the DCNs in the column form, then projected first where deform_conv_xla's rule
    # picks it (KERNEL_FIRST = None: a forward alone wherever z is smaller than the columns).
    for options in columnsfirst kernelfirstauto; do
      BENCH_DCN_XLA_OPTIONS=$options timeout 165 python3 benchmarks/architectures.py \
        --presets resnet18_dcn dla34 --dtypes mixed_bfloat16 --case-timeout 120 --budget 150 \
        --output "$OUT/architectures_$options.md" 2>&1 | grep -E "^\| (resnet18_dcn|dla34)|Error" | cut -c1-300
    done
    ;;
  *) echo "unknown phase $phase (1 to 17)" >&2; exit 2 ;;
esac
