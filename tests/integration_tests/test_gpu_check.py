"""benchmarks/gpu_check.py and benchmarks/device/run.sh, what a GPU machine runs: the same code
path at toy size (--cpu-smoke) runs end to end here and writes every section with sane values
(no timing assertions), a missing package makes its section "not run", and the trace analysis
is checked on a hand-made profiler trace."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, subprocess_env

sys.path.insert(0, os.path.join(REPO, "benchmarks"))

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _fake_wheel(folder) -> str:
    """A minimal pure-Python wheel (one module), for run.sh to install offline."""
    import zipfile

    path = os.path.join(folder, "seltrain_probe_pkg-1.0-py3-none-any.whl")
    info = "seltrain_probe_pkg-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("seltrain_probe_pkg.py", "VALUE = 7\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: seltrain-probe-pkg\n"
                   "Version: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                   "Root-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.mark.slow
def test_run_sh_cpu_smoke_runs_every_section_and_says_not_run_for_a_missing_package(tmp_path):
    """benchmarks/device/run.sh --cpu-smoke: the offline install into a temporary folder, then
    gpu_check.py --smoke through every section, with DeepSpeed treated as missing (the
    DeepSpeed path itself is tests/integration_tests/test_deepspeed_bf16.py's)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(str(wheels))
    out = tmp_path / "out"
    env = subprocess_env(PYTHON=sys.executable, WHEELS=str(wheels))
    r = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "device", "run.sh"),
                        "--cpu-smoke", str(out), "--", "--without", "deepspeed"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    assert f"run.sh: installed 1 wheel(s) from {wheels} into " in r.stdout
    res = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.log").read_text().count("[gpu_check]") >= 20
    sec = res["sections"]
    assert res["smoke"] is True and res["settings"]["arch"] == "resnet20"
    assert res["seconds_total"] > 0
    statuses = {k: v["status"] for k, v in sec.items()}
    assert statuses == {"step": "ok", "deepspeed_bf16": "not run", "trials_per_gpu": "ok",
                        "end_to_end": "ok", "payload": "ok", "reuse_race": "ok",
                        "ffcv_eval": "ok", "diagnostics": "ok", "ablation": "ok",
                        "compile": "not run"}, statuses
    # A missing package: "not run", naming it; never ok.
    assert "deepspeed is not installed" in sec["deepspeed_bf16"]["why"]

    # 1: every form under every setting, the fair plain loop, host ms, the anchor
    st = sec["step"]
    for name in ("deterministic", "nondeterministic_no_benchmark",
                 "nondeterministic_benchmark"):
        row = st["settings"][name]
        assert set(row["ms_per_step"]) == {"plain", "alpha0", "alpha-1"}
        assert all(v > 0 for v in row["ms_per_step"].values())
        assert all(v > 0 for v in row["host_ms_per_step"].values())
    assert st["settings"]["deterministic"]["cudnn_benchmark"] is False
    assert st["anchor"]["value"] == 3000 and st["images_per_s_per_gpu"]["alpha0"] > 0

    # 3: 1 and 2 trials sharing the device, each with its epoch and evaluation
    for n in ("1", "2"):
        run = sec["trials_per_gpu"]["runs"][n]
        assert len(run["trials"]) == int(n) and run["epoch_s_slowest"] > 0
        assert all(t["train_images"] == 512 and t["eval_images"] == 192 for t in run["trials"])
        assert run["data_mb_per_trial"] == pytest.approx((576 + 128) * 3 * 64 / 2 ** 20)

    # 4: the torch loader over JPEG folders, and FFCV (installed here)
    e2e = sec["end_to_end"]
    assert e2e["torch_loader"]["images_per_s"] > 0 and e2e["ffcv"]["status"] == "ok"

    # 5: the payload packs and unpacks exactly; present-only ships fewer bytes
    pl = sec["payload"]
    assert pl["checks"] == {"dense_round_trip_exact": True,
                            "present_only_round_trip_exact": True}
    assert pl["present_only"]["payload_mb"] < pl["dense"]["payload_mb"]

    # 6, 7: the FFCV-like ring of reused buffers, and FFCV itself: bitwise
    assert sec["reuse_race"]["checks"] == {"trainer_path_equals_copying_bitwise": True}
    assert sec["reuse_race"]["slots"] == 5 and sec["reuse_race"]["images"] == 96
    assert sec["ffcv_eval"]["checks"] == {"trainer_path_equals_copying_bitwise": True}

    # 8: host reads: the LOG_EVERY reads (steps 0 and 20 of 25), the epoch end, the loader's
    # permutation (once an epoch, on the host); nothing per step; the regularizer adds ops
    d = sec["diagnostics"]
    for alpha in ("alpha0", "alpha-1"):
        h = d["host_syncs"][alpha]
        assert h["steps"] == 25 and h["total"] == 4 and h["per_step"] == 4 / 25, h
        assert h["by_site"]["seltrain/metrics.py:read"] == 3, h
    assert d["profile"]["alpha-1"]["per_step"] > d["profile"]["alpha0"]["per_step"] > 0
    assert d["memory"]["peak_mb_train_epoch"] == {"alpha0": None, "alpha-1": None}

    a = sec["ablation"]
    assert (a["layer"], a["units"], a["images"], a["method"]) == ("layer1.0", 16, 32, "fast")

    table = (out / "gpu_check.txt").read_text().splitlines()
    assert table[0].startswith("seltrain GPU check on cpu")
    assert [ln.split()[:2] for ln in table[1:]] == [
        ["step", "ok"], ["deepspeed_bf16", "not"], ["trials_per_gpu", "ok"],
        ["end_to_end", "ok"], ["payload", "ok"], ["reuse_race", "ok"], ["ffcv_eval", "ok"],
        ["diagnostics", "ok"], ["ablation", "ok"], ["compile", "not"]]


    # The sweep's wall time from the trials' figures (the arithmetic; a smoke check's own
    # figures mean nothing for the sweep, so it must be asked for)
    est = [sys.executable, os.path.join(REPO, "benchmarks", "estimate_alpha_sweep.py"),
           "--check", str(out / "gpu_check.json"), "--json", str(tmp_path / "est.json")]
    refused = subprocess.run(est, env=subprocess_env(), capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "is a --smoke check" in refused.stderr
    done = subprocess.run(est + ["--allow-smoke"], env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    e = json.loads((tmp_path / "est.json").read_text())
    assert (e["trials"], e["epochs"], e["gpus"]) == (75, 200, 8)
    for n in (1, 2):
        row = e["by_trials_per_gpu"][str(n)]
        epoch_s = sec["trials_per_gpu"]["runs"][str(n)]["epoch_s_slowest"]
        assert row["slots"] == 8 * n and row["waves"] == -(-75 // (8 * n))
        assert row["hours"] == pytest.approx(row["waves"] * 200 * epoch_s / 3600)


def test_the_full_check_refuses_a_machine_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the full check")
    r = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py"),
                        "--out", str(tmp_path)], env=subprocess_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == ("gpu_check: no CUDA device here; run with "
                                                 "--smoke for the toy-size check")


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
