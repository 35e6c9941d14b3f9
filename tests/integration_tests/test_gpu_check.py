"""benchmarks/gpu_check.py, the script that measures seltrain on a GPU: its reduced (CPU) version
runs end to end here and writes every section with sane values (no timing assertions), and its
trace analysis is checked on a hand-made profiler trace."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, subprocess_env

sys.path.insert(0, os.path.join(REPO, "benchmarks"))

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.mark.slow
def test_reduced_gpu_check_writes_every_section(tmp_path):
    pytest.importorskip("ffcv")
    out = tmp_path / "gpu_check.json"
    r = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py"),
                        "--reduced", "--json", str(out)], cwd=str(tmp_path),
                       env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["reduced"] is True and res["settings"]["arch"] == "resnet20"

    # 1, 2: step times of every form under every determinism / benchmark setting
    assert set(res["step"]["ms_per_step"]) == {"plain", "alpha0", "alpha-1"}
    settings = res["step_settings"]
    for name in ("deterministic", "nondeterministic_no_benchmark",
                 "nondeterministic_benchmark"):
        assert all(v > 0 for v in settings[name]["ms_per_step"].values()), name
    assert settings["deterministic"]["deterministic"] is True
    assert settings["deterministic"]["cudnn_benchmark"] is False
    assert settings["nondeterministic_benchmark"]["cudnn_benchmark"] is True
    assert settings["benchmark_speedup_over_deterministic"] > 0

    # 3: host reads: the LOG_EVERY reads (steps 0 and 20 of 25), the epoch end, the loader's
    # permutation; nothing per step
    for alpha in ("alpha0", "alpha-1"):
        h = res["host_syncs"][alpha]
        assert h["steps"] == 25 and h["total"] == 4 and h["per_step"] == 4 / 25, h
        assert h["by_site"]["seltrain/trainer.py:read"] == 3, h

    # 4: the regularizer adds ops to the step
    prof = res["profile"]
    assert prof["alpha-1"]["per_step"] > prof["alpha0"]["per_step"] > 0
    assert prof["si_kernels_per_step"] == prof["alpha-1"]["per_step"] - \
        prof["alpha0"]["per_step"]

    # 5: evaluation with and without SI; no GPU memory figures on the CPU
    ev = res["eval"]
    assert ev["batches"] == 2 and ev["ms_per_batch_eval_si_on"] > 0
    assert ev["ms_per_batch_eval_si_off"] > 0
    assert res["memory"]["peak_mb_train_epoch"] == {"alpha0": None, "alpha-1": None}

    # 6: FFCV through the trainer's borrowing path == a copying loader, bitwise
    f = res["ffcv_eval"]
    assert f["images"] == 96 and 0 <= f["acc_fixed"] <= 1 and f["si_fixed"] > 0
    assert f["fixed_equals_copying_bitwise"] is True
    assert f["acc_fixed"] == f["acc_copying"] and f["si_fixed"] == f["si_copying"]

    # 7: a fast ablation of every unit of layer1.0
    a = res["ablation"]
    assert (a["layer"], a["units"], a["images"], a["method"]) == ("layer1.0", 16, 32, "fast")
    assert a["seconds"] > 0 and a["units_per_pass"] == 1  # sized from memory on CUDA only

    # 8: DeepSpeed bf16 on a GPU only
    assert "skipped" in res["deepspeed_bf16"]


def test_forward_backward_gap_from_a_trace():
    """The profiler-trace analysis behind section 4, on a hand-made chrome trace of one step:
    forward kernels end at 100, SI kernels run 120-130 and 150-155, the first convolution
    backward kernel starts at 200: a window of 100 us, 15 us busy, 85 idle."""
    from gpu_check import forward_backward_gaps

    main, bwd = 1, 2

    def op(cat, name, ts, dur, tid):
        return {"cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "pid": 7}

    def kernel(ts, dur, corr):
        return {"cat": "kernel", "name": f"k{corr}", "ts": ts, "dur": dur, "tid": 99,
                "pid": 0, "args": {"correlation": corr}}

    def launch(ts, corr, tid):
        return dict(op("cuda_runtime", "cudaLaunchKernel", ts, 1, tid),
                    args={"correlation": corr})

    events = [
        op("user_annotation", "gpu_check.model_forward", 0, 50, main),
        launch(5, 1, main), kernel(10, 40, 1),
        launch(40, 2, main), kernel(60, 40, 2),          # the forward's last kernel: ends 100
        launch(60, 3, main), kernel(120, 10, 3),         # SI forward
        op("cpu_op", "autograd::engine::evaluate_function: DivBackward0", 70, 10, bwd),
        launch(72, 4, bwd), kernel(150, 5, 4),           # SI backward
        op("cpu_op", "autograd::engine::evaluate_function: ConvolutionBackward0", 90, 20, bwd),
        launch(95, 5, bwd), kernel(200, 30, 5),          # the first model-backward kernel
        launch(100, 6, bwd), kernel(230, 30, 6),
    ]
    (gap,) = forward_backward_gaps(events)
    assert gap == {"window_us": 100, "busy_us": 15, "idle_us": 85, "kernels_in_window": 2}
    # Kernels launched outside the forward range never count as forward kernels.
    events[3]["ts"] = 55
    (gap,) = forward_backward_gaps(events)
    assert gap["window_us"] == 150  # the forward's kernels now end at 50
