"""Long context at constant memory: the recurrent families carry the final state of one window
into the next, and two windows read that way give the logits of one forward over both."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.models import build_model
from jaxmodels.tasks.carry import run_window

TINY = {
    "rwkv4": dict(name="rwkv4", vocab_size=40, d_model=16, n_layer=2, scan_chunk=4),
    "rwkv7": dict(name="rwkv7", vocab_size=40, d_model=16, head_size=8, n_layer=2, chunk_size=4),
    "mamba": dict(name="mamba", vocab_size=40, d_model=16, n_layer=2, d_state=4, scan_chunk=4),
    "retnet": dict(name="retnet", vocab_size=40, d_model=16, n_layer=2, n_head=2, d_ffn=32, chunk_size=4),
}


def _perturbed(params, seed=3, scale=0.1):
    """Several families init projections at zero; perturb so every path carries signal."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("family", sorted(TINY))
def test_two_carried_windows_equal_one_forward(family):
    model = build_model(TINY[family])
    tokens = jax.random.randint(jax.random.key(0), (2, 14), 0, 40)
    params = _perturbed(model.init(jax.random.key(1), tokens[:, :6])["params"])
    full = model.apply({"params": params}, tokens)
    carry = model.init_decode_state(2, 0)
    pos = jnp.zeros((), jnp.int32)
    first, carry, pos = run_window(model, params, tokens[:, :6], carry, pos)
    second, carry, pos = run_window(model, params, tokens[:, 6:], carry, pos)
    np.testing.assert_allclose(np.concatenate([first, second], 1), full, atol=1e-5, rtol=0)
    assert int(pos) == 14
    # Without the carried state the second window is a different (fresh-start) function.
    fresh, _, _ = run_window(model, params, tokens[:, 6:], model.init_decode_state(2, 0), pos * 0)
    assert float(jnp.max(jnp.abs(fresh - full[:, 6:]))) > 1e-3
