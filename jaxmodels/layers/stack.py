"""Layer stacks: nn.scan over identical blocks, each wrapped in nn.remat with a named policy.

docs/cpu_notes.md: on XLA:CPU remat only takes effect under scan, and scanning cuts trace/compile
time 3-5x, so every family stacks its blocks through `stack()`.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from jaxmodels.kernels.cpu_attention import LSE_NAME, OUT_NAME
from jaxmodels.kernels.cpu_matmul import DOT_NAME as CPU_DOT_NAME
from jaxmodels.layers.dense import BF16_DOT_NAME

_cp = jax.checkpoint_policies
# The bf16 and MKL CPU matmuls (jaxmodels.layers.dense.bf16_matmul,
# jaxmodels.kernels.cpu_matmul) and the CPU attention are custom_vjp
# calls, not dot_general primitives, so the dot-saving policies also save their named outputs
# (for the attention: its output and log-sum-exp, so a remat backward does not rerun its forward).
_CUSTOM_CALLS = _cp.save_only_these_names(BF16_DOT_NAME, CPU_DOT_NAME, OUT_NAME, LSE_NAME)
REMAT_POLICIES = {
    "none": None,  # no remat: keep every activation
    "nothing_saveable": _cp.nothing_saveable,
    "everything_saveable": _cp.everything_saveable,
    "dots_saveable": _cp.save_from_both_policies(_cp.dots_saveable, _CUSTOM_CALLS),
    "dots_with_no_batch_dims_saveable": _cp.save_from_both_policies(
        _cp.dots_with_no_batch_dims_saveable, _CUSTOM_CALLS),
}


def scans(scan_layers) -> Optional[bool]:
    """A config's scan_layers as True / False, or None for "auto"; also the strings
    "true" / "false" a command-line override gives a field whose default is "auto"."""
    if isinstance(scan_layers, str):
        low = scan_layers.lower()
        if low == "auto":
            return None
        if low in ("true", "false"):
            return low == "true"
        from jaxmodels.config import ConfigError
        raise ConfigError(f"scan_layers={scan_layers!r}: use true, false or auto")
    return bool(scan_layers)


def layer_unroll(scan_layers, n_layers: int) -> int:
    """nn.scan's unroll for a stack of n_layers: 1 (a loop) or n_layers (straight-line code;
    the stacked param layout is the same either way, so checkpoints do not care).

    "auto" unrolls on a CPU: a loop's stacked outputs (the activations remat keeps, the
    per-layer weight gradients) are zero-filled buffers written slice by slice, and on XLA:CPU
    those fills and slices cost more than the extra compile (train steps, 2-core Intel Xeon,
    one device per core: nanoGPT baby 17.5 vs 19.6 ms, 6/6/384 3.76 vs 4.06 s, DiT-S/2 recipe
    4.19 vs 4.39 s; compile +0.5-2 s). On a GPU "auto" keeps the loop: compile time grows
    with depth and a GPU's fills are cheap."""
    choice = scans(scan_layers)
    if choice is None:
        choice = jax.default_backend() != "cpu"
    return 1 if choice else n_layers


def remat_block(block_cls, policy: str, static_argnums: tuple = ()):
    """Wraps a block class in nn.remat with the named checkpoint policy ("none": as is)."""
    if policy not in REMAT_POLICIES:
        from jaxmodels.config import ConfigError
        raise ConfigError(f"unknown remat policy {policy!r}; valid: {', '.join(REMAT_POLICIES)}")
    if policy == "none":
        return block_cls
    return nn.remat(block_cls, policy=REMAT_POLICIES[policy], prevent_cse=False,
                    static_argnums=static_argnums)


def scan_blocks(block_cls, n_layers: int, policy: str = "none", *, in_axes=(),
                static_argnums: tuple = (), name: Optional[str] = None, unroll: int = 1,
                **block_kwargs):
    """Returns a module applying `n_layers` copies of block_cls in sequence via nn.scan.

    The block's __call__ must be `(carry, *xs) -> (carry, ys)`; params get a leading
    [n_layers] axis. in_axes: one entry per extra argument (0 to scan over it, e.g. a
    per-layer KV cache; nn.broadcast to share it, e.g. positions or a mask).
    unroll: passed to nn.scan; unroll=n_layers unrolls the loop (a config's
    scan_layers=False) while keeping the same stacked param layout.
    """
    block = remat_block(block_cls, policy, static_argnums)
    scanned = nn.scan(
        block,
        # "moe": router losses and loads sown per layer by jaxmodels.layers.moe.
        variable_axes={"params": 0, "moe": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=in_axes,
        length=n_layers,
        unroll=unroll,
    )
    return scanned(name=name, **block_kwargs)
