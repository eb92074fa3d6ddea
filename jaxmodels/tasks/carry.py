"""Long context at constant memory for the recurrent families (RWKV "infctx", truncated BPTT).

Each batch row reads consecutive windows of one token stream (data/text.StreamSource), and
the recurrent state a window ends with (RWKV-4/7, Mamba, RetNet: `model.init_decode_state`)
is the state the next window of that row starts from. Gradients stop at the window edge,
so memory is that of one window however long the stream gets; the state itself lives in
the TrainState (`carry`), which the checkpoint saves, so a resumed run continues exactly.

Evaluation (val loss, samples) still reads independent windows from a zero state, so its
numbers stay comparable with runs that do not carry. RetNet's carry includes the absolute
position (its rotation is relative, so the state needs the positions to continue).

Layout of the carry in the TrainState: {"state": the decode state with the batch axis moved
to the front of every leaf, "pos": int32 [B] tokens read so far}. Batch-first lets the train
step split it into micro-batches exactly as it splits the batch (train/step.py).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError

PyTree = Any

# The families whose decode state has a fixed size (it does not grow with the context).
RECURRENT = ("rwkv4", "rwkv7", "mamba", "retnet")


def check_family(name: str) -> None:
    if name not in RECURRENT:
        raise ConfigError(f"task.carry_state=True needs a recurrent model ({', '.join(RECURRENT)}), not "
                          f"model.name={name!r}: set task.carry_state=False")


def run_window(model, params: PyTree, tokens_BT: jax.Array, state: PyTree, pos: jax.Array,
               **apply_kwargs) -> tuple[Any, PyTree, jax.Array]:
    """One window from `state` (the model's decode-state layout, layers first) at absolute
    position `pos` (scalar): returns (logits or head inputs, the state after the window,
    pos + T). apply_kwargs go to model.apply (train, rngs, head_input)."""
    out, new_state = model.apply({"params": params}, tokens_BT, decode_state=state, pos=pos, **apply_kwargs)
    return out, new_state, pos + tokens_BT.shape[1]


def init_carry(model, batch_size: int) -> dict:
    """The zero carry for a batch (batch axis first); traceable (built under eval_shape)."""
    state = model.init_decode_state(batch_size, 0)
    return {"state": jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), state),
            "pos": jnp.zeros((batch_size,), jnp.int32)}


def window_with_carry(model, params: PyTree, tokens_BT: jax.Array, carry: dict,
                      **apply_kwargs) -> tuple[Any, dict]:
    """run_window on a batch-first carry; the new carry carries no gradient (the window edge
    is where backpropagation is truncated)."""
    state = jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), carry["state"])
    # Every row has read the same number of tokens (the rows advance together).
    pos = carry["pos"][0]
    out, new_state, _ = run_window(model, params, tokens_BT, jax.lax.stop_gradient(state), pos, **apply_kwargs)
    new = {"state": jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), new_state),
           "pos": carry["pos"] + tokens_BT.shape[1]}
    return out, jax.lax.stop_gradient(new)


def carry_of(task_cfg: Optional[Any]) -> bool:
    """Whether a config's task section turns the state carry on."""
    return bool(task_cfg is not None and hasattr(task_cfg, "get") and task_cfg.get("carry_state", False))
