"""The random state a checkpoint carries (seltrain.rng): the CPU generator, and the CUDA
generator of the rank's own device only, so a resume that sees fewer GPUs
(CUDA_VISIBLE_DEVICES=3, a Ray trial restored on another node) restores onto the one device
it has.

No GPU here: the CUDA half runs against a stand-in for torch.cuda's four generator functions
that records which device each call names and fails on any device this "process" does not
see, as torch does."""
from __future__ import annotations

import pytest
import torch

from seltrain.rng import rng_state, set_rng_state


def test_cpu_state_round_trips_and_holds_no_cuda_entry():
    torch.manual_seed(3)
    state = rng_state("cpu")
    assert set(state) == {"torch"}
    first = torch.rand(4)
    torch.rand(100)
    set_rng_state(state, "cpu")
    assert torch.equal(torch.rand(4), first)


class _OneVisibleGPU:
    """torch.cuda's generator functions on a process that sees ``visible`` GPUs."""

    def __init__(self, visible: int):
        self.visible = visible
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(visible)}
        self.calls: list = []

    def _index(self, device) -> int:
        index = torch.device(device).index
        if index is None or index >= self.visible:
            raise IndexError(f"list index out of range (device {device}, {self.visible} visible)")
        return index

    def get_rng_state(self, device="cuda"):
        self.calls.append(("get", str(device)))
        return self.states[self._index(device)].clone()

    def set_rng_state(self, new_state, device="cuda"):
        self.calls.append(("set", str(device)))
        assert new_state.device.type == "cpu" and new_state.dtype == torch.uint8
        self.states[self._index(device)] = new_state.clone()

    def get_rng_state_all(self):
        raise AssertionError("every visible device's state is never saved")

    def set_rng_state_all(self, states):
        raise AssertionError("a list of states is never restored device by device")


@pytest.fixture
def gpus(monkeypatch):
    def install(visible: int) -> _OneVisibleGPU:
        fake = _OneVisibleGPU(visible)
        for name in ("get_rng_state", "set_rng_state", "get_rng_state_all",
                     "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
        return fake
    return install


def test_saves_the_ranks_own_device_only(gpus):
    fake = gpus(8)
    state = rng_state(torch.device("cuda", 5))
    assert fake.calls == [("get", "cuda:5")]
    assert torch.equal(state["cuda"], torch.full((16,), 5, dtype=torch.uint8))


def test_a_run_of_8_gpus_resumes_on_one(gpus):
    """Rank 0 of an 8-GPU run saved its device's state; the resume sees one GPU (cuda:0)."""
    gpus(8)
    saved = rng_state(torch.device("cuda", 0))
    fake = gpus(1)
    set_rng_state(saved, torch.device("cuda", 0))
    assert fake.calls == [("set", "cuda:0")]
    assert torch.equal(fake.states[0], torch.zeros(16, dtype=torch.uint8))


def test_a_checkpoint_holding_every_visible_devices_state_restores_its_first(gpus):
    """A checkpoint written with one state per visible GPU (8) restores onto the one device
    of a process that sees one: the writer's own device's state, no index past it."""
    listed = {"torch": torch.get_rng_state(),
              "cuda": [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(8)]}
    fake = gpus(1)
    set_rng_state(listed, torch.device("cuda", 0))
    assert fake.calls == [("set", "cuda:0")]
    assert torch.equal(fake.states[0], torch.full((16,), 10, dtype=torch.uint8))


def test_a_cuda_checkpoint_resumes_on_the_cpu(gpus):
    fake = gpus(0)
    state = {"torch": torch.get_rng_state(), "cuda": torch.zeros(16, dtype=torch.uint8)}
    set_rng_state(state, "cpu")
    assert fake.calls == []
