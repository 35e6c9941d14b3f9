"""The Ray that seltrain's many-process commands run on, joined quietly: ``seltrain tune``'s
searches and the analyses' fan-out (``seltrain analyze --address``).

- ``connect``: join a running cluster, or one line when nothing answers at the address (a
  refused ``host:port`` at once, anything else after ``CONNECT_TIMEOUT_S``);
- ``quiet_ray``: Ray's console kept quiet around the driver's wait (Tune's tables off, the
  raylet's unactionable warning dropped);
- ``StorageToken``: a token the driver writes into a folder and every worker reads back on
  its own node, so a folder the worker nodes do not share fails at the first task with one
  line (``StorageNotSharedError``), not at the end with every node's results on its own disk;
- ``autoscaler_node_types``: the node types an autoscaling cluster can start, so work that
  fits none of them is refused at once rather than left waiting for ever.

Ray is imported inside the functions, so importing this module does not import Ray.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import socket
import sys
import threading
import uuid
from dataclasses import dataclass

from seltrain.atomic import atomic_write
from seltrain.errors import ConfigError

# ray.init(address=...) on an address where no Ray answers retries for minutes; the CLI gives
# up after this long with one line (seconds for a refused host:port, see probe_gcs).
CONNECT_TIMEOUT_S = 60.0


def probe_gcs(address: str) -> None:
    """A ``host:port`` with nothing listening is a one-line error at once, not a minutes-long
    retry inside ray.init; ``auto`` and ``ray://`` are left to Ray (and the watchdog)."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise ConfigError(f"no Ray cluster answers at --address {address} "
                          f"({getattr(e, 'strerror', None) or e}); start one (ray up CONFIG, or "
                          "ray start --head) or fix the address; without --address seltrain "
                          "runs on this machine") from None


def connect(address: str, verbose: bool) -> None:
    """Join the Ray cluster at ``address`` quietly, or one line (and exit 2) within
    ``CONNECT_TIMEOUT_S``."""
    import ray

    probe_gcs(address)
    # Quiet: the driver's C++ core writes each failed GCS connect straight to stderr (file
    # descriptor 2, past Python's logging); while ray.init runs, fd 2 goes to /dev/null and
    # what the user reads is seltrain's one line. A Python error still surfaces, after it.
    stderr = os.dup(2)

    def give_up():
        os.write(stderr, f"seltrain: error: no Ray cluster answered at --address {address} "
                         f"within {CONNECT_TIMEOUT_S:.0f} s; start one (ray up CONFIG, or ray "
                         "start --head) or fix the address\n".encode())
        os._exit(2)  # ray.init is blocked in native code: nothing else can stop it

    watchdog = threading.Timer(CONNECT_TIMEOUT_S, give_up)
    watchdog.daemon = True
    watchdog.start()
    if not verbose:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
    try:
        ray.init(address=address, log_to_driver=verbose,
                 logging_level="INFO" if verbose else "ERROR")
    except ConnectionError as e:
        raise ConfigError(f"--address {address}: {str(e).splitlines()[0]} Start one (ray up "
                          "CONFIG, or ray start --head), or drop --address to run on a local "
                          "Ray") from None
    finally:
        watchdog.cancel()
        os.dup2(stderr, 2)
        os.close(stderr)


# Ray prints this raylet warning whenever a node starts more than 4x its CPU count of worker
# processes, which every Ray Train trial does (its driver, controller, placement-group
# cleaner, preemption watcher and workers are each a process); Ray has no switch for it
# (ray-project/ray#9384, #12223, #63800), so the quiet console drops the line.
UNACTIONABLE = re.compile(r"\(raylet\).*worker processes have been started on node")


class DropLines(io.TextIOBase):
    """A text stream that forwards whole lines to ``stream`` except those matching."""

    def __init__(self, stream, pattern: re.Pattern):
        self.stream, self.pattern, self.pending = stream, pattern, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not self.pattern.search(line):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


@contextlib.contextmanager
def quiet_ray(verbose: bool):
    """Around ``Tuner.fit()``: Tune's own console off (its tables print even at verbose=0
    with the new output engine) and Ray's unactionable raylet warning dropped, unless
    ``verbose``."""
    if verbose:
        yield
        return
    old_env, old_out = os.environ.get("RAY_AIR_NEW_OUTPUT"), sys.stdout
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter prints nothing at verbose=0
    sys.stdout = DropLines(old_out, UNACTIONABLE)
    # Tune logs each trial failure with its full traceback at ERROR; the console prints one
    # line per failure and the trace's file instead.
    tune_log = logging.getLogger("ray.tune")
    old_level = tune_log.level
    tune_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tune_log.setLevel(old_level)
        pending, sys.stdout = sys.stdout.pending, old_out
        if pending:  # a last line without its newline yet
            old_out.write(pending)
        if old_env is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old_env

# The driver writes a fresh token here before the work starts (see StorageToken).
STORAGE_TOKEN = ".seltrain_storage_check"


class StorageNotSharedError(ConfigError):
    """A worker node cannot read the token the driver wrote into a folder it must share."""


@dataclass
class StorageToken:
    """A token written by the driver into ``path``'s folder (``what`` names that folder),
    read back by each worker; ``fix`` ends the error a worker that cannot read it raises."""
    path: str
    token: str
    what: str = "the trial folders' root"
    fix: str = ("put storage (or trials_dir) on a folder every node mounts (NFS), or use "
                "s3:// storage, then continue with --resume")

    @classmethod
    def write_into(cls, folder: str, **kw) -> "StorageToken":
        """A fresh token in ``folder`` (created) for the workers to read back."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, STORAGE_TOKEN)
        token = uuid.uuid4().hex
        with atomic_write(path) as f:
            f.write(token)
        return cls(path, token, **kw)

    def check(self) -> None:
        """On a worker: this node reads the token the driver wrote, or StorageNotSharedError."""
        try:
            with open(self.path) as f:
                ok = f.read().strip() == self.token
        except OSError:
            ok = False
        if ok:
            return
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        node = f"{ray.util.get_node_ip_address()}, node {node_id[-8:]}"
        raise StorageNotSharedError(
            f"{self.what} {os.path.dirname(self.path)} is not shared with the worker nodes: "
            f"{node} cannot read {os.path.basename(self.path)}, which the driver wrote there; "
            f"{self.fix}")


def _read_node_types(gcs_address: str) -> dict | None:
    """On the head node: {node type: resources} from the config file its autoscaler monitor
    was started with (``--autoscaling-config``), if that monitor serves ``gcs_address``."""
    import psutil
    import yaml

    # The monitor's script path and flags are Ray's implementation, not an API: anything
    # unexpected here reads as "no autoscaler seltrain can read" (None), never as an error.
    monitors = (os.path.join("autoscaler", "_private", "monitor.py"),
                os.path.join("autoscaler", "v2", "monitor.py"))
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if not any(c.endswith(monitors) for c in cmd):
            continue
        args = dict(c.split("=", 1) for c in cmd if c.startswith("--") and "=" in c)
        path = args.get("--autoscaling-config")
        if args.get("--gcs-address") != gcs_address or not path:
            continue
        with open(os.path.expanduser(path)) as f:
            config = yaml.safe_load(f)
        return {name: dict(t.get("resources") or {})
                for name, t in (config.get("available_node_types") or {}).items()}
    return None


def autoscaler_node_types(gcs_address: str) -> dict | None:
    """{node type: resources} of the autoscaling config of the cluster at ``gcs_address``;
    None when the cluster has no autoscaler that seltrain can read.

    Ray keeps the node types only in the autoscaler's config file (``ray up`` writes it to
    ~/ray_bootstrap_config.yaml on the head; ``ray start --autoscaling-config`` names it). No
    public API gives them to a driver: ``ray.nodes()`` and the State API list the nodes alive
    now, ``ray status`` prints only launched and pending nodes, and a placement group that no
    node type can hold just waits, reported nowhere a driver can read (ray-project/ray#18018,
    #20043). The GCS has a slot for a cluster config, readable only through
    ``ray._private.state`` (ray-project/ray#59682), which neither autoscaler in Ray 2.60 fills.
    So a zero-CPU task pinned to the head (found through the State API) reads the file named
    on its monitor's command line.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from ray.util.state import list_nodes

    try:
        head = list_nodes(address=gcs_address, filters=[("is_head_node", "=", True)],
                          timeout=20, raise_on_missing_output=False)[0].node_id
        read = ray.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            head, soft=False))(_read_node_types)
        types = ray.get(read.remote(gcs_address), timeout=60)
    except Exception:  # noqa: BLE001 - no State API (Ray Client), psutil missing, unreadable
        return None
    # A type without resources leaves them to the provider (filled in at launch): unknown.
    return types if types and all(types.values()) else None
