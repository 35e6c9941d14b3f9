"""What one trial asks for (seltrain.tuning.resources), checked without starting Ray:
fractional GPUs only for one-worker trials, whole trials on this machine, one worker on a
node of a cluster (alive now, or of an autoscaler node type), and Ray Train's ScalingConfig.
"""
import pytest

from seltrain.errors import ConfigError
from seltrain.tuning import (ResourcesConfig, check_cluster_fit, check_local_fit,
                             check_resources_spec)

R = ResourcesConfig


@pytest.mark.parametrize("r", [R(1, 1.0, 0.25), R(1, 0.5, 0.5), R(4, 2.0, 2.0), R(2, 1.0, 0.0),
                               R(1, 0.0, 1.0)])
def test_spec_accepts(r):
    check_resources_spec(r, "in s.yaml")


@pytest.mark.parametrize("r, message", [
    (R(2, 1.0, 0.5), "resources.gpus_per_worker=0.5 with workers=2 puts several NCCL ranks of "
                     "one trial on one GPU, which fails"),
    (R(1, 1.0, 1.5), "resources.gpus_per_worker=1.5: give a fraction below 1 (trials share a "
                     "GPU) or a whole number (in s.yaml)"),
    (R(0, 1.0, 0.0), "resources need workers >= 1 and non-negative cpus/gpus (in s.yaml)"),
    (R(1, -1.0, 0.0), "resources need workers >= 1"),
    (R(1, 1.0, -0.25), "resources need workers >= 1"),
])
def test_spec_refuses(r, message):
    with pytest.raises(ConfigError) as e:
        check_resources_spec(r, "in s.yaml")
    assert message in str(e.value)


def test_local_fit_counts_every_worker_of_one_trial():
    check_local_fit(R(1, 1.0, 0.25), 1, 0.25, "this machine", "s.yaml")
    check_local_fit(R(2, 1.0, 1.0), 2, 2, "this machine", "s.yaml")
    with pytest.raises(ConfigError) as e:
        check_local_fit(R(2, 1.0, 1.0), 4, 1, "this machine (as allowed)", "s.yaml")
    assert str(e.value).startswith(
        "one trial asks for 2 worker(s) x (1 CPU, 1 GPU) = 2 CPU, 2 GPU but this machine (as "
        "allowed) has 4 CPU, 1 GPU (s.yaml); lower resources.workers/")
    with pytest.raises(ConfigError, match=r"= 3 CPU, 0 GPU but this machine has 2 CPU, 0 GPU"):
        check_local_fit(R(3, 1.0, 0.0), 2, 0, "this machine", "s.yaml")


def test_cluster_fit_one_worker_on_one_node():
    head, cpu_node = {"CPU": 0.0, "memory": 1e9}, {"CPU": 1.0}
    types = {"ray.head.default": {"CPU": 0}, "ray.worker.cpu": {"CPU": 1}}
    # Fits a node type the autoscaler can add (none is up), or a node alive now.
    assert check_cluster_fit(R(2, 1.0, 0.0), [head], types, "s.yaml") is None
    assert check_cluster_fit(R(1, 1.0, 0.25), [head, {"CPU": 4, "GPU": 1}], None, "s") is None
    assert check_cluster_fit(R(1, 8.0, 1.0), [head], {**types, "gpu": {"CPU": 8, "GPU": 1}},
                             "s") is None
    # One worker's 2 CPUs never spread over two 1-CPU nodes.
    with pytest.raises(ConfigError) as e:
        check_cluster_fit(R(1, 2.0, 0.0), [head, cpu_node, cpu_node], types, "s.yaml")
    assert str(e.value) == (
        "one worker of a trial asks for 2 CPU, 0 GPU but no node type of the cluster offers "
        "that (ray.head.default: 0 CPU, 0 GPU; ray.worker.cpu: 1 CPU, 0 GPU) (s.yaml); lower "
        "resources.cpus_per_worker/gpus_per_worker, or add a node type")
    # Node types unknown (no readable autoscaler): the trials wait, and seltrain says so.
    assert check_cluster_fit(R(1, 1.0, 1.0), [head, cpu_node], None, "s.yaml") == (
        "seltrain: no node of the cluster offers one trial worker's 1 CPU, 1 GPU now; its "
        "trials wait until the cluster grows")


def test_scaling_config_for_fractional_and_whole_gpus():
    pytest.importorskip("ray")
    from seltrain.tuning import scaling_config

    sc = scaling_config(R(1, 1.0, 0.25))
    assert (sc.num_workers, sc.use_gpu, sc.resources_per_worker) == \
        (1, True, {"CPU": 1.0, "GPU": 0.25})
    sc = scaling_config(R(2, 2.0, 0.0))
    assert (sc.num_workers, sc.use_gpu, sc.resources_per_worker) == (2, False, {"CPU": 2.0})
    sc = scaling_config({"workers": 4, "gpus_per_worker": 1})
    assert (sc.num_workers, sc.use_gpu, sc.resources_per_worker) == \
        (4, True, {"CPU": 1.0, "GPU": 1.0})
    with pytest.raises(ConfigError, match="unknown key 'resources.gpu_per_worker'"):
        scaling_config({"gpu_per_worker": 1})
