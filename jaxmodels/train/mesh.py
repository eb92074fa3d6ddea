"""The device mesh: three named axes built from the `mesh` config section.

    data    pure data parallel: every device of a data row holds a whole copy of the state
    fsdp    fully sharded data parallel: params, gradients and optimizer state split over it,
            the batch too (each fsdp device sees other examples)
    tensor  tensor parallel: attention heads and MLP width split over it (same examples)

The batch is split over data x fsdp. Sizes multiply to the devices used; one axis may be
-1 (the devices the others leave). One device gives no mesh at all (plain jit).
"""
from __future__ import annotations

from typing import Optional

import jax
import ml_collections
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxmodels.config import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, n_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes with a -1 resolved; raises ConfigError naming the fix."""
    sizes = [int(mesh_cfg.get(axis, 1)) for axis in AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh sizes {dict(zip(AXES, sizes))}: each must be >= 1, and at most one "
                          f"may be -1 (the remaining devices)")
    fixed = 1
    for s in sizes:
        fixed *= s if s > 0 else 1
    if free:
        if n_devices % fixed:
            raise ConfigError(f"mesh {dict(zip(AXES, sizes))}: {n_devices} device(s) do not split into "
                              f"groups of {fixed}; pick sizes whose product divides {n_devices}")
        sizes[free[0]] = n_devices // fixed
    elif fixed > n_devices:
        raise ConfigError(f"mesh {dict(zip(AXES, sizes))} needs {fixed} devices but {n_devices} exist; "
                          f"lower the sizes or set one of them to -1")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg: ml_collections.ConfigDict) -> Optional[Mesh]:
    """A ("data", "fsdp", "tensor") mesh over the first data*fsdp*tensor devices; None when
    that is one device. Axes are Auto: GSPMD propagates shardings through the step."""
    shape = mesh_shape(mesh_cfg, jax.device_count())
    n = shape[0] * shape[1] * shape[2]
    if n == 1:
        return None
    devices = jax.devices()[:n]
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) dim split over data x fsdp; the rest whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_divisor(mesh: Optional[Mesh]) -> int:
    """How many ways the batch is split (data * fsdp)."""
    return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
