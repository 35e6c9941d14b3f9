"""What one trial asks for, and whether the machine or the cluster can give it.

``ResourcesConfig`` is the ``resources:`` section of a search recipe: ``workers`` Ray Train
workers (DDP ranks), each with ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs. Its rules
(``check_resources_spec``), the fit on this machine (``check_local_fit``) and on a cluster, now
or after the autoscaler adds nodes (``check_cluster_fit``), are each one line and exit code 2
before any trial starts; ``scaling_config`` turns it into Ray Train's ``ScalingConfig``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from seltrain.config import build_dataclass
from seltrain.errors import ConfigError
# The node types of an autoscaling cluster: shared with the analyses' fan-out.
from seltrain.raysession import autoscaler_node_types


@dataclass
class ResourcesConfig:
    """One trial: ``workers`` Ray Train workers (DDP ranks), each with these CPUs and GPUs.

    A one-worker trial may take a fraction of a GPU (0.25: four CIFAR-sized trials share one
    GPU). A trial of several workers takes whole GPUs: its ranks talk over NCCL, which refuses
    two ranks on one device."""
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


def check_resources_spec(r: ResourcesConfig, where: str) -> None:
    """The recipe's own rules; ``where`` names the recipe in the message ("in PATH")."""
    if r.workers < 1 or r.cpus_per_worker < 0 or r.gpus_per_worker < 0:
        raise ConfigError(f"resources need workers >= 1 and non-negative cpus/gpus ({where})")
    g = r.gpus_per_worker
    # Ray hands out GPU fractions below 1 (trials sharing a device) or whole GPUs, never 1.5.
    if g > 1 and g != int(g):
        raise ConfigError(f"resources.gpus_per_worker={g:g}: give a fraction below 1 (trials "
                          f"share a GPU) or a whole number ({where})")
    if r.workers > 1 and 0 < g < 1:
        raise ConfigError(f"resources.gpus_per_worker={g:g} with workers={r.workers} puts "
                          f"several NCCL ranks of one trial on one GPU, which fails; give each "
                          f"worker a whole GPU, or set workers: 1 to share GPUs between trials "
                          f"({where})")


def scaling_config(r: ResourcesConfig | dict):
    """Ray Train's ScalingConfig for one trial's workers. ``r`` may also be a mapping of
    ResourcesConfig's fields (checked like a recipe's)."""
    import ray.train

    if isinstance(r, dict):
        r = build_dataclass(ResourcesConfig, r, "resources.", {}, "in scaling_config")
    gpus = r.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=r.workers, use_gpu=gpus > 0,
        resources_per_worker={"CPU": r.cpus_per_worker, **({"GPU": gpus} if gpus else {})})


# --------------------------------------------------------------------------- this machine

def local_resources(num_cpus: float | None, num_gpus: float | None) -> tuple[float, float]:
    """(CPUs, GPUs) a local Ray may use: this machine's, or less with --num-cpus/--num-gpus."""
    have_cpu = os.cpu_count() or 1
    try:
        import torch
        have_gpu = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA runtime means no GPUs
        have_gpu = 0
    if num_cpus is not None and num_cpus > have_cpu:
        raise ConfigError(f"--num-cpus {num_cpus:g} is more than this machine's {have_cpu} CPUs")
    if num_gpus is not None and num_gpus > have_gpu:
        raise ConfigError(f"--num-gpus {num_gpus:g} is more than this machine's {have_gpu} GPUs")
    return (have_cpu if num_cpus is None else num_cpus,
            have_gpu if num_gpus is None else num_gpus)


def check_local_fit(r: ResourcesConfig, cpus: float, gpus: float, where: str,
                    recipe_path: str) -> None:
    """One whole trial must fit in ``cpus``/``gpus`` (``where``: "this machine (as allowed)")."""
    need_cpu, need_gpu = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    if need_cpu > cpus or need_gpu > gpus:
        raise ConfigError(
            f"one trial asks for {r.workers} worker(s) x ({r.cpus_per_worker:g} CPU, "
            f"{r.gpus_per_worker:g} GPU) = {need_cpu:g} CPU, {need_gpu:g} GPU but {where} has "
            f"{cpus:g} CPU, {gpus:g} GPU ({recipe_path}); lower resources.workers/"
            "cpus_per_worker/gpus_per_worker or allow more with --num-cpus/--num-gpus")


# --------------------------------------------------------------------------- a cluster

def check_cluster_fit(r: ResourcesConfig, alive: list[dict], types: dict | None,
                      recipe_path: str) -> str | None:
    """Whether one worker of a trial fits a node of the cluster, now or after scaling.

    One worker's CPUs and GPUs must fit on one node (Ray Train places a worker on one node;
    several workers may spread). ``alive``: the resources of each node alive now; ``types``:
    {node type: resources} of the autoscaling config, or None when unknown. A node or a node
    type that fits is enough (None). With the node types known and none fitting, a ConfigError;
    with them unknown and no node fitting now, the line to print (the trials wait for nodes).
    """
    need = {"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker}

    def fits(res: dict) -> bool:
        return all(res.get(k, 0) >= v for k, v in need.items() if v > 0)

    if any(fits(res) for res in alive) or (types and any(fits(t) for t in types.values())):
        return None
    want = f"{r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU"
    if types is not None:
        offer = "; ".join(f"{name}: {t.get('CPU', 0):g} CPU, {t.get('GPU', 0):g} GPU"
                          for name, t in types.items())
        raise ConfigError(f"one worker of a trial asks for {want} but no node type of the "
                          f"cluster offers that ({offer}) ({recipe_path}); lower "
                          "resources.cpus_per_worker/gpus_per_worker, or add a node type")
    return (f"seltrain: no node of the cluster offers one trial worker's {want} now; its "
            "trials wait until the cluster grows")


def check_cluster_resources(r: ResourcesConfig, gcs_address: str, recipe_path: str) -> None:
    """``check_cluster_fit`` on the cluster this process joined."""
    import ray

    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    note = check_cluster_fit(r, alive, autoscaler_node_types(gcs_address), recipe_path)
    if note:
        print(note, file=sys.stderr, flush=True)
