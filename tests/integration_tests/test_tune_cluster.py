"""cluster/*.yaml pass Ray's own launcher checks, install the lock and name their placeholders;
the `cluster` extra (ray[default], boto3) imports.

`ray up --no-config-cache` first runs Ray's commands._bootstrap_config (prepare_config, the JSON
schema, the provider's bootstrap) and only then contacts machines. For cluster/local.yaml that
whole step is offline and runs here as is. For cluster/cluster.yaml the AWS provider's bootstrap
calls AWS (IAM roles, subnets, key pairs), so only prepare_config and validate_config run here.
A real `ray up --no-config-cache` of local.yaml's loopback variant runs in
test_cluster_rayup.py.
"""
from __future__ import annotations

import os
import re
import sys

import pytest
import yaml

from helpers import REPO

ray = pytest.importorskip("ray")
pytest.importorskip("jsonschema")

# Every placeholder a user must fill in, per file: the YAML key (or value pattern) of each line
# marked `# placeholder`, and a word the file's header must use to explain it.
PLACEHOLDERS = {
    "cluster.yaml": {"ImageId": "ImageId", "fs-XXXXXXXX": "EFS"},
    "local.yaml": {"head_ip": "head_ip", "worker_ips": "worker_ips", "ssh_user": "ssh_user",
                   "ssh_private_key": "ssh_private_key"},
}


def _raw(name):
    with open(os.path.join(REPO, "cluster", name)) as f:
        return yaml.safe_load(f)


def _prepared(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _raw(name)
    cfg = prepare_config(raw)
    validate_config(cfg)  # raises jsonschema.ValidationError on any unknown/bad field
    return raw, cfg


def _locked_version(package):
    with open(os.path.join(REPO, "requirements.lock")) as f:
        for line in f:
            if line.lower().startswith(package + "=="):
                return line.split("==", 1)[1].strip()
    return None


def _installs_the_lock(cfg):
    """The setup commands install requirements.lock after FFCV's apt packages, from the
    checkout the file mounts sync, and nothing floating (git URLs, unpinned extras)."""
    setup = cfg["setup_commands"]
    text = " ".join(setup)
    assert "git+" not in text and "seltrain[" not in text, setup
    lock = [i for i, c in enumerate(setup) if "install" in c and
            "-r ~/seltrain/requirements.lock" in c]
    apt = [i for i, c in enumerate(setup) if "apt-get install" in c and "libturbojpeg0-dev" in c
           and "libopencv-dev" in c]
    own = [i for i, c in enumerate(setup) if "--no-deps" in c and "-e ~/seltrain" in c]
    assert len(lock) == 1 and len(apt) == 1 and len(own) == 1, setup
    assert apt[0] < lock[0] < own[0], setup  # ffcv (in the lock) builds against the apt libs
    mounts = cfg["file_mounts"]
    for remote, local in {"~/seltrain/requirements.lock": "./requirements.lock",
                          "~/seltrain/pyproject.toml": "./pyproject.toml",
                          "~/seltrain/seltrain": "./seltrain"}.items():
        assert mounts.get(remote) == local, mounts
    for remote, local in mounts.items():
        if not local.startswith("~"):  # the checkout's paths (ray up runs from the repo root)
            assert os.path.exists(os.path.join(REPO, local)), (remote, local)
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token", mounts  # token auth


def test_cluster_extra_imports():
    """`ray up` with the AWS provider, `ray job submit` and the State API import here."""
    import importlib

    import boto3
    from ray.dashboard.modules.job.sdk import JobSubmissionClient  # ray[default]
    from ray.util.state import list_nodes

    # Ray's AWS provider imports boto3/botocore at module level.
    aws = importlib.import_module("ray.autoscaler._private.aws.node_provider")
    assert callable(aws.AWSNodeProvider) and callable(boto3.client)
    assert callable(JobSubmissionClient) and callable(list_nodes)

    assert ray.__version__ == _locked_version("ray")
    assert _locked_version("boto3") and _locked_version("botocore")


def test_aws_cluster_config_is_valid():
    raw, cfg = _prepared("cluster.yaml")
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType")
                       == "spot" for t in gpu)
    # The image carries the lock's Ray and this Python's minor version (the lock is built
    # for it).
    image = cfg["docker"]["image"]
    assert image == f"rayproject/ray:{_locked_version('ray')}-py3{sys.version_info.minor}-gpu"
    opts = " ".join(cfg["docker"]["run_options"])
    assert "--shm-size=" in opts and "-v /mnt/shared:/mnt/shared" in opts
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    _installs_the_lock(cfg)


def test_onprem_cluster_config_bootstraps_offline():
    from ray.autoscaler._private.commands import _bootstrap_config

    raw = _raw("local.yaml")
    cfg = _bootstrap_config(raw, no_config_cache=True)  # ray up --no-config-cache, up to SSH
    assert cfg["provider"]["type"] == "local"
    ips = raw["provider"]["worker_ips"]
    assert raw["provider"]["head_ip"] and len(ips) == 3
    node = cfg["available_node_types"]["local.cluster.node"]
    assert node["min_workers"] == node["max_workers"] == len(ips)
    assert not raw.get("docker")  # the venv-and-lock path: no Docker on the machines
    _installs_the_lock(cfg)
    setup = " ".join(cfg["setup_commands"])
    assert "python3.11 -m venv ~/seltrain-venv" in setup and "seltrain-venv/bin" in setup
    head = " ".join(cfg["head_start_ray_commands"])
    # Autoscaler v1: v2 (Ray 2.60's default) launched no local-provider worker in 75 s.
    assert "RAY_enable_autoscaler_v2=0 ray start --head" in head
    assert "--dashboard-host=127.0.0.1" in head


@pytest.mark.parametrize("name", sorted(PLACEHOLDERS))
def test_placeholders_are_marked_and_explained_at_the_top(name):
    with open(os.path.join(REPO, "cluster", name)) as f:
        lines = f.read().splitlines()
    header = "\n".join(ln for ln in lines[:next(i for i, ln in enumerate(lines)
                                                if not ln.startswith("#"))])
    body = lines[len(header.splitlines()):]
    marked = {}
    for i, ln in enumerate(body):
        if "# placeholder" in ln:
            # The placeholder is on this line, or (a comment line) on the next.
            target = ln if not ln.lstrip().startswith("#") else body[i + 1]
            key = next((k for k in PLACEHOLDERS[name] if k in target), None)
            assert key, f"{name}: unexpected placeholder line: {target!r}"
            marked[key] = marked.get(key, 0) + 1
    assert set(marked) == set(PLACEHOLDERS[name]), marked
    for word in PLACEHOLDERS[name].values():
        assert word in header, f"{name}: the header does not explain {word}"
    # Nothing else left for a user to fill in.
    unmarked = [ln for i, ln in enumerate(body)
                if re.search(r"X{4,}|your-org|REPLACE|TODO", ln) and "# placeholder" not in ln
                and not (i and "# placeholder" in body[i - 1])]
    assert unmarked == [], unmarked
    if name == "cluster.yaml":
        assert marked["ImageId"] == 3  # head, spot and on-demand node types


def test_schema_rejects_a_typo():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _raw("cluster.yaml")
    raw["max_wrokers"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))
