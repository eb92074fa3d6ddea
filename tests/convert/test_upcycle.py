"""Sparse upcycling: the MoE made from a dense checkpoint computes the dense model's logits
at step 0 (GPT and LLaMA; MoE every layer and every 2nd), and trains from init_from."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.convert.pretrained import save_pretrained
from jaxmodels.convert.upcycle import upcycle, upcycle_folder
from jaxmodels.models import build_model

GPT = dict(name="gpt", vocab_size=64, block_size=16, n_layer=4, n_head=2, n_embd=32, bias=True)
LLAMA = dict(name="llama", vocab_size=64, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=48,
             max_len=32)


@pytest.mark.parametrize("base", [GPT, LLAMA], ids=["gpt", "llama"])
@pytest.mark.parametrize("every", [1, 2])
def test_upcycled_equals_dense_at_step_0(base, every):
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64, dtype=jnp.int32)
    dense = build_model(base)
    params = dense.init(jax.random.key(0), tokens)["params"]
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(5), a.shape), params)
    cfg, moe_params = upcycle(base, jax.tree.map(np.asarray, params), experts=8, top_k=2, every=every)
    moe = build_model(cfg)
    logits, state = moe.apply({"params": moe_params}, tokens, mutable=["moe"])
    # the router is random: tokens really are spread over the (identical) experts
    loads = np.concatenate([np.asarray(x).reshape(-1) for x in jax.tree.leaves(state)
                            if np.asarray(x).ndim == 2 and np.asarray(x).shape[-1] == 8])
    assert ((loads.reshape(-1, 8) > 0).sum(axis=1) >= 3).all()
    np.testing.assert_allclose(logits, dense.apply({"params": params}, tokens), atol=1e-6, rtol=1e-6)


@pytest.mark.slow  # ~16 s; test_upcycled_equals_dense_at_step_0 covers the conversion by default
def test_folder_round_trip_trains_with_init_from(tmp_path):
    from jaxmodels.config import load_config
    from jaxmodels.tasks.lm import LMTask

    c = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "moe_gpt.py") + ":smoke")
    dense_cfg = dict(c.model.to_dict(), moe_experts=0)
    dense = build_model(dense_cfg)
    params = dense.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    save_pretrained(dense_cfg, params, str(tmp_path / "dense"))
    new_cfg = upcycle_folder(str(tmp_path / "dense"), str(tmp_path / "moe"), experts=4, top_k=2)
    c.model.update(moe_hidden=0, moe_experts=4)
    c.init_from = str(tmp_path / "moe")
    task = LMTask(c)
    loaded = task.load_init_from(task.init_params(jax.random.key(1)), c.init_from)
    tokens = jnp.arange(16, dtype=jnp.int32)[None]
    np.testing.assert_allclose(task.logits(loaded, tokens), dense.apply({"params": params}, tokens), atol=1e-6)
    assert new_cfg["moe_experts"] == 4
    with pytest.raises(ConfigError, match="already an MoE"):
        upcycle(new_cfg, {}, 4, 2)
