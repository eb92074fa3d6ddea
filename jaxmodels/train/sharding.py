"""Where every array of a TrainState lives on the mesh, and the shardings the step is jitted with.

One function decides a leaf's PartitionSpec from its path and shape, so params, gradients,
optimizer moments and the EMA (whose paths end in the param's path and whose shapes equal
it) always get the same split:

    1. tensor: the first dim the family's rule names heads / mlp / vocab / ... and that
       divides by mesh.tensor (partition_rules.py);
    2. fsdp: leaves of at least mesh.fsdp_min_size elements; the dim the rule names "embed",
       else the largest remaining dim that divides by mesh.fsdp.
    Everything else is replicated. GSPMD inserts the all-gathers / reduce-scatters.

Any split gives the same numbers (up to float summation order); the rules only decide how
much memory each device holds and how much it communicates.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxmodels.config import ConfigError
from jaxmodels.train import mesh as mesh_lib
from jaxmodels.train.partition_rules import TENSOR_NAMES, rules_for

PyTree = Any
DEFAULT_FSDP_MIN_SIZE = 1024  # elements: smaller leaves (norm scales, biases) stay replicated


def path_str(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def spec_for(path: str, shape: tuple, rules: list, tensor: int, fsdp: int, fsdp_min_size: int) -> P:
    """The PartitionSpec of one leaf (see the module docstring)."""
    ndim = len(shape)
    names: list = [None] * ndim
    for regex, rule in rules:
        if re.search(regex, path):
            if len(rule) <= ndim:
                names[ndim - len(rule):] = list(rule)
            break
    spec: list = [None] * ndim
    if tensor > 1:
        for i, name in enumerate(names):
            if name in TENSOR_NAMES and shape[i] % tensor == 0:
                spec[i] = "tensor"
                break
    size = 1
    for d in shape:
        size *= int(d)
    if fsdp > 1 and ndim and size >= fsdp_min_size:
        free = [i for i in range(ndim) if spec[i] is None and shape[i] % fsdp == 0 and shape[i] >= fsdp]
        named = [i for i in free if names[i] == "embed"]
        if named or free:
            # the largest free dim; on ties the later one (a scanned stack's [n_layers] comes first)
            best = named[0] if named else max(free, key=lambda i: (shape[i], i))
            spec[best] = "fsdp"
    return P(*spec)


def tree_specs(tree: PyTree, family: str, mesh: Mesh, fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE) -> PyTree:
    """PartitionSpec for every array leaf of `tree` (params, a TrainState, ...)."""
    rules = rules_for(family)
    tensor, fsdp = mesh.shape["tensor"], mesh.shape["fsdp"]
    return jax.tree_util.tree_map_with_path(
        lambda p, x: spec_for(path_str(p), tuple(x.shape), rules, tensor, fsdp, fsdp_min_size), tree)


def tree_shardings(tree: PyTree, family: str, mesh: Mesh, fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE) -> PyTree:
    """NamedSharding for every array leaf of `tree`."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), tree_specs(tree, family, mesh, fsdp_min_size),
                        is_leaf=lambda s: isinstance(s, P))


@dataclasses.dataclass
class Plan:
    """What the trainer needs to place arrays: all None without a mesh (one device)."""
    mesh: Optional[Mesh]
    state: Optional[PyTree]            # a TrainState of NamedShardings
    batch: Optional[NamedSharding]     # examples split over data x fsdp
    replicated: Optional[NamedSharding]

    @property
    def params(self) -> Optional[PyTree]:
        return None if self.state is None else self.state.params

    @property
    def n_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.size


def make_plan(cfg: ml_collections.ConfigDict, abstract_state: PyTree) -> Plan:
    """The mesh from cfg.mesh and the shardings of the state and the batch on it."""
    mesh = mesh_lib.make_mesh(cfg.mesh)
    if mesh is None:
        return Plan(None, None, None, None)
    ways = mesh_lib.batch_divisor(mesh)
    micro = int(cfg.train.batch_size) // max(1, int(cfg.train.micro_batches))
    if micro % ways:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} / micro_batches={cfg.train.micro_batches} "
                          f"= {micro} examples per micro-batch do not split over mesh data*fsdp = {ways} "
                          f"devices; use a batch size that is a multiple of {ways * int(cfg.train.micro_batches)}")
    min_size = int(cfg.mesh.get("fsdp_min_size", DEFAULT_FSDP_MIN_SIZE))
    state = tree_shardings(abstract_state, str(cfg.model.get("name", "")), mesh, min_size)
    return Plan(mesh, state, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh))


def describe(plan: Plan, abstract_state: PyTree) -> str:
    """One line: the mesh and what one device holds of the state."""
    if plan.mesh is None:
        return ""
    total = per_device = 0
    for x, s in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(plan.state)):
        item = jax.numpy.dtype(x.dtype).itemsize
        n = 1
        for d in x.shape:
            n *= int(d)
        k = 1
        for d in s.shard_shape(tuple(x.shape)):
            k *= int(d)
        total, per_device = total + n * item, per_device + k * item
    sizes = ", ".join(f"{a}={n}" for a, n in plan.mesh.shape.items())
    return (f"mesh {sizes} ({plan.mesh.size} devices): each device holds {per_device / 2**20:.1f} MiB "
            f"of the {total / 2**20:.1f} MiB train state")
