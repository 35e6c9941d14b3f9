"""Cluster timings on this machine: `ray up` to the first trial, and more by part.

    .venv/bin/python benchmarks/bench_cluster.py --part rayup    # ~4 min; root, sshd, rsync
    .venv/bin/python benchmarks/bench_cluster.py --part all

Each part returns a dict; the parts run are merged into benchmarks/results/bench_cluster.json
(parts not run this time keep their last record), and a table is printed.

rayup: what a user of cluster/local.yaml waits for, on loopback (tests/loopback_cluster.py: a
throwaway user, sshd on 127.0.0.1 and 127.0.0.2, the config's own setup and start commands).
The clock starts at `ray up -y --no-config-cache`; right after it returns, the documented
`ray job submit --working-dir . -- seltrain tune --search quickstart --address auto` is
submitted (one short epoch per trial, loopback_cluster.QUICKSTART_TINY). Recorded: `ray up`'s
own time, the worker at 127.0.0.2 up (its updater's "Ray start commands succeeded" in the
head's monitor log), the first trial running (its run folder's config.yaml, written when
Trainer.fit starts in a Train worker), the first epoch reported, the job's end, `ray down`.
The first trial starts on the head's CPU whether or not the worker is up yet.

autoscale, nodeloss (tests/fake_cluster.py: Ray's fake multi-node autoscaler, a head with 0
CPUs and 1-CPU worker nodes that start and stop as local processes; the tiny synthetic recipe
of the tests): seconds from a pending trial to its worker node up, and back to 0 nodes after
the search; trial-epochs lost per SIGKILLed worker node (measure_autoscale and
measure_node_loss say how each is counted). `--part autoscale` takes ~1.5 min, `--part
nodeloss` ~2 min.

Measured (one run of `--part rayup` on 2 cores shared with other jobs, load average 12 to 23):
`ray up` 22 s; the worker up 50 s and the first trial running 94 s after `ray up` started (72 s
after the job was submitted); the first epoch reported at 138 s; the 4 trials done at 329 s;
`ray down` 23 s. Record: benchmarks/results/bench_cluster.json (part "rayup").
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results", "bench_cluster.json")
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))


def measure_rayup(args) -> dict:
    import loopback_cluster as loopback

    why = loopback.unavailable()
    if why:
        raise SystemExit(f"bench_cluster: rayup: {why}")
    marks: dict[str, float] = {}
    with loopback.LoopbackCluster() as lc:
        setup = dict(lc.timings)
        search, exp = lc.quickstart()

        def poll():
            now = time.perf_counter() - t0
            if "worker_up" not in marks and lc.worker_started():
                marks["worker_up"] = now
            if "first_trial" not in marks and glob.glob(f"{exp}/trials/*/config.yaml"):
                marks["first_trial"] = now
            if "first_epoch" not in marks and any(
                    os.path.getsize(p) > 0 for p in glob.glob(f"{exp}/trials/*/metrics.jsonl")):
                marks["first_epoch"] = now

        t0 = time.perf_counter()
        lc.ray_up()
        marks["ray_up"] = time.perf_counter() - t0
        p, log = lc.submit(search, wait=False)
        while p.poll() is None:
            poll()
            time.sleep(0.5)
        poll()
        marks["job_done"] = time.perf_counter() - t0
        lc.wait(p, log, timeout=1, what="ray job submit")  # raises with the log on failure
        if "worker_up" not in marks:
            marks["worker_up_after_job"] = lc.wait_for_nodes(2) + marks["job_done"]
        lc.ray_down()
        down = lc.timings["ray_down"]
    return {"setup_s": {k: round(v, 2) for k, v in setup.items()},
            "from_ray_up_s": {k: round(v, 1) for k, v in marks.items()},
            "submit_to_first_trial_s": round(marks["first_trial"] - marks["ray_up"], 1),
            "ray_down_s": round(down, 1),
            "search": search.replace(lc.shared, "<shared>"),
            "nodes": {"head": "127.0.0.1 (1 CPU)", "worker": f"{loopback.WORKER} (1 CPU)"}}


# The tiny synthetic recipe of the tests (tests/helpers.py TINY), as a search: one worker
# of 1 CPU per trial, so each trial needs a worker node of the fake cluster.
def _fake_search(tmp: str, name: str, alphas, epochs: int, max_failures: int = 1,
                 train_size: int = 512) -> str:
    import yaml

    from helpers import TINY

    sets = [o for o in TINY if not o.startswith(("train.epochs=", "data.synthetic.train_size="))]
    recipe = {"base": os.path.join(REPO, "configs", "synthetic.yaml"),
              "space": {"selectivity.alpha": {"grid": list(alphas)}}, "seeds": [0],
              "resources": {"workers": 1, "cpus_per_worker": 1}, "max_concurrent_trials": 2,
              "storage": os.path.join(tmp, "exp"), "max_failures": max_failures,
              "overrides": [*sets, f"train.epochs={epochs}",
                            f"data.synthetic.train_size={train_size}"]}
    path = os.path.join(tmp, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f)
    return path


@contextlib.contextmanager
def _removed(folder: str):
    """The part's scratch folder (the search's experiment), removed afterwards."""
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Driver:
    """`seltrain tune --address` in a subprocess, its console lines time-stamped."""

    def __init__(self, recipe: str, address: str, env: dict):
        import subprocess
        import threading

        self.t0 = time.perf_counter()
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "seltrain", "tune", "--search",
                                      recipe, "--address", address], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.perf_counter() - self.t0, line.rstrip("\n")))

    def first(self, text: str) -> float | None:
        return next((t for t, ln in list(self.lines) if text in ln), None)

    def wait(self, timeout: float) -> str:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        out = "\n".join(ln for _, ln in self.lines)
        if self.proc.returncode != 0:
            raise SystemExit(f"bench_cluster: the search failed:\n{out[-3000:]}")
        return out


def measure_autoscale(args) -> dict:
    """Two concurrent trials on a fake cluster at 0 workers: each trial's worker waits for a
    node; recorded are the seconds from a trial's start (its TorchTrainer then asks for a
    1-CPU worker) to the 1st and 2nd worker node being up, and from the search's end to 0."""
    import tempfile

    from fake_cluster import FakeCluster, cluster_env

    tmp = tempfile.mkdtemp(prefix="bench_autoscale_")
    with FakeCluster(max_workers=2, idle_timeout_minutes=0.2) as fc, _removed(tmp):
        recipe = _fake_search(tmp, "grow", alphas=(0.0, -1.0), epochs=1)
        drv = _Driver(recipe, fc.address, cluster_env())
        up: dict[int, float] = {}
        while drv.proc.poll() is None:
            n = len(fc.workers())
            now = time.perf_counter() - drv.t0
            for k in range(1, n + 1):
                up.setdefault(k, now)
            time.sleep(0.5)
        drv.wait(timeout=60)
        done = time.perf_counter() - drv.t0
        down = fc.wait_workers(lambda n: n == 0, timeout=300, poll=0.5)
        started = sorted(t for t, ln in drv.lines if ln.endswith("  started"))
        return {
            "head_start_s": round(fc.start_s, 1),
            "from_driver_start_s": {"trial_1_started": round(started[0], 1),
                                    "trial_2_started": round(started[1], 1),
                                    "worker_1_up": round(up[1], 1), "worker_2_up": round(up[2], 1),
                                    "first_epoch": round(drv.first("  epoch 1/1"), 1),
                                    "search_done": round(done, 1)},
            "pending_trial_to_worker_up_s": [round(up[1] - started[0], 1),
                                             round(up[2] - started[1], 1)],
            "idle_to_workers_removed_s": round(down, 1),
            "idle_timeout_s": 12, "nodes": "head 0 CPU; worker type 1 CPU, 0..2 nodes"}


def measure_node_loss(args) -> dict:
    """One trial of 6 epochs (1 worker, 1 CPU, 8192 synthetic 16-px images: several seconds
    per epoch) on a fake cluster; its worker's node is SIGKILLed halfway through epochs 3 and
    5 (after 2 and 4 have finished). Per kill, from the trial's metrics.jsonl (written by the
    worker at each epoch's end, before the checkpoint is reported) and the console's
    "continued from its checkpoint after epoch N": trial-epochs lost = (epochs finished at
    the kill - N) + the fraction of the epoch in progress (time since the last epoch ended /
    the median epoch time so far). Goal: at most 1 with per-epoch checkpoints."""
    import json
    import tempfile

    from fake_cluster import FakeCluster, cluster_env

    epochs, kill_after = 6, (2, 4)
    tmp = tempfile.mkdtemp(prefix="bench_nodeloss_")

    def records(exp):
        runs = glob.glob(os.path.join(exp, "trials", "*", "metrics.jsonl"))
        if not runs:
            return []
        with open(runs[0]) as f:
            return [json.loads(ln) for ln in f if ln.endswith("\n") and ln.strip()]

    with FakeCluster(max_workers=2, idle_timeout_minutes=0.2) as fc, _removed(tmp):
        recipe = _fake_search(tmp, "loss", alphas=(-1.0,), epochs=epochs,
                              max_failures=len(kill_after) + 1, train_size=8192)
        exp = os.path.join(tmp, "exp", "loss")
        drv = _Driver(recipe, fc.address, cluster_env())
        seen: list[float] = []  # when each record appeared (driver clock)
        kills = []

        def poll():
            n = len(records(exp))
            while len(seen) < n:
                seen.append(time.perf_counter() - drv.t0)
            del seen[n:]  # a resumed run truncates the file to its checkpoint
            return n

        for after in kill_after:
            while drv.proc.poll() is None and poll() < after:
                time.sleep(0.1)
            # The median gap between epoch ends: a gap that spans a restart is an outlier.
            gaps = sorted(b - a for a, b in zip(seen, seen[1:]))
            mean_epoch = gaps[len(gaps) // 2]
            while drv.proc.poll() is None and poll() == after and \
                    time.perf_counter() - drv.t0 < seen[-1] + 0.5 * mean_epoch:
                time.sleep(0.05)
            nodes = fc.actor_nodes("RayTrainWorker")
            done = poll()
            if not nodes or done != after:
                raise SystemExit(f"bench_cluster: nodeloss: missed the kill after epoch {after}")
            t_kill = time.perf_counter() - drv.t0
            fc.kill_node(nodes[0])
            kills.append({"t_kill": t_kill, "done": done, "mean_epoch_s": mean_epoch,
                          "frac": (t_kill - seen[-1]) / mean_epoch})
            while drv.proc.poll() is None and \
                    sum("continued from its checkpoint" in ln for _, ln in drv.lines) < len(kills):
                time.sleep(0.2)
        out = drv.wait(timeout=900)
        resumed = [(t, int(ln.rsplit(" ", 1)[-1])) for t, ln in drv.lines
                   if "continued from its checkpoint after epoch" in ln]
        if len(resumed) != len(kills):
            raise SystemExit(f"bench_cluster: nodeloss: {len(kills)} kills, {len(resumed)} "
                             f"continuations:\n{out[-3000:]}")
        per_kill = []
        for k, (t_res, after) in zip(kills, resumed):
            per_kill.append({"killed_at_s": round(k["t_kill"], 1),
                             "epochs_done_at_kill": k["done"],
                             "epoch_in_progress_fraction": round(k["frac"], 2),
                             "continued_after_epoch": after,
                             "trial_epochs_lost": round(k["done"] - after + k["frac"], 2),
                             "kill_to_next_epoch_reported_s": round(t_res - k["t_kill"], 1)})
        final = [r["epoch"] + 1 for r in records(exp)]
        return {"kills": per_kill,
                "trial_epochs_lost_per_kill_max": max(p["trial_epochs_lost"] for p in per_kill),
                "epochs_in_metrics_jsonl": final,
                "mean_epoch_s": round(kills[0]["mean_epoch_s"], 1), "epochs": epochs,
                "checkpoint": "every epoch (run folder last.pt)"}


PARTS = {"rayup": measure_rayup, "autoscale": measure_autoscale, "nodeloss": measure_node_loss}


def _table(results: dict) -> str:
    lines = []
    for part, rec in results.items():
        lines.append(f"[{part}]")
        for k, v in rec.items():
            if isinstance(v, dict):
                lines += [f"  {k}:"] + [f"    {kk:<24} {vv}" for kk, vv in v.items()]
            else:
                lines.append(f"  {k:<26} {v}")
    return "\n".join(lines)


def save(results: dict, path: str = RESULTS) -> None:
    """Merge `results` (part -> record) into the JSON file, atomically."""
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    old.setdefault("parts", {}).update(results)
    old["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "platform": platform.platform()}
    from seltrain.atomic import atomic_write

    with atomic_write(path) as f:
        json.dump(old, f, indent=2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=[*PARTS, "all"], default="all")
    ap.add_argument("--out", default=RESULTS, help="the JSON file to merge results into")
    args = ap.parse_args(argv)
    results = {}
    for name in PARTS if args.part == "all" else [args.part]:
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        try:
            rec = PARTS[name](args)
        except NotImplementedError as e:
            print(f"bench_cluster: {name}: not written yet ({e})", file=sys.stderr)
            if args.part != "all":
                return 2
            continue
        rec["wall_s"] = round(time.perf_counter() - t0, 1)
        rec["load_avg_1min"] = {"start": round(load0[0], 1),
                                "end": round(os.getloadavg()[0], 1)}
        results[name] = rec
    print(_table(results))
    if results:
        save(results, args.out)
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
