"""Pure data parallelism by shard_map: each device computes the loss and gradients of its own
rows with its own code, then one weighted all-reduce combines them.

Why not leave it to GSPMD (jit with the batch split): the partitioner cannot see into a
custom call (the C++ CPU kernels, a Pallas kernel), so it all-gathers the batch around each
one and every device computes that op for the whole batch. Under shard_map nothing is
partitioned: each device runs the single-device program on its rows.

Randomness: each device draws from the step's key folded with its index along "data", as
PyTorch DDP recipes seed each rank apart (DiT's train.py: seed * world_size + rank). Without
it the devices would draw the same dropout masks and diffusion noise for different rows.
So a step whose loss uses randomness differs from the single-device step of the same batch
(both are the same estimator); a deterministic loss gives the single-device result up to
the order of float sums (tests/sharding/test_data_parallel.py).

Only meshes whose fsdp and tensor axes are 1 take this path; the others keep GSPMD.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
from jax import shard_map
from jax.sharding import Mesh, PartitionSpec as P

DATA = "data"
PyTree = Any


def is_pure_data(mesh: Optional[Mesh]) -> bool:
    """True for a mesh that splits only the batch, over more than one device."""
    return (mesh is not None and mesh.shape.get(DATA, 1) > 1
            and all(n == 1 for axis, n in mesh.shape.items() if axis != DATA))


def _combine(loss: jax.Array, aux: dict, grads: PyTree):
    """Weighted mean over the data axis of per-device (loss, aux, grads), by aux["weight"]:
    the same numbers one device computes over all the rows (train.step weighs micro-batches
    the same way). aux["weight"] becomes the total."""
    w = aux["weight"]
    total = jax.lax.psum(w, DATA)
    mean = lambda x: jax.lax.psum(x * w, DATA) / total  # noqa: E731
    aux = {name: (total if name == "weight" else mean(v)) for name, v in aux.items()}
    return mean(loss), aux, jax.tree.map(mean, grads)


def per_device_grads(fn: Callable, mesh: Mesh) -> Callable:
    """`fn(params, batch, rng) -> (loss, aux, grads)` run per device on its rows of the batch
    (split over "data" on the leading dim) and combined. aux["carry"], the per-row state of
    tasks that carry one, stays split by row and is not averaged."""
    def local(params, batch, rng):
        rng = jax.random.fold_in(rng, jax.lax.axis_index(DATA))
        loss, aux, grads = fn(params, batch, rng)
        carry = aux.pop("carry", None)
        loss, aux, grads = _combine(loss, aux, grads)
        return loss, aux, grads, carry

    mapped = shard_map(local, mesh=mesh, in_specs=(P(), P(DATA), P()), out_specs=(P(), P(), P(), P(DATA)),
                       check_vma=False)

    def run(params, batch, rng):
        loss, aux, grads, carry = mapped(params, batch, rng)
        if carry is not None:
            aux["carry"] = carry
        return loss, aux, grads
    return run


def per_device_eval(fn: Callable, mesh: Mesh) -> Callable:
    """`fn(params, batch, rng) -> (loss, aux)` run per device on its rows (its own rng, as
    per_device_grads) and combined the same way; returns `(params, batch, rng) -> (loss, aux)`.
    aux needs no "weight": 1 per device when it has none."""
    def local(params, batch, rng):
        loss, aux = fn(params, batch, jax.random.fold_in(rng, jax.lax.axis_index(DATA)))
        loss, combined, _ = _combine(loss, {"weight": jax.numpy.float32(1.0), **aux}, ())
        if "weight" not in aux:
            combined.pop("weight")
        return loss, combined

    return shard_map(local, mesh=mesh, in_specs=(P(), P(DATA), P()), out_specs=(P(), P()), check_vma=False)
