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


def _random_params(model, tokens, seed=3, scale=0.5):
    """Random values in the model's param shapes (no init compile): the equivalence holds for
    any weights, and zero-initialised projections would hide paths."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


@pytest.mark.parametrize("family", sorted(TINY))
def test_two_carried_windows_equal_one_forward(family):
    model = build_model(TINY[family])
    tokens = jax.random.randint(jax.random.key(0), (2, 14), 0, 40)
    params = _random_params(model, tokens[:, :7])
    full = jax.jit(model.apply)({"params": params}, tokens)
    window = jax.jit(lambda p, x, s, pos: run_window(model, p, x, s, pos))
    carry = model.init_decode_state(2, 0)
    pos = jnp.zeros((), jnp.int32)
    first, carry, pos = window(params, tokens[:, :7], carry, pos)
    second, carry, pos = window(params, tokens[:, 7:], carry, pos)
    np.testing.assert_allclose(np.concatenate([first, second], 1), full, atol=1e-5, rtol=0)
    assert int(pos) == 14
    # Without the carried state the second window is a different (fresh-start) function.
    fresh, _, _ = window(params, tokens[:, 7:], model.init_decode_state(2, 0), pos * 0)
    assert float(jnp.max(jnp.abs(fresh - full[:, 7:]))) > 1e-3
