"""Timing helpers shared by the GPU benchmarks (JAX backend).

A benchmark script runs its cases in a worker process that the script starts
again with `--worker`: the parent watches each case with a time limit, kills
a worker whose case runs past it (an XLA compilation cannot be interrupted
from Python), starts a new one on the cases left, and rewrites the results
table after every case, so that a run cut short still leaves what it measured.

Protocol: the worker prints `@@START <case>` before and `@@RESULT <json>`
after each case; everything else it prints goes to the log file.
"""

import json
import os
import re
import queue
import statistics
import subprocess
import sys
import threading
import time

START = "@@START "
RESULT = "@@RESULT "

# The official PyTorch figures of `/work/shared/ANCHORS.md` (one H100, 512 px,
# random weights): bs1 latency ms (network + decoding), inference img/s at
# batch 32, training img/s at batch 32 (Adam, targets precomputed), training
# peak GiB in fp32.
OFFICIAL = {
    "resnet18_dcn": {
        "latency_ms": {"float32": 6.3, "mixed_bfloat16": 7.5},
        "inference_img_s": {"float32": 2061, "mixed_bfloat16": 2601},
        "training_img_s": {"float32": 431, "mixed_bfloat16": 482},
        "training_peak_gib": 7.0,
    },
    "dla34": {
        "latency_ms": {"float32": 16.7, "mixed_bfloat16": 24.4},
        "inference_img_s": {"float32": 479, "mixed_bfloat16": 529},
        "training_img_s": {"float32": 94, "mixed_bfloat16": 96},
        "training_peak_gib": 14.6,
    },
    "hourglass104": {
        "latency_ms": {"float32": 15.8, "mixed_bfloat16": 20.6},
        "inference_img_s": {"float32": 278, "mixed_bfloat16": 424},
        "training_img_s": {"float32": 75, "mixed_bfloat16": 124},
        "training_peak_gib": 38.1,
    },
    "resnet101_dcn": {
        "latency_ms": {"float32": 10.6, "mixed_bfloat16": 13.7},
        "inference_img_s": {"float32": 675, "mixed_bfloat16": 951},
        "training_img_s": {"float32": 176, "mixed_bfloat16": 223},
        "training_peak_gib": 23.7,
    },
}

DTYPES = ("float32", "mixed_bfloat16")
SHORT_DTYPE = {"float32": "fp32", "mixed_bfloat16": "bf16"}


def median_ms(fn, sync, warmup=3, repeats=20, min_seconds=0.5, max_repeats=200):
    """Median wall time of `sync(fn())` in milliseconds, after `warmup` calls."""
    for _ in range(warmup):
        sync(fn())
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all) < min_seconds:
        start = time.perf_counter()
        sync(fn())
        times.append((time.perf_counter() - start) * 1e3)
        if len(times) >= max_repeats:
            break
    return statistics.median(times)


# The Pallas kernels' default tiles, kept while a benchmark sets others.
_PALLAS_CONFIG = None


def set_dcn_xla_options(options):
    """Benchmark-only: sets the XLA deformable convolution's module options.

    `options`: names among "keep" (`KEEP_COLUMNS`), "rows" and "window"
    (`GATHER_FORM`), "winscatter", "rowscatter", "sortscatter" and
    "sortrowscatter" (`SCATTER_FORM = "window"`, `"rows"`, `"sorted"`,
    `"sortedrows"`; else chosen by platform and channels), "lowscatter"
    (`SCATTER_DTYPE = "input"`), "pallasfwd" (`FORWARD = "pallas"`),
    "pallasbwd" (`BACKWARD = "pallas"`),
    "padfused" (`PAD_BARRIER = False`), "termsbarrier" (`TERMS_BARRIER = True`),
    "packed" (`PACKED_GATHER = True`), "kernelfirst" / "columnsfirst" /
    "kernelfirstauto" (`KERNEL_FIRST = True` / `False` / `None`, the
    default), and "cfg.FIELD=N" (field `FIELD` of
    the Pallas kernels' `deform_conv_jax.DEFAULT_CONFIG` set to the integer
    `N`, e.g. "cfg.bwd_block_m=128"); an empty list restores the defaults.
    """
    from keras_centernet.ops import deform_conv_jax
    from keras_centernet.ops import deform_conv_xla

    global _PALLAS_CONFIG
    if _PALLAS_CONFIG is None:
        _PALLAS_CONFIG = deform_conv_jax.DEFAULT_CONFIG
    fields = {}
    for option in options:
        if option.startswith("cfg."):
            name, _, value = option[4:].partition("=")
            if name not in _PALLAS_CONFIG._fields or not value.isdigit():
                raise ValueError(f"bad Pallas config option {option!r}: expected cfg.FIELD=N "
                                 f"with FIELD among {_PALLAS_CONFIG._fields}")
            fields[name] = int(value)
    options = [o for o in options if not o.startswith("cfg.")]
    deform_conv_jax.DEFAULT_CONFIG = _PALLAS_CONFIG._replace(**fields)

    scatters = {"winscatter": "window", "rowscatter": "rows", "sortscatter": "sorted",
                "sortrowscatter": "sortedrows"}
    projections = {"kernelfirst": True, "columnsfirst": False, "kernelfirstauto": None}
    known = {"keep", "rows", "window", "lowscatter", "pallasfwd", "pallasbwd", "padfused",
             "termsbarrier", "packed", *scatters, *projections}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown DCN options {sorted(unknown)}")
    chosen = [scatters[o] for o in options if o in scatters]
    if len(chosen) > 1:
        raise ValueError(f"more than one scatter option in {options}")
    projection = [projections[o] for o in options if o in projections]
    if len(projection) > 1:
        raise ValueError(f"more than one of {sorted(projections)} in {options}")
    deform_conv_xla.KERNEL_FIRST = projection[0] if projection else None
    deform_conv_xla.KEEP_COLUMNS = "keep" in options
    forms = [o for o in options if o in ("rows", "window")]
    deform_conv_xla.GATHER_FORM = forms[0] if forms else None
    deform_conv_xla.SCATTER_FORM = chosen[0] if chosen else None
    deform_conv_xla.SCATTER_DTYPE = "input" if "lowscatter" in options else None
    deform_conv_xla.FORWARD = "pallas" if "pallasfwd" in options else "xla"
    deform_conv_xla.BACKWARD = "pallas" if "pallasbwd" in options else "xla"
    deform_conv_xla.PAD_BARRIER = "padfused" not in options
    deform_conv_xla.TERMS_BARRIER = "termsbarrier" in options
    deform_conv_xla.PACKED_GATHER = "packed" in options


def dcn_xla_options_from_environment():
    """Benchmark-only: `set_dcn_xla_options` from `BENCH_DCN_XLA_OPTIONS` (comma-separated), where set.

    For a worker process (`training_step.py`, `architectures.py`) to measure
    an option of the XLA deformable convolution in a whole model before it is
    adopted, e.g. `BENCH_DCN_XLA_OPTIONS=keep,rows`.
    """
    options = os.environ.get("BENCH_DCN_XLA_OPTIONS")
    if options is not None:
        set_dcn_xla_options([o for o in options.split(",") if o])


def base_case(key):
    """A results key without its `@GPU|DCN` tag (`training_step.merged_key`)."""
    return key.split("@")[0]


def gpu_name(environment):
    """The device name in an environment line such as "Device: NVIDIA H200 (gpu, ...)"."""
    match = re.match(r"Device: (.+?) \(", environment or "")
    return match.group(1) if match else "?"


def environment_line():
    """Device, JAX and Keras versions, for the header of a results file."""
    import jax
    import keras

    device = jax.devices()[0]
    platform_version = " ".join(str(getattr(device.client, "platform_version", "")).split())
    if platform_version == device.platform:
        platform_version = ""
    return (
        f"Device: {device.device_kind} ({device.platform}"
        + (f", {platform_version}" if platform_version else "")
        + f"), JAX {jax.__version__}, Keras {keras.__version__}, "
        f"Python {sys.version.split()[0]}."
    )


def emit(case, **values):
    """Worker side: reports the result of one case to the parent."""
    print(RESULT + json.dumps({"case": case, **values}), flush=True)


def start(case):
    """Worker side: tells the parent that `case` begins (its time limit starts)."""
    print(START + case, flush=True)


class Results:
    """Parent side: the workers' results, with the table rewritten after each one.

    An instance is the `on_result` of `run_cases`: it keeps the environment
    line the workers report, stores every other result under its case, prints
    it (through `shown`, e.g. to leave out long curves) and rewrites `output`
    with `render(cases, environment, args)` (and, with `write_json`, the raw
    results next to it as `.json`), so that a run cut short keeps its table.
    """

    def __init__(self, render, args, output, write_json=False, shown=None):
        self.render = render
        self.args = args
        self.output = output
        self.write_json = write_json
        self.shown = shown or (lambda result: result)
        self.cases = {}
        self.environment = "Device: (not reported)"

    def __call__(self, result):
        result = dict(result)
        case = result.pop("case")
        if case == "environment":
            self.environment = result["line"]
            return
        self.cases[case] = result
        print(case, json.dumps(self.shown(result)), flush=True)
        write_text(self.output, self.text())
        if self.write_json:
            write_text(os.path.splitext(self.output)[0] + ".json",
                       json.dumps({"environment": self.environment, "cases": self.cases}, indent=1))

    def text(self):
        return self.render(self.cases, self.environment, self.args)


def run_train_function(model, data, steps, warmup=1, state=None):
    """Keras' compiled JAX training step, run back to back without host waits.

    Args:
        model: a compiled Keras model under the JAX backend whose
            `train_function` exists (after one `train_on_batch`).
        data: one batch `(x, y, sample_weight)`.
        steps: int. Timed steps.
        warmup: int. Untimed steps first. Defaults to 1.
        state: the JAX state to start from; defaults to the model's.

    Returns:
        `(logs, state, milliseconds per step)`.
    """
    import jax

    if state is None:
        state = model._get_jax_state(
            trainable_variables=True, non_trainable_variables=True,
            optimizer_variables=True, metrics_variables=True, purge_model_variables=False,
        )
    logs = None
    for _ in range(warmup):
        logs, state = model.train_function(state, iter([data]))
    jax.block_until_ready(state)
    started = time.perf_counter()
    for _ in range(steps):
        logs, state = model.train_function(state, iter([data]))
    jax.block_until_ready((logs, state))
    return logs, state, (time.perf_counter() - started) * 1e3 / steps


def run_cases(worker_command, cases, case_timeout_s, deadline, log_path, on_result,
              one_worker_per_case=False):
    """Parent side: runs `cases` in worker processes with a time limit per case.

    Args:
        worker_command: list of str. The worker's command line; the case
            names are appended.
        cases: list of str. Case names, in order.
        case_timeout_s: float. Limit of one case (compilation included).
        deadline: float. `time.monotonic()` after which nothing new starts
            and a running case is stopped.
        log_path: str. The workers' own output is appended here.
        on_result: callable(dict). Called with each result; cases that time
            out or crash get `{"case": ..., "error": ...}`.
        one_worker_per_case: bool. A fresh process per case (clean memory
            statistics). Defaults to False.
    """
    remaining = list(cases)
    if os.path.dirname(log_path):
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        while remaining:
            if time.monotonic() > deadline - 5:
                for case in remaining:
                    on_result({"case": case, "error": "not run: time budget of the run spent"})
                return
            batch = remaining[:1] if one_worker_per_case else list(remaining)
            process = subprocess.Popen(
                worker_command + batch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, bufsize=1, start_new_session=True,
            )
            lines = queue.Queue()

            def read(stream=process.stdout):
                for line in stream:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=read, daemon=True).start()
            current = None
            progress = False
            case_started = time.monotonic()
            tail = []
            while True:
                limit = min(case_started + case_timeout_s, deadline)
                try:
                    line = lines.get(timeout=max(0.1, limit - time.monotonic()))
                except queue.Empty:
                    line = ""
                if line is None:  # the worker exited
                    process.wait()
                    if current is None and not progress:
                        # It died before its first case (an import error, say).
                        current = remaining[0]
                    if current is not None:
                        on_result({
                            "case": current,
                            "error": f"worker exited with code {process.returncode}: "
                            + " | ".join(t.strip() for t in tail[-6:]),
                        })
                        remaining.remove(current)
                    break
                if line == "" and time.monotonic() >= limit:
                    os.killpg(process.pid, 9)
                    process.wait()
                    case = current or remaining[0]
                    reason = "time limit of the case" if time.monotonic() < deadline else "time budget of the run"
                    on_result({"case": case, "error": f"stopped after {time.monotonic() - case_started:.0f} s ({reason})"})
                    remaining.remove(case)
                    break
                if not line:
                    continue
                log.write(line)
                log.flush()
                if line.startswith(START):
                    current = line[len(START):].strip()
                    case_started = time.monotonic()
                    tail = []
                elif line.startswith(RESULT):
                    result = json.loads(line[len(RESULT):])
                    on_result(dict(result))
                    if result["case"] in remaining:
                        progress = True
                        remaining.remove(result["case"])
                    current = None
                else:
                    tail.append(line)
                    del tail[:-40]


def fmt(value, digits=1):
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def ratio(ours, official, digits=2):
    if ours is None or official is None:
        return "n/a"
    return f"{ours / official:.{digits}f}"


def table(header, rows):
    """Markdown table lines from a header list and rows of strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def write_text(path, text):
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
