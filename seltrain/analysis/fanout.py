"""The analyses of many checkpoints on a Ray cluster: one task per checkpoint and analysis.

    seltrain analyze robustness EXPERIMENT --address auto --gpus-per-task 0.25
    seltrain report EXPERIMENT --analyses robustness,ablation --address HOST:PORT

``run_fanout(targets, analyses, FanoutOptions(...))`` is the same from Python. Each task runs,
on a Ray worker, exactly what one step of ``commands.run_analysis`` runs in one process
(``commands.analyse_target``: load the checkpoint, compute, write through ``OutputFolder``
into the run's ``analysis/<name>/``, atomically and under the folder's lock), so the files are
those of the single-process run, number for number. The results folder must be on storage
every node mounts: the driver writes a token there that each task reads back first
(``raysession.StorageToken``), so a node-local path fails at the first task with one line.

Resuming: each output folder's marker records the task key (``task_key``: a hash of the
analysis, its options and the checkpoint's bytes). A rerun skips every task whose folder holds
its key, so a changed option recomputes only the analyses it belongs to, a Ctrl-C or SIGTERM
of the driver loses only the tasks in flight, and ``--force`` recomputes everything.

Chunks: an analysis module may split itself (``chunks(opts)``, ``compute_chunk``, ``merge``):
robustness by corruption x severity and by attack, ablation and gradients by runs of every
layer's units (ablation's cumulative curves by order), selectivity and orientation by runs of
layers.
Each chunk is a task; when the last is in, one more task merges their numbers and writes the
folder, the same files as one process writes.

Failures: a task whose node dies is rescheduled by Ray (``max_retries``); a task that raises
is tried once more; one that fails twice is named (checkpoint, analysis) at the end, the
others' results are kept, and the same command reruns only what failed.

The driver prints one line per finished task and a progress line (done, running, pending,
ETA); Ray's own console stays quiet (``raysession.quiet_ray``) unless ``verbose``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from seltrain.analysis.options import AnalysisOptions
from seltrain.errors import ConfigError, Interrupted, SeltrainError

# Options that choose where results go or whether to replace them, not what they are
# (--checkpoint picks the file, whose bytes the key hashes anyway).
NOT_HASHED = ("out", "force", "checkpoint")
# A task that raises is tried this many times in all before it counts as failed.
ATTEMPTS = 2
# Seconds between progress lines while nothing finishes.
PROGRESS_EVERY_S = 30.0


@dataclass
class FanoutOptions:
    """Where and how the tasks run.

    ``address``: ``auto`` (the cluster this node belongs to), ``HOST:PORT`` (its GCS) or
    ``local`` (a Ray started here with ``num_cpus``/``num_gpus``, default the machine's); a
    Ray this process already joined is used as it is. ``cpus_per_task``/``gpus_per_task``:
    what each task holds (fractional GPUs let several small tasks share one GPU); the task
    runs torch with that many CPU threads. ``max_retries``: Ray's reschedules of a task whose
    worker or node died. ``force``: recompute tasks whose outputs exist."""
    address: str = "local"
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    num_cpus: float | None = None
    num_gpus: float | None = None
    max_retries: int = 3
    force: bool = False
    verbose: bool = False

    def __post_init__(self):
        if not self.address:
            raise ConfigError("--address: give auto, HOST:PORT or local")
        if not (self.cpus_per_task > 0):
            raise ConfigError(f"--cpus-per-task {self.cpus_per_task:g}: give a number > 0")
        if self.gpus_per_task < 0 or (self.gpus_per_task > 1
                                      and self.gpus_per_task != int(self.gpus_per_task)):
            raise ConfigError(f"--gpus-per-task {self.gpus_per_task:g}: give 0, a fraction "
                              "below 1, or a whole number of GPUs")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries {self.max_retries}: give a number >= 0")


@dataclass
class Task:
    """One analysis of one target."""
    analysis: str
    ref: object                 # a target.TargetRef
    opts: AnalysisOptions
    n_targets: int
    key: str
    out_dir: str
    attempts: int = 0
    error: str | None = None
    chunk: object = None        # one of the analysis' chunks(opts), "merge", or None: whole
    label: str = ""             # the chunk, in words
    group: int | None = None    # the whole analysis this chunk is part of

    @property
    def what(self) -> str:
        return (f"{self.analysis} of {self.ref.ckpt_path or self.ref.run_dir}"
                + (f" (chunk {self.label})" if self.label else ""))


@dataclass
class TaskResult:
    analysis: str
    run_dir: str
    out_dir: str
    status: str                 # "done", "skipped" (outputs were there) or "failed"
    summary: dict = field(default_factory=dict)
    error: str | None = None


# --------------------------------------------------------------------------- task keys

def _file_sha256(path: str, _cache: dict = {}) -> str:  # noqa: B006 - per-process cache
    stat = os.stat(path)
    sig = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if sig not in _cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _cache[sig] = h.hexdigest()
    return _cache[sig]


def options_record(opts: AnalysisOptions) -> dict:
    """The options that decide an analysis' numbers, as plain data."""
    return {f.name: list(v) if isinstance(v := getattr(opts, f.name), tuple) else v
            for f in dataclasses.fields(opts) if f.name not in NOT_HASHED}


def task_key(name: str, ref, opts: AnalysisOptions) -> str:
    """A hash of the analysis, its options (``options_record``) and the checkpoint (its
    bytes; a target folder's target.json, which holds its weights' sha256; a network named by
    ``--model``: its spec)."""
    if ref.spec is not None and (ref.ckpt_path is None or not os.path.isfile(ref.ckpt_path)):
        from seltrain.analysis.target_spec import TARGET_FILE

        spec_file = os.path.join(ref.run_dir or "", TARGET_FILE)
        ckpt = _file_sha256(spec_file) if ref.run_dir and os.path.isfile(spec_file) \
            else json.dumps(ref.spec.to_dict(), sort_keys=True, default=str)
    else:
        ckpt = _file_sha256(ref.ckpt_path)
    text = json.dumps({"analysis": name, "options": options_record(opts), "checkpoint": ckpt},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(targets: Sequence, analyses: Mapping[str, AnalysisOptions], *,
         force: bool = False) -> tuple[list[Task], list[TaskResult]]:
    """The tasks to run and the results already on disk: one task per target (a
    ``TargetRef``) and analysis, skipped where the output folder's marker holds its key."""
    from seltrain.analysis.outputs import final_folder, read_marker

    todo, done = [], []
    for name, opts in analyses.items():
        for ref in targets:
            key = task_key(name, ref, opts)
            out = final_folder(ref.run_dir, opts, name, len(targets), ref.ckpt_path)
            marker = read_marker(out) if os.path.isdir(out) else {}
            if not force and marker.get("key") == key:
                done.append(TaskResult(name, ref.run_dir, out, "skipped",
                                       summary=dict(marker.get("summary") or
                                                    marker.get("headline") or {},
                                                    run_dir=ref.run_dir, out_dir=out)))
            else:
                todo.append(Task(name, ref, opts, len(targets), key, out))
    return todo, done


# --------------------------------------------------------------------------- the task

def split(task: Task) -> list[Task]:
    """A task as its chunks (analyses whose module has ``chunks``: robustness by corruption
    and severity and by attack), or itself."""
    from seltrain.analysis.registry import analysis

    module = analysis(task.analysis)
    parts = module.chunks(task.opts) if hasattr(module, "chunks") else []
    if len(parts) < 2:
        return [task]
    return [dataclasses.replace(task, chunk=c, label=module.chunk_label(task.opts, c))
            for c in parts]


def run_task(task: Task, storage, threads: int, parts: list | None = None) -> dict:
    """On a Ray worker: one analysis of one target into its output folder, or one chunk of
    it (its numbers, returned), or the merge of its chunks' numbers into the folder."""
    import torch

    from seltrain.analysis.commands import analyse_target
    from seltrain.analysis.registry import analysis

    if storage is not None:
        storage.check()
    torch.set_num_threads(threads)
    module = analysis(task.analysis)
    if task.chunk is None:
        return analyse_target(task.analysis, task.ref, task.opts, task.n_targets, key=task.key)
    if task.chunk == "merge":
        return analyse_target(task.analysis, task.ref, task.opts, task.n_targets, key=task.key,
                              compute=lambda target, opts: module.merge(target, opts, parts))
    t0 = time.perf_counter()
    target = task.ref.load(task.opts)
    torch.manual_seed(task.opts.seed)
    part = module.compute_chunk(target, task.opts, task.chunk)
    return {"part": part, "lines": [f"{task.what} ({time.perf_counter() - t0:.1f} s)"]}


# --------------------------------------------------------------------------- the cluster

def join_ray(options: FanoutOptions) -> bool:
    """Join (or start) the Ray the tasks run on; True when this call started it (and so
    ends it). A Ray this process already joined is used as it is."""
    import ray

    if ray.is_initialized():
        return False
    if options.address == "local":
        import torch

        have_cpu, have_gpu = os.cpu_count() or 1, torch.cuda.device_count()
        cpus = have_cpu if options.num_cpus is None else options.num_cpus
        gpus = have_gpu if options.num_gpus is None else options.num_gpus
        tmp = os.environ.get("SELTRAIN_RAY_TMP",
                             os.path.join("/tmp", f"seltrain_ray_{os.getuid()}"))
        ray.init(num_cpus=int(math.ceil(cpus)), num_gpus=int(gpus), include_dashboard=False,
                 _temp_dir=tmp, log_to_driver=options.verbose, configure_logging=True,
                 logging_level="INFO" if options.verbose else "ERROR")
    else:
        from seltrain.raysession import connect

        connect(options.address, options.verbose)
    return True


def _join_keeping_sigterm(options: FanoutOptions) -> bool:
    """``join_ray``, with the SIGTERM handler this process had put back afterwards: Ray's
    core installs its own crash handler for SIGTERM when it starts in a driver, which would
    end the driver without cancelling its tasks or saying what was kept."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    started = join_ray(options)
    if callable(before):
        signal.signal(signal.SIGTERM, before)
    return started


def check_fits(options: FanoutOptions, stream=None) -> None:
    """One task's CPUs and GPUs must fit on one node alive now, or on a node type the
    cluster's autoscaler can start (then the tasks wait for it, said in one line); else one
    line naming the largest node."""
    import ray

    from seltrain.raysession import autoscaler_node_types

    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    need = {"CPU": options.cpus_per_task, "GPU": options.gpus_per_task}

    def fits(res: dict) -> bool:
        return all(res.get(k, 0) >= v for k, v in need.items() if v > 0)

    if any(fits(res) for res in alive):
        return
    types = autoscaler_node_types(ray.get_runtime_context().gcs_address) or {}
    if any(fits(t) for t in types.values()):
        print("no node offers one analysis task's resources now; the tasks wait until the "
              "autoscaler starts one", file=stream or sys.stdout, flush=True)
        return
    alive += list(types.values())
    most = {k: max((res.get(k, 0) for res in alive), default=0) for k in need}
    raise ConfigError(f"one analysis task asks for {options.cpus_per_task:g} CPU and "
                      f"{options.gpus_per_task:g} GPU but no node of the cluster has that (the "
                      f"largest: {most['CPU']:g} CPU, {most['GPU']:g} GPU); lower "
                      "--cpus-per-task/--gpus-per-task")


def _slots(options: FanoutOptions) -> int:
    """How many tasks the cluster's nodes hold at once now (for the progress line)."""
    import ray

    n = 0
    for res in (n_["Resources"] for n_ in ray.nodes() if n_["Alive"]):
        fit = math.floor(res.get("CPU", 0) / options.cpus_per_task + 1e-9)
        if options.gpus_per_task > 0:
            fit = min(fit, math.floor(res.get("GPU", 0) / options.gpus_per_task + 1e-9))
        n += fit
    return max(n, 1)


# --------------------------------------------------------------------------- the driver

def _eta(seconds: list[float], left: int, running: int) -> str:
    if not seconds or not left:
        return "-"
    s = sum(seconds) / len(seconds) * left / max(running, 1)
    return f"{int(s // 60)} min {int(s % 60):02d} s" if s >= 60 else f"{s:.0f} s"


def run_fanout(targets: Sequence, analyses: Mapping[str, AnalysisOptions],
               options: FanoutOptions | None = None, stream=None,
               again: str | None = None) -> list[TaskResult]:
    """Run every analysis of ``analyses`` ({name: its options}) on every target (paths as
    ``seltrain analyze`` takes them, or ``TargetRef``s) as Ray tasks; returns one
    ``TaskResult`` per target and analysis. ``again``: the command that reruns this one (for
    the lines that say how to continue). Raises ``Interrupted`` on Ctrl-C (or SIGTERM, as
    the CLI turns it into one) after cancelling the tasks in flight, and a ``SeltrainError``
    naming every task that failed twice, after the others have finished."""
    from seltrain.analysis.target import TargetRef, find_targets

    options = options or FanoutOptions()
    stream = stream or sys.stdout
    again = again or "the same command"
    refs: list = []
    for t in targets:
        if isinstance(t, TargetRef):
            refs.append(t)
            continue
        skipped: list = []
        # --checkpoint is an option every analysis shares; --analysis-args sets it for all.
        which = {o.checkpoint for o in analyses.values()}
        if len(which) > 1:
            raise ConfigError(f"the analyses ask for different --checkpoint values "
                              f"({', '.join(sorted(which))}); give one for all of them")
        refs += find_targets(t, skipped, which.pop() if which else "best")
        for run_dir, why in skipped:
            print(f"skipped {run_dir}: {why}", file=stream)
    if any(r.run_dir is None for r in refs):
        raise ConfigError("--address runs analyses of checkpoints, run folders, experiments "
                          "or target folders; a --model network runs in one process "
                          "(drop --address)")
    todo, done = plan(refs, analyses, force=options.force)
    for r in done:
        print(f"{r.analysis} of {r.run_dir}: kept (its outputs for these options are in "
              f"{r.out_dir})", file=stream)
    if not todo:
        print(f"all {len(done)} task(s) done before; nothing to run (--force recomputes)",
              file=stream, flush=True)
        return done
    lock = driver_lock(todo)
    try:
        started = _join_keeping_sigterm(options)
        try:
            return done + _drive(todo, options, stream, again)
        finally:
            import ray

            if started and ray.is_initialized():
                ray.shutdown()
    finally:
        lock.release()


def driver_lock(todo: list[Task]):
    """One driver per experiment: a lock (``seltrain.runlock``, as run folders are locked)
    in the folder that holds the run folders, so a second driver is refused with one line
    before it starts anything, rather than two of them writing the same output folders."""
    from seltrain.runlock import RunLock

    root = os.path.commonpath([os.path.dirname(os.path.abspath(t.ref.run_dir)) for t in todo])
    return RunLock(os.path.join(root, ".seltrain-analyses.lock"),
                   what=f"the analyses of the runs in {root}",
                   fix="wait for that driver to end (a rerun then skips what it did)").acquire()


def _drive(todo: list[Task], options: FanoutOptions, stream, again: str) -> list[TaskResult]:
    import ray

    from seltrain.raysession import StorageToken, quiet_ray

    check_fits(options, stream)
    # The token goes where the outputs go: the folder above each run folder's analysis/.
    roots = sorted({os.path.dirname(os.path.dirname(t.out_dir)) for t in todo})
    storage = StorageToken.write_into(
        roots[0], what="the results folder",
        fix="put the runs on a folder every node mounts (NFS), or analyse them on one "
            "machine without --address")
    threads = max(1, int(options.cpus_per_task))
    remote = ray.remote(run_task).options(
        num_cpus=options.cpus_per_task, num_gpus=options.gpus_per_task,
        max_retries=options.max_retries, retry_exceptions=False)
    results: list[TaskResult] = []
    failed: list[Task] = []
    seconds: list[float] = []
    flight: dict = {}
    starts: dict = {}
    # Chunked analyses: {group: [its task, its chunks' results in order (None: not yet)]};
    # when the last chunk is in, one more task merges them into the output folder.
    groups: dict[int, list] = {}
    queue: list[Task] = []
    for g, task in enumerate(todo):
        chunks = split(task)
        if len(chunks) > 1:
            groups[g] = [task, [None] * len(chunks)]
            queue += [dataclasses.replace(c, group=g) for c in chunks]
        else:
            queue.append(task)
    n_all = len(queue) + len(groups)
    n_done = 0

    def submit(task: Task, parts: list | None = None) -> None:
        task.attempts += 1
        ref = remote.remote(task, storage, threads, parts)
        flight[ref] = (task, parts)
        starts[ref] = time.perf_counter()

    def progress() -> None:
        running = min(len(flight), _slots(options))
        left = n_all - n_done
        print(f"-- {n_done} of {n_all} done, {running} running, {left - running} "
              f"pending; ETA {_eta(seconds, left, running)}", file=stream, flush=True)

    print(f"{n_all} analysis task(s) on Ray ({options.cpus_per_task:g} CPU, "
          f"{options.gpus_per_task:g} GPU each)"
          + (f"; {len(groups)} of the {len(todo)} analyses split into chunks" if groups else ""),
          file=stream, flush=True)
    for task in queue:
        submit(task)
    try:
        with quiet_ray(options.verbose):
            while flight:
                ready, _ = ray.wait(list(flight), num_returns=1, timeout=PROGRESS_EVERY_S)
                if not ready:
                    progress()
                    continue
                ref = ready[0]
                task, parts = flight.pop(ref)
                took = time.perf_counter() - starts.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) \
                        else e
                    from seltrain.raysession import StorageNotSharedError

                    if isinstance(cause, StorageNotSharedError):
                        _cancel(flight)
                        raise ConfigError(str(cause)) from None
                    task.error = _one_line(cause)
                    if task.attempts < ATTEMPTS:
                        print(f"{task.what}: failed ({task.error}); trying it once more",
                              file=stream, flush=True)
                        submit(task, parts)
                        continue
                    n_done += 1
                    failed.append(task)
                    results.append(TaskResult(task.analysis, task.ref.run_dir, task.out_dir,
                                              "failed", error=task.error))
                    print(f"{task.what}: failed twice ({task.error})", file=stream, flush=True)
                    progress()
                    continue
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.TaskUnschedulableError) as e:
                    task.error = _one_line(e)
                    n_done += 1
                    failed.append(task)
                    results.append(TaskResult(task.analysis, task.ref.run_dir, task.out_dir,
                                              "failed", error=task.error))
                    print(f"{task.what}: lost ({task.error})", file=stream, flush=True)
                    continue
                seconds.append(took)
                n_done += 1
                if "part" in out:
                    group = groups[task.group]
                    group[1][_index(group[0], task)] = out["part"]
                    print(f"[{n_done}/{n_all}] {out['lines'][0]}", file=stream, flush=True)
                    if all(p is not None for p in group[1]):
                        submit(dataclasses.replace(group[0], chunk="merge", label="merge",
                                                   attempts=0), group[1])
                    progress()
                    continue
                results.append(TaskResult(task.analysis, task.ref.run_dir, task.out_dir,
                                          "done", summary=out["summary"]))
                print(f"[{n_done}/{n_all}] {out['lines'][0]} -> {task.out_dir}",
                      file=stream, flush=True)
                progress()
    except KeyboardInterrupt:
        n = _cancel(flight)
        kept = sum(r.status == "done" for r in results)
        raise Interrupted(f"stopped the analyses with {n} task(s) in flight (cancelled; "
                          f"their folders are left as they were); the {kept} finished this "
                          f"time are kept; run {again} to do the rest") from None
    if failed:
        first = failed[0]
        raise SeltrainError(f"{len(failed)} analysis task(s) failed twice (each named above; "
                            f"the first: {first.what}: {first.error[:120]}); the other "
                            f"results are kept; to redo only what failed, rerun: {again}")
    return results


# --------------------------------------------------------------------------- the command line

def add_fanout_options(parser) -> None:
    """--address, --cpus-per-task, --gpus-per-task, --verbose (``seltrain analyze NAME`` and
    ``seltrain report``)."""
    group = parser.add_argument_group("on a Ray cluster: one task per checkpoint and analysis")
    group.add_argument("--address", default=None, metavar="auto|HOST:PORT|local",
                       help="run the analyses as Ray tasks: on the cluster this node belongs "
                            "to (auto), the one at HOST:PORT, or a Ray started on this machine "
                            "(local); reruns skip what is done (default: one process here)")
    group.add_argument("--cpus-per-task", type=float, default=1.0, metavar="N",
                       help="CPUs (torch threads) per task (default: 1)")
    group.add_argument("--gpus-per-task", type=float, default=0.0, metavar="N",
                       help="GPUs per task; a fraction lets tasks share a GPU (default: 0)")
    group.add_argument("--ray-verbose", action="store_true",
                       help="show Ray's own console too")


def fanout_from(args, force: bool = False) -> FanoutOptions | None:
    """The ``FanoutOptions`` of the command line, or None without ``--address``."""
    if args.address is None:
        return None
    return FanoutOptions(address=args.address, cpus_per_task=args.cpus_per_task,
                         gpus_per_task=args.gpus_per_task, force=force,
                         verbose=args.ray_verbose)


def this_command() -> str:
    """The command line this process runs, as the user can type it again."""
    import shlex

    return "seltrain " + shlex.join(sys.argv[1:])


def _index(whole: Task, chunk: Task) -> int:
    """The place of ``chunk`` among its analysis' chunks."""
    from seltrain.analysis.registry import analysis

    return analysis(whole.analysis).chunks(whole.opts).index(chunk.chunk)


def _cancel(flight: dict) -> int:
    import ray

    for ref in list(flight):
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - already finished, or its worker is gone
            pass
    n = len(flight)
    flight.clear()
    return n


def _one_line(e: BaseException) -> str:
    from seltrain.errors import one_line

    return f"{type(e).__name__}: {one_line(e)}"[:300]
