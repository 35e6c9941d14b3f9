"""Ray's fake multi-node autoscaler on this one machine: nodes that come and go, and die.

Used by tests/integration_tests/test_tune_autoscale.py and benchmarks/bench_cluster.py
(--part autoscale, nodeloss). The head has 0 CPUs, so every trial worker needs a worker node;
the autoscaler (Ray's own, autoscaler v1 with the ``fake_multinode`` provider) starts 1-CPU
worker nodes as local processes when trials wait for CPUs, and removes them after
``idle_timeout_minutes`` without work:

    with FakeCluster(max_workers=2) as fc:   # `ray start --head` (~15-30 s on 2 busy cores)
        fc.address                           # the GCS address: seltrain tune --address ...
        fc.workers()                         # alive worker nodes (node ids), State API
        fc.wait_workers(lambda n: n == 0, timeout=120)
        fc.kill_node(node_id)                # SIGKILL its raylet and all under it: a spot loss
    # every process of the cluster is gone, its temp dir removed

Ray only (RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...): the provider needs
``gcs_address`` and a head type named ``ray.head.default``; the config needs every
cluster-launcher key (file_mounts, setup commands...) even though nothing is launched over
SSH, or the autoscaler stops with a KeyError in its first update.

Never ``ray stop``: it kills every Ray process of the user, and other jobs run Ray as root
here. The head starts in its own session; the autoscaler starts worker nodes as its children
in that process group, with this cluster's unique temp dir on their command lines. Teardown
SIGKILLs the group and its descendants, then anything whose command line names the temp dir.
Spare ports replace Ray's fixed defaults (client server 10001, agent 52365, autoscaler
metrics 44217), which other clusters on this machine may hold.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import yaml

from helpers import REPO
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's fixed id for the head


def _sigkill(procs: list) -> None:
    """SIGKILL each psutil process (those already gone are skipped) and wait for them."""
    import psutil

    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    """The address Ray picks for nodes on this machine (not loopback)."""
    import ray.util

    return ray.util.get_node_ip_address()


def cluster_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class FakeCluster:
    def __init__(self, max_workers: int = 2, worker_cpus: int = 1,
                 idle_timeout_minutes: float = 0.2, startup_timeout: float = 180,
                 min_workers: int = 0):
        self.max_workers, self.min_workers = max_workers, min_workers
        self.worker_cpus = worker_cpus
        self.idle_timeout_minutes = idle_timeout_minutes
        self.startup_timeout = startup_timeout
        # Short: Ray's socket paths (~70 characters) go below it, and sockets stop at 107.
        self.tmp = tempfile.mkdtemp(prefix="stfc_", dir="/tmp")
        self.ip = node_ip()
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"{self.ip}:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.pgid = None
        self.start_s = None

    # ------------------------------------------------------------------ lifecycle
    def config(self) -> dict:
        return {
            "cluster_name": os.path.basename(self.tmp),
            "max_workers": self.max_workers,
            # 0.2 min: the test waits ~12 s plus one autoscaler round (5 s) for the shrink.
            "idle_timeout_minutes": self.idle_timeout_minutes,
            "upscaling_speed": float(self.max_workers),
            "provider": {"type": "fake_multinode", "gcs_address": self.address,
                         "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "auth": {"ssh_user": "unused"},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 0}, "node_config": {},
                                     "max_workers": 0},
                "ray.worker.cpu": {"resources": {"CPU": self.worker_cpus,
                                                 "object_store_memory": 100 * 2 ** 20},
                                   "node_config": {}, "min_workers": self.min_workers,
                                   "max_workers": self.max_workers}},
            "head_node_type": "ray.head.default",
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
            "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": []}

    def env(self, **extra) -> dict:
        """The environment of the head, hence of the autoscaler and every node it starts.
        RAY_API_SERVER_ADDRESS points Ray Train's placement-group cleaner (an actor on the
        head) at this cluster's State API; it would pick another cluster of this machine."""
        return cluster_env(RAY_FAKE_CLUSTER=1, RAY_API_SERVER_ADDRESS=self.dashboard,
                           AUTOSCALER_METRIC_PORT=free_port(), **extra)

    def start(self) -> "FakeCluster":
        path = os.path.join(self.tmp, "autoscaling.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(self.config(), f)
        cmd = [RAY, "start", "--head", f"--port={self.port}", "--num-cpus=0",
               f"--autoscaling-config={path}", f"--temp-dir={self.tmp}/ray",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--metrics-export-port={free_port()}", "--object-store-memory=100000000",
               "--disable-usage-stats"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.pgid = proc.pid  # the session leader: the head's processes keep its group
        try:
            out, _ = proc.communicate(timeout=self.startup_timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"ray start --head took over {self.startup_timeout:.0f} s")
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start --head failed:\n{out[-3000:]}")
        self.wait_workers(lambda n: n == 0, timeout=60)  # the State API answers
        self.start_s = time.perf_counter() - t0
        return self

    def __enter__(self) -> "FakeCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _processes(self):
        """This cluster's processes: the head's group, everything below it, and whatever
        names the temp dir."""
        import psutil

        found = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if (self.pgid is not None and os.getpgid(p.pid) == self.pgid) or \
                        self.tmp in " ".join(p.info["cmdline"] or []):
                    found[p.pid] = p
            except (psutil.Error, ProcessLookupError):
                continue
        for p in list(found.values()):
            try:
                for c in p.children(recursive=True):
                    found.setdefault(c.pid, c)
            except psutil.Error:
                continue
        return list(found.values())

    def stop(self) -> None:
        for _ in range(3):  # a dying raylet may still be starting a worker: sweep again
            procs = self._processes()
            if not procs:
                break
            _sigkill(procs)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ nodes
    def nodes(self) -> list:
        """Every node the State API knows (alive and dead)."""
        from ray.util.state import list_nodes

        return list_nodes(address=self.dashboard, timeout=30, raise_on_missing_output=False)

    def workers(self) -> list[str]:
        """Node ids of the worker nodes alive now."""
        return [n.node_id for n in self.nodes()
                if n.state == "ALIVE" and n.node_id != HEAD_NODE_ID]

    def wait_workers(self, pred, timeout: float, poll: float = 1.0) -> float:
        """Seconds until ``pred(number of alive workers)`` holds; raises at the deadline."""
        t0 = time.perf_counter()
        while True:
            try:
                n = len(self.workers())
                if pred(n):
                    return time.perf_counter() - t0
            except Exception:  # noqa: BLE001 - the dashboard may still be starting
                n = None
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"worker nodes: {n} after {timeout:.0f} s")
            time.sleep(poll)

    def actor_nodes(self, class_name: str) -> list[str]:
        """Node ids that hold an alive actor of ``class_name`` (e.g. RayTrainWorker)."""
        from ray.util.state import list_actors

        actors = list_actors(address=self.dashboard, timeout=30,
                             filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
                             raise_on_missing_output=False)
        return [a.node_id for a in actors]

    def kill_node(self, node_id: str) -> int:
        """SIGKILL the node's raylet and every process under it (its workers and agents),
        as a spot reclaim would; returns how many processes died."""
        import psutil

        victims = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if any(c == f"--node_id={node_id}" for c in cmd) and \
                    any(self.tmp in c for c in cmd):
                victims += [p, *p.children(recursive=True)]
        if not victims:
            raise RuntimeError(f"no raylet of node {node_id} in this cluster")
        _sigkill(victims)
        return len(victims)
