"""The Ray a search runs on: a local Ray started here, or a running cluster joined, quietly.

Quiet means: worker and raylet output not forwarded (``log_to_driver``), Ray's loggers at
ERROR, and Tune's own tables off (``console.quiet_ray``); seltrain's console prints what the
trials report instead, and ``--verbose`` brings Ray's back.

Freeing a stopped trial's workers is Ray Train's job: its placement-group cleaner sees the
trial's controller die and removes the workers' placement group. It asks the State API, so the
local Ray starts its dashboard (127.0.0.1, a free port) and a cluster must run one
(``ray[default]``); seltrain refuses to start a search without it (``check_state_api``).
"""
from __future__ import annotations

import math
import os
import socket

from seltrain.errors import ConfigError
# Joining a cluster quietly, with one line where no Ray answers: shared with the analyses'
# fan-out.
from seltrain.raysession import CONNECT_TIMEOUT_S  # noqa: F401
from seltrain.raysession import connect as _connect
from seltrain.tuning.recipe import SearchRecipe
from seltrain.tuning.resources import check_cluster_resources, check_local_fit, local_resources

def start_ray(recipe: SearchRecipe, *, address: str | None, num_cpus: float | None,
              num_gpus: float | None, verbose: bool) -> None:
    """Join the cluster at ``address`` (checking that one trial's worker fits a node), or
    start a local Ray with this machine's (or the allowed) CPUs and GPUs."""
    import ray

    if address:
        _connect(address, verbose)
        gcs = ray.get_runtime_context().gcs_address
        if not address.startswith("ray://"):
            check_state_api(gcs)
        check_cluster_resources(recipe.resources, gcs, recipe.path)
        return
    cpus, gpus = local_resources(num_cpus, num_gpus)
    check_local_fit(recipe.resources, cpus, gpus, "this machine (as allowed)", recipe.path)
    tmp = os.environ.get("SELTRAIN_RAY_TMP", os.path.join("/tmp", f"seltrain_ray_{os.getuid()}"))
    port = _free_port()
    # Ray Train's placement-group cleaner (a Ray actor) calls the State API without an
    # address, so Ray finds one by scanning this machine for clusters, and with several here
    # fails or picks another's (ray-project/ray#25639, #36554); an actor it cannot find counts
    # as dead, so the cleaner would free a live trial's workers. The raylet, and every worker
    # it starts, inherits this variable, which points the State API at this cluster.
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    # _temp_dir: Ray's session folder per user, away from other users' /tmp/ray. Ray's docs
    # ("Configuring Logging") say to pass the temp dir to ray.init, whose argument has carried
    # the underscore since Ray 1.0 (ray-project/ray#11556); the RAY_TMPDIR variable is another,
    # inconsistent setting (ray-project/ray#32962), so this stays.
    ray.init(num_cpus=int(math.ceil(cpus)), num_gpus=int(gpus), include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=port, _temp_dir=tmp,
             log_to_driver=verbose, configure_logging=True,
             logging_level="INFO" if verbose else "ERROR")
    check_state_api(os.environ["RAY_API_SERVER_ADDRESS"])


def check_state_api(address: str) -> None:
    """Ray Train frees the workers of a trial that Tune stopped (ASHA) only through its
    placement-group cleaner, which asks the State API (the dashboard, ray[default]) whether
    the trial's controller is still alive. Without it every stopped trial keeps its CPUs and
    GPUs, and the search stalls once they are all held: refuse to start instead."""
    try:
        from ray.util.state import list_nodes

        list_nodes(address=address, limit=1, timeout=20, raise_on_missing_output=False)
    except Exception as e:  # noqa: BLE001 - missing package, no dashboard, or unreachable
        raise ConfigError(
            f"Ray's State API is not reachable ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''}); trials stopped early would "
            "keep their CPUs/GPUs. Install ray[default] (pip install 'seltrain[cluster]') and "
            "start the cluster with its dashboard") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
