"""The analyses of a sweep: one process against Ray workers side by side, and the task plan
of the paper's case.

Measured (``--trials`` tiny trials, resnet20 on synthetic 32 px images, one epoch each): every
trial's selectivity and robustness (``--corruptions`` x ``--severities`` on the fly, and FGSM
at eps 0 and 0.01, as robustness needs one attack), plus one ablation of the 64 units of
layer3.2 on the first trial. First in one process (``commands.run_analysis``, one target
after another, ``--threads`` torch threads: by default as many as the workers hold together,
so both sides use the same cores), then through ``fanout.run_fanout`` on a Ray started here
with ``--workers`` CPUs and one CPU (one torch thread) per task, on a copy of the same
trials. The Ray time includes starting Ray and its workers (a real run pays them too).
Every JSON and CSV file the analyses write must be byte for byte the same in both copies.
PNG figures and TensorBoard event files are left out of that check: a PNG is drawn from the
same numbers but its bytes are matplotlib's (they are counted apart, for information), and
an event file holds wall-clock times.

Planned (``fanout_plan``, no measuring): the paper's case, 75 trials of ResNet-50 at 224 px
with 1000 classes and 10,000 images, analysed by selectivity, robustness (the 15 common
corruptions x 5 severities, and PGD), ablation (layer4's units), orientation and gradients:
the tasks each analysis splits into (its ``chunks(opts)``, and one merge), the work of each
by ``COST`` (images x forward passes) and the memory each holds (``task_memory``).

    python benchmarks/bench_analysis_fanout.py               # measure, and plan
    python benchmarks/bench_analysis_fanout.py --plan-only   # the plan alone, seconds

Writes benchmarks/results/bench_analysis_fanout.json. Result (2 CPU cores shared with other
jobs, load average 5.1 at the start, 256 images a trial): one process 81.3 s, Ray 58.8 s with
its start, 1.38x (an earlier run at load 7.6: 1.82x), the 60 JSON/CSV files identical; the
plan: 7,200 tasks, the largest (PGD) 0.22% of the work (docs/performance.md, "Analyses of a
sweep on Ray").
"""
from __future__ import annotations

import argparse
import filecmp
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The cost model, in forward passes of one image through the whole network. Kept simple on
# purpose: it ranks tasks, it does not predict seconds.
COST = {
    # a backward pass costs about two forward passes (the usual rule for convolutions)
    "backward": 2.0,
    # orientation's stimuli: 12 orientations x 4 phases x 9 frequencies (orientation.py)
    "gratings": 432,
    # a PGD or FGSM step at one epsilon: a forward and a backward; then one forward to score
    "attack_step": 3.0,
}
# Images per forward pass on a GPU in the plan: an assumption (a usual evaluation batch for
# ResNet-50 at 224 px), not read from a recipe.
PLAN_BATCH = 256


# --------------------------------------------------------------------------- the plan

def _part(units: int, j: int, n: int) -> int:
    """Units in the j-th of n runs of ``units`` (as ablation_parts and gradients split)."""
    return (j + 1) * units // n - j * units // n


def _layer_run(layers: list, j: int, n: int) -> list:
    """The j-th of n runs of ``layers`` (as unit_selectivity and orientation_parts split)."""
    return layers[j * len(layers) // n:(j + 1) * len(layers) // n]


def chunk_cost(name: str, chunk, opts, layers: list[tuple[str, int]], images: int,
               depth: dict[str, float] | None = None) -> float:
    """The work of one chunk of analysis ``name``, in image-forward passes, by ``COST``.
    ``layers``: (name, units) of the layers the analysis reads; ``images``: the split's size
    (capped by ``opts.max_images``); ``depth``: {layer: the share of the network's
    multiply-adds up to its output}. An ablation pass runs only the network above its layer
    and a unit's gradient only the network below it, so they count that share of a pass; a
    layer missing from ``depth`` counts whole passes."""
    n = min(images, opts.max_images) if opts.max_images else images
    depth = depth or {}
    below = {name_: depth.get(name_, 1.0) for name_, _ in layers}
    above = {name_: 1.0 - depth[name_] if name_ in depth else 1.0 for name_, _ in layers}
    kind, a, b = chunk
    if name == "selectivity":   # one pass over the images, reading its run of layers
        return float(n) if _layer_run(layers, a, b) else 0.0   # fewer layers than runs
    if name == "robustness":
        if kind == "corruptions":   # one corruption at one severity (on the fly)
            return float(n)
        steps = opts.steps if a == "pgd" else 1
        return n * len(opts.eps) * (steps * COST["attack_step"] + 1)
    if name == "ablation":      # per layer: the intact pass and one pass per zeroed unit
        return float(sum(n * (1 + above[ln] * _part(units, a, b)) for ln, units in layers))
    if name == "orientation":   # gratings; per layer: the top/bottom-gOSI ablation (2 passes)
        run = _layer_run(layers, a, b)   # and the shift invariance with each group zeroed
        if not run:                      # (2 x 2: shifted and not); once, unablated (2)
            return 0.0
        if opts.no_ablation:
            return float(COST["gratings"])
        return COST["gratings"] + 2 * n + len(run) * 6 * n
    if name == "gradients":     # per layer: a forward, and one backward per unit of the run
        return float(sum(n * below[ln] * (1 + COST["backward"] * _part(units, a, b))
                         for ln, units in layers))
    raise ValueError(f"no cost model for the analysis {name}")


def task_memory(name: str, chunk, opts, model_bytes: int, act_bytes: int,
                largest_act_bytes: int) -> int:
    """Bytes one task holds: the model, and the activations of one batch. Forward-only tasks
    (no gradients) keep about three activations of a block alive at once (its input, its
    branch, its output): 3 x the largest module output. Attacks keep every module output
    and its gradient (2 x their sum); gradients also keep one gradient per unit of a vmapped
    block (1 + unit_block copies). ``act_bytes``/``largest_act_bytes``: the sum of every
    module's output, and the largest one, for one image."""
    if chunk == "merge":
        return model_bytes   # the merge loads the target and joins numbers: no batch
    if name == "robustness" and chunk[0] == "attack":
        return model_bytes + PLAN_BATCH * 2 * act_bytes
    if name == "gradients":
        return model_bytes + opts.batch_size * (1 + opts.unit_block) * act_bytes
    return model_bytes + PLAN_BATCH * 3 * largest_act_bytes


def fanout_plan(trials: int, analyses: dict, layers: dict[str, list[tuple[str, int]]],
                images: int, model_bytes: int = 0, act_bytes: int = 0,
                largest_act_bytes: int = 0, depth: dict[str, float] | None = None) -> dict:
    """The tasks ``run_fanout`` makes for ``trials`` targets and ``analyses`` ({name: its
    options}; each analysis' ``chunks(opts)``, and one merge where there are two or more, as
    ``fanout.split`` does), with each task's work (``chunk_cost``) and memory
    (``task_memory``). ``layers``: {analysis: [(layer, units)]} it reads; ``depth``: as
    ``chunk_cost`` takes it."""
    from seltrain.analysis.registry import analysis

    rows, tasks = {}, []
    for name, opts in analyses.items():
        module = analysis(name)
        parts = module.chunks(opts) if hasattr(module, "chunks") else []
        if len(parts) < 2:
            raise ValueError(f"{name}: one task per trial has no cost model here")
        per_trial = [(module.chunk_label(opts, c), chunk_cost(name, c, opts, layers[name],
                                                              images, depth),
                      task_memory(name, c, opts, model_bytes, act_bytes, largest_act_bytes))
                     for c in parts]
        per_trial.append(("merge", 0.0, task_memory(name, "merge", opts, model_bytes,
                                                    act_bytes, largest_act_bytes)))
        tasks += [(name, *t) for t in per_trial] * trials
        top = max(per_trial, key=lambda t: t[1])
        rows[name] = {"tasks_per_trial": len(per_trial), "tasks": len(per_trial) * trials,
                      "work_per_trial": sum(t[1] for t in per_trial),
                      "largest_task": top[0], "largest_task_work": top[1],
                      "memory_per_task_max_bytes": max(t[2] for t in per_trial)}
    total = sum(t[2] for t in tasks)
    big = max(tasks, key=lambda t: t[2])
    for row in rows.values():
        row["work_share"] = row["work_per_trial"] * trials / total if total else 0.0
    return {"trials": trials, "images": images, "tasks": len(tasks), "total_work": total,
            "largest_task": f"{big[0]} ({big[1]})", "largest_task_work": big[2],
            "largest_task_share": big[2] / total if total else 0.0,
            # past this many task slots (GPUs) the largest task, not the rest, sets the time
            "useful_slots": total / big[2] if big[2] else 0.0,
            "memory_per_task_max_bytes": max(t[3] for t in tasks), "analyses": rows}


def activation_bytes(arch: str, num_classes: int, image_size: int) -> tuple[int, int, int]:
    """(model bytes, sum of every leaf module's output, the largest output) for one image in
    float32, read with forward hooks on the meta device (nothing is computed)."""
    import torch

    from seltrain.models import build_model

    with torch.device("meta"):
        model = build_model(arch, num_classes, 3, image_size).eval()
    sizes: list[int] = []
    # an in-place ReLU's output is its input's memory: not counted twice
    leaves = [m for m in model.modules()
              if not list(m.children()) and not getattr(m, "inplace", False)]
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel())) for m in leaves]
    with torch.no_grad():
        model(torch.empty(1, 3, image_size, image_size, device="meta"))
    for h in hooks:
        h.remove()
    params = sum(t.numel() for t in list(model.parameters()) + list(model.buffers())
                 if t.is_floating_point())
    return 4 * params, 4 * sum(sizes), 4 * max(sizes)


def layer_depths(model, image_size: int, names: list[str]) -> dict[str, float]:
    """{layer: the share of the network's multiply-adds (convolutions and linear layers)
    spent up to its output}, from one forward pass on the meta device."""
    import torch
    from torch import nn

    done = [0]
    at: dict[str, int] = {}

    def count(m, i, o):
        per_out = (m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                   if isinstance(m, nn.Conv2d) else m.in_features)
        done[0] += o.numel() * per_out

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks += [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: at.__setitem__(n, done[0])) for n in names]
    with torch.no_grad():
        model(torch.empty(1, 3, image_size, image_size, device="meta"))
    for h in hooks:
        h.remove()
    return {n: at[n] / done[0] for n in names}


def paper_plan(trials: int = 75, images: int = 10_000, image_size: int = 224) -> dict:
    """``fanout_plan`` for the paper's case: ResNet-50 at ``image_size`` px, 1000 classes,
    the analyses at their defaults except robustness (15 corruptions x 5 severities, PGD
    only) and ablation (layer4's blocks)."""
    import torch

    from seltrain.analysis.ablation import AblationOptions
    from seltrain.analysis.gradients import GradientsOptions
    from seltrain.analysis.orientation import OrientationOptions
    from seltrain.analysis.robustness import RobustnessOptions
    from seltrain.analysis.unit_selectivity import SelectivityOptions
    from seltrain.models import build_model
    from seltrain.probes import resolve_layers

    with torch.device("meta"):
        model = build_model("resnet50", 1000, 3, image_size)
    blocks = [(n, model.get_submodule(n).conv3.out_channels)
              for n in resolve_layers(model, "blocks")]
    layer4 = [b for b in blocks if b[0].startswith("layer4")]
    analyses = {"selectivity": SelectivityOptions(),
                "robustness": RobustnessOptions(max_images=0, attack=("pgd",)),
                "ablation": AblationOptions(layers=tuple(n for n, _ in layer4)),
                "orientation": OrientationOptions(),
                "gradients": GradientsOptions()}
    layers = {"selectivity": blocks, "robustness": blocks, "ablation": layer4,
              "orientation": blocks, "gradients": blocks}
    model_b, act_b, largest_b = activation_bytes("resnet50", 1000, image_size)
    depth = layer_depths(model.eval(), image_size, [n for n, _ in blocks])
    plan = fanout_plan(trials, analyses, layers, images, model_b, act_b, largest_b, depth)
    plan.update(model="resnet50", image_size=image_size, num_classes=1000,
                model_bytes=model_b, activation_bytes_per_image=act_b,
                largest_activation_bytes_per_image=largest_b, batch=PLAN_BATCH,
                multiply_add_share_up_to=depth,
                cost_model=dict(COST, unit="image-forward passes through the whole network"),
                options={n: {k: v for k, v in vars(o).items() if k in (
                    "max_images", "corruptions", "severities", "attack", "eps", "steps",
                    "layers", "batch_size", "unit_block", "max_units")}
                    for n, o in analyses.items()})
    return plan


# --------------------------------------------------------------------------- the measurement

def train_trials(root: str, n: int, images: int) -> str:
    """``n`` one-epoch resnet20 trials on synthetic 32 px data under ``root``/exp/trials."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    for i in range(n):
        alpha = (0.0, -1.0, 1.0, -0.5, 0.5, -2.0)[i % 6]
        r = subprocess.run([sys.executable, "-m", "seltrain", "train", "configs/synthetic.yaml",
                            "data.val_size=64", "data.synthetic.train_size=256",
                            f"data.synthetic.test_size={images}", "train.epochs=1",
                            "run.progress=false", f"run.out_dir={root}/exp/trials",
                            f"run.name=t{i}", f"selectivity.alpha={alpha}"],
                           cwd=REPO, env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"training trial t{i} failed: {r.stderr.strip()[-300:]}")
    return os.path.join(root, "exp")


def the_analyses(args) -> tuple[dict, dict]:
    """({name: options} for every trial, {name: options} for the first trial alone)."""
    from seltrain.analysis.ablation import AblationOptions
    from seltrain.analysis.robustness import RobustnessOptions
    from seltrain.analysis.unit_selectivity import SelectivityOptions

    every = {"selectivity": SelectivityOptions(device="cpu"),
             "robustness": RobustnessOptions(device="cpu", max_images=0,
                                             corruptions=args.corruptions,
                                             severities=args.severities, attack="fgsm",
                                             eps="0,0.01")}
    first = {"ablation": AblationOptions(device="cpu", layers=("layer3.2",))}
    return every, first


def one_process(exp: str, every: dict, first: dict, threads: int) -> float:
    import torch

    from seltrain.analysis.commands import run_analysis

    torch.set_num_threads(threads)
    log = io.StringIO()
    t0 = time.perf_counter()
    for name, opts in every.items():
        run_analysis(name, exp, opts, stream=log)
    for name, opts in first.items():
        run_analysis(name, os.path.join(exp, "trials", "t0"), opts, stream=log)
    return time.perf_counter() - t0


def on_ray(exp: str, every: dict, first: dict, workers: int) -> tuple[float, float, int]:
    """Seconds in all, seconds to start Ray, and the number of tasks."""
    import ray

    from seltrain.analysis.fanout import FanoutOptions, join_ray, run_fanout

    opts = FanoutOptions(address="local", num_cpus=workers, cpus_per_task=1.0)
    log = io.StringIO()
    t0 = time.perf_counter()
    join_ray(opts)   # one Ray for both calls; run_fanout uses it as it is
    t_up = time.perf_counter() - t0
    try:
        run_fanout([exp], every, opts, stream=log)
        run_fanout([os.path.join(exp, "trials", "t0")], first, opts, stream=log)
    finally:
        ray.shutdown()
    took = time.perf_counter() - t0
    n_tasks = sum(int(ln.split()[0]) for ln in log.getvalue().splitlines()
                  if " analysis task(s) on Ray" in ln)
    return took, t_up, n_tasks


def compare(a: str, b: str) -> dict:
    """Every JSON and CSV file under the trials' analysis folders of ``a`` and ``b``, byte
    for byte; PNGs counted apart."""
    def files(root: str, suffixes: tuple) -> list[str]:
        out = []
        for d, _, names in os.walk(root):
            if f"{os.sep}analysis" in d:
                out += [os.path.relpath(os.path.join(d, f), root) for f in names
                        if f.endswith(suffixes) and not f.startswith(".")]
        return sorted(out)

    data_a, data_b = files(a, (".json", ".csv")), files(b, (".json", ".csv"))
    differ = [f for f in data_a if f in data_b and not filecmp.cmp(
        os.path.join(a, f), os.path.join(b, f), shallow=False)]
    png = files(a, (".png",))
    png_same = sum(os.path.isfile(os.path.join(b, f)) and filecmp.cmp(
        os.path.join(a, f), os.path.join(b, f), shallow=False) for f in png)
    return {"identical": data_a == data_b and not differ and bool(data_a),
            "files_compared": len(data_a), "differing": differ,
            "only_in_one": sorted(set(data_a) ^ set(data_b)),
            "png_files": len(png), "png_identical": int(png_same)}


def measure(args) -> dict:
    import ray
    import torch

    load_start = os.getloadavg()
    every, first = the_analyses(args)   # a bad option is one line before any training
    work = tempfile.mkdtemp(prefix="bench_fanout_")
    try:
        t0 = time.perf_counter()
        exp = train_trials(work, args.trials, args.images)
        train_s = time.perf_counter() - t0
        # Both runs analyse the trials at the same path (the files name their checkpoint):
        # the one process' results are moved aside and the trials put back as trained.
        fresh, done_one = os.path.join(work, "fresh"), os.path.join(work, "one")
        shutil.copytree(exp, fresh)
        one_s = one_process(exp, every, first, args.threads)
        os.rename(exp, done_one)
        os.rename(fresh, exp)
        ray_s, ray_up_s, n_tasks = on_ray(exp, every, first, args.workers)
        same = compare(done_one, exp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"trials": args.trials, "images": args.images, "image_size": 32, "model": "resnet20",
            "analyses": {"every trial": {n: _described(o) for n, o in every.items()},
                         "first trial": {n: _described(o) for n, o in first.items()}},
            "one_process_threads": args.threads, "ray_workers": args.workers,
            "ray_cpus_per_task": 1, "ray_tasks": n_tasks, "train_s": train_s,
            "one_process_s": one_s, "ray_s": ray_s, "ray_start_s": ray_up_s,
            "speedup": one_s / ray_s, **same,
            "load_average_start": list(load_start), "load_average_end": list(os.getloadavg()),
            "cpus": os.cpu_count(), "machine": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__}


def _described(opts) -> dict:
    keep = ("max_images", "corruptions", "severities", "attack", "eps", "layers")
    return {k: v for k, v in vars(opts).items() if k in keep and v not in ((), None)}


def _gb(b: float) -> str:
    return f"{b / 2**30:.1f} GiB"


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--images", type=int, default=256,
                   help="test images of each synthetic trial, every one analysed")
    p.add_argument("--corruptions", default="gaussian_noise,contrast,fog")
    p.add_argument("--severities", default="1,3")
    p.add_argument("--workers", type=int, default=2, help="Ray CPUs, one task on each")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the one process (default: --workers)")
    p.add_argument("--plan-only", action="store_true", help="only the paper's plan")
    p.add_argument("--out", default=None, help="the JSON (default: benchmarks/results/"
                   "bench_analysis_fanout.json; with --plan-only, none unless given)")
    args = p.parse_args()
    if args.trials < 1 or args.images < 1 or args.workers < 1:
        p.error("--trials, --images and --workers take numbers >= 1")
    args.threads = args.threads or args.workers
    from seltrain.errors import SeltrainError

    try:
        plan = paper_plan()
        record = {"benchmark": "analyses of a sweep: one process vs Ray workers; the paper's "
                               "task plan", "plan": plan,
                  "command": "python benchmarks/bench_analysis_fanout.py "
                  + " ".join(sys.argv[1:])}
        print(f"plan, {plan['trials']} trials of resnet50 at {plan['image_size']} px, "
              f"{plan['images']} images: {plan['tasks']} tasks; the largest, "
              f"{plan['largest_task']}, is {100 * plan['largest_task_share']:.2f}% of the work "
              f"(it bounds the time past {plan['useful_slots']:.0f} slots); "
              f"at most {_gb(plan['memory_per_task_max_bytes'])} per task")
        for name, row in plan["analyses"].items():
            print(f"  {name}: {row['tasks']} tasks ({row['tasks_per_trial']} per trial), "
                  f"{100 * row['work_share']:.1f}% of the work, largest "
                  f"{row['largest_task']}, {_gb(row['memory_per_task_max_bytes'])} per task")
        if not args.plan_only:
            m = measure(args)
            record["measured"] = m
            print(f"{m['trials']} trials, {m['images']} images: one process "
                  f"({m['one_process_threads']} threads) {m['one_process_s']:.1f} s, Ray "
                  f"({m['ray_workers']} workers, {m['ray_tasks']} tasks) {m['ray_s']:.1f} s "
                  f"(Ray start {m['ray_start_s']:.1f} s): {m['speedup']:.2f}x; "
                  f"{m['files_compared']} JSON/CSV files "
                  f"{'identical' if m['identical'] else 'DIFFER: ' + str(m['differing'])}; "
                  f"load average at start {m['load_average_start'][0]:.1f}")
    except SeltrainError as e:
        print(f"bench_analysis_fanout: {e}", file=sys.stderr)
        return 2
    if args.out is None and args.plan_only:
        return 0   # the plan alone does not replace the measured record
    args.out = args.out or os.path.join(REPO, "benchmarks", "results",
                                        "bench_analysis_fanout.json")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(record, fh, indent=1, default=str)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
