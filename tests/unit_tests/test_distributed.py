"""distributed.setup() in one process: the context it returns, read once from the environment."""
import pytest
import torch.distributed as dist

from seltrain import distributed
from seltrain.errors import SeltrainError


@pytest.fixture
def one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_initialized()
    return monkeypatch


def test_restart_count_is_read_once_into_the_context(one_process):
    assert distributed.setup().restart_count == 0
    one_process.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    ctx = distributed.setup()
    assert (ctx.restart_count, ctx.world_size, ctx.owns_group) == (2, 1, False)
    one_process.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert ctx.restart_count == 2  # the context keeps what it read
    assert not dist.is_initialized()  # one process: no group


def test_a_bad_restart_count_is_one_line(one_process):
    one_process.setenv("TORCHELASTIC_RESTART_COUNT", "two")
    with pytest.raises(SeltrainError, match=r"^TORCHELASTIC_RESTART_COUNT='two' is not an "
                                            r"integer$"):
        distributed.setup()


@pytest.mark.parametrize("name", ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"])
def test_mpi_processes_without_torch_variables_are_refused(one_process, name):
    """mpirun (or deepspeed --launcher openmpi) exports its own rank variables: without
    WORLD_SIZE each of the 4 processes would train alone into the same run folder."""
    one_process.setenv(name, "4")
    with pytest.raises(SeltrainError, match=rf"^started by an MPI launcher as one of 4 "
                                            rf"processes \({name}=4\).*launch with torchrun"):
        distributed.setup()
    one_process.setenv(name, "1")  # a one-process MPI job is a plain run
    assert distributed.setup().world_size == 1
    one_process.setenv(name, "4")
    one_process.setenv("WORLD_SIZE", "1")  # the launcher exported torch's variables too
    assert distributed.setup().world_size == 1
