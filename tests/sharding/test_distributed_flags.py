"""When launch.train joins a multi-process run: explicit flags must come together; without
them and outside a multi-task SLURM step it stays a single process."""
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.train import distributed


def test_single_process_without_flags_or_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert distributed.initialize() is False
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: nothing to join
    assert distributed.slurm_processes() == 1 and distributed.initialize() is False
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.slurm_processes() == 4


@pytest.mark.parametrize("args", [("", 2, 0), ("localhost:1234", 0, 0), ("localhost:1234", 2, 2),
                                  ("localhost:1234", 2, -1)])
def test_incomplete_flags_name_the_fix(args):
    with pytest.raises(ConfigError, match="--coordinator=HOST:PORT, --num_processes=N and --process_id"):
        distributed.initialize(*args)


def test_one_process_of_one_needs_no_coordinator_service():
    assert distributed.initialize("localhost:1234", 1, 0) is False
