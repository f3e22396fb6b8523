"""The benchmarks' bookkeeping helpers, whose mistakes would mislabel measured figures."""

import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def benchmarks():
    sys.path.insert(0, BENCHMARKS)
    try:
        import profile_step
        import training_step

        yield profile_step, training_step
    finally:
        sys.path.remove(BENCHMARKS)


@pytest.mark.parametrize(
    "kernel, hlo_op, expected",
    [
        # Kernel and HLO names as the JAX profiler reported them on an H100.
        ("cudnn-conv-bw-filter.334", "cudnn-conv-bw-filter.334", "convolution"),
        ("sm90_xmma_fprop_implicit_gemm", "cudnn-conv.111", "convolution"),
        ("gemm_fusion_dot_general_3", "gemm_fusion_dot_general.3", "convolution"),
        # A type conversion is not a convolution (XLA's "convert" contains "conv").
        ("loop_convert_fusion_3", "loop_convert_fusion.3", "elementwise fusion"),
        ("input_convert_reduce_fusion", "input_convert_reduce_fusion", "reduction fusion"),
        ("input_scatter_fusion_20", "input_scatter_fusion.20", "scatter"),
        ("wrapped_transpose", "wrapped_transpose", "copy / transpose"),
        ("loop_add_fusion", "loop_add_fusion", "elementwise fusion"),
        ("cub::DeviceRadixSortOnesweepKernel", "custom-call.1", "other"),
    ],
)
def test_kernel_class(benchmarks, kernel, hlo_op, expected):
    profile_step, _ = benchmarks
    assert profile_step.kernel_class(kernel, hlo_op) == expected


def test_merged_key_keeps_measurements_from_elsewhere(benchmarks):
    _, training_step = benchmarks
    h200 = {"gpu": "NVIDIA H200", "dcn": "reference", "fit_img_s": 325.0}
    h100 = {"gpu": "NVIDIA H100 80GB HBM3", "dcn": "xla", "fit_img_s": 346.0}
    results = {"dla34:mixed_bfloat16": h200}
    # Another GPU and DCN: kept beside the earlier figure.
    key = training_step.merged_key(results, "dla34:mixed_bfloat16", h100)
    assert key == "dla34:mixed_bfloat16@NVIDIA H100 80GB HBM3|xla"
    # A rerun on the same GPU with the same DCN replaces it.
    rerun = dict(h200, fit_img_s=330.0)
    assert training_step.merged_key(results, "dla34:mixed_bfloat16", rerun) == "dla34:mixed_bfloat16"
    # A new case, and a key already tagged, stay as they are.
    assert training_step.merged_key(results, "dla34:float32", h100) == "dla34:float32"
    tagged = "dla34:mixed_bfloat16@NVIDIA H100 80GB HBM3|xla"
    assert training_step.merged_key(results, tagged, h100) == tagged
