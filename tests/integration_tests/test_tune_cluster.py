"""cluster/*.yaml pass Ray's own cluster-launcher checks (defaults filled, JSON schema)."""
from __future__ import annotations

import os

import pytest
import yaml

from conftest import REPO

pytest.importorskip("ray")
pytest.importorskip("jsonschema")


def _prepared(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(os.path.join(REPO, "cluster", name)) as f:
        raw = yaml.safe_load(f)
    cfg = prepare_config(raw)
    validate_config(cfg)  # raises jsonschema.ValidationError on any unknown/bad field
    return raw, cfg


def test_aws_cluster_config_is_valid():
    raw, cfg = _prepared("cluster.yaml")
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType")
                       == "spot" for t in gpu)
    opts = " ".join(cfg["docker"]["run_options"])
    assert "--shm-size=" in opts
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert any("seltrain" in c for c in cfg["setup_commands"])
    assert any("apt-get install" in c for c in cfg["setup_commands"])


def test_onprem_cluster_config_is_valid():
    raw, cfg = _prepared("local.yaml")
    assert cfg["provider"]["type"] == "local"
    assert raw["provider"]["head_ip"] and len(raw["provider"]["worker_ips"]) == 3
    assert "--shm-size=" in " ".join(cfg["docker"]["run_options"])


def test_schema_rejects_a_typo():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(os.path.join(REPO, "cluster", "cluster.yaml")) as f:
        raw = yaml.safe_load(f)
    raw["max_wrokers"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))
