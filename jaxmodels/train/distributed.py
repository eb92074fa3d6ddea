"""Many processes (hosts) as one JAX program: `jax.distributed.initialize` and who writes.

Every process runs the same trainer on its local devices; the mesh spans the devices of all
of them. Each process places only its own rows of every global batch on its devices and
saves its own data position; Orbax writes each array's shards from the processes that hold
them. Process 0 alone holds the workdir lock and writes metrics, the progress bar and
sample grids.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax

from jaxmodels.config import ConfigError

PyTree = Any


def slurm_processes() -> int:
    """Tasks of the SLURM step this process belongs to (0 outside SLURM)."""
    try:
        return int(os.environ.get("SLURM_NTASKS", "0")) if "SLURM_JOB_ID" in os.environ else 0
    except ValueError:
        return 0


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
    """Joins the multi-process run the flags or the environment describe; returns whether
    one was joined. Must run before anything touches a device.

    Explicit: coordinator "host:port", num_processes > 1, process_id in [0, num_processes).
    SLURM (srun with more than one task): jax reads the job's variables itself.
    """
    explicit = bool(coordinator) or num_processes > 1 or process_id >= 0
    if explicit:
        if not coordinator or num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f"multi-process run needs --coordinator=HOST:PORT, --num_processes=N and "
                              f"--process_id in [0, N) together (got {coordinator!r}, {num_processes}, "
                              f"{process_id})")
        if num_processes == 1:
            return False
    elif slurm_processes() <= 1:
        return False
    # Collectives between processes of the CPU backend (tests, CPU clusters) go through gloo;
    # GPUs use NCCL whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    else:
        jax.distributed.initialize()
    return True


def is_primary() -> bool:
    """Process 0: the one that writes logs, samples and other files besides checkpoints."""
    return jax.process_index() == 0


def host_local(tree: PyTree) -> PyTree:
    """The tree as whole host arrays in every process (a collective: all processes call it).
    With one process, returned as it is."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


class NullWriter:
    """MetricsWriter's interface, writing nothing (processes other than 0)."""

    path: Optional[str] = None

    def write(self, step: int, metrics) -> None:
        pass

    def close(self) -> None:
        pass
