"""GPT and LLaMA with MoE FFNs: the scanned stack (MoE every layer and every n-th layer),
decode == full forward, parameter counts, and the LM task's router-loss bookkeeping."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.models import build_model
from jaxmodels.models import gpt as gpt_lib
from jaxmodels.models import llama as llama_lib

GPT = dict(name="gpt", vocab_size=64, block_size=16, n_layer=4, n_head=2, n_embd=32,
           moe_experts=4, moe_top_k=2)
LLAMA = dict(name="llama", vocab_size=64, dim=32, n_layers=4, n_heads=4, n_kv_heads=2,
             hidden_dim=48, max_len=32, moe_experts=4, moe_top_k=2)


# One case by default (every layer MoE on GPT); the other three are -m slow (suite time).
@pytest.mark.parametrize("base,every", [
    pytest.param(GPT, 1, id="1-gpt"),
    pytest.param(GPT, 2, id="2-gpt", marks=pytest.mark.slow),
    pytest.param(LLAMA, 1, id="1-llama", marks=pytest.mark.slow),
    pytest.param(LLAMA, 2, id="2-llama", marks=pytest.mark.slow)])
def test_moe_stack_params_decode_and_unrolled(base, every):
    model = build_model(dict(base, moe_every=every))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64, dtype=jnp.int32)
    params = model.init(jax.random.key(0), tokens)["params"]
    stack = params["h" if base is GPT else "layers"]
    if every == 1:
        assert "moe" in stack and "mlp" not in stack
        assert stack["moe"]["router"].shape == (4, 32, 4)
    else:
        assert "mlp" in stack["layer0"] and "moe" in stack["layer1"]
        assert stack["layer1"]["moe"]["router"].shape == (2, 32, 4)
    fam = gpt_lib if base is GPT else llama_lib
    assert sum(a.size for a in jax.tree.leaves(params)) == fam.num_params(model.cfg)
    logits, state = model.apply({"params": params}, tokens, mutable=["moe"])
    assert len(jax.tree.leaves(state)) == 5
    # plain apply (generation) computes the same logits and sows nothing
    np.testing.assert_array_equal(model.apply({"params": params}, tokens), logits)
    # KV-cache decode: prefill 5 then one token at a time == the full forward
    cache = model.init_decode_state(2, 16)
    out, cache = model.apply({"params": params}, tokens[:, :5], decode_state=cache, pos=jnp.int32(0))
    steps = [out]
    for t in range(5, 12):
        out, cache = model.apply({"params": params}, tokens[:, t:t + 1], decode_state=cache, pos=jnp.int32(t))
        steps.append(out)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), logits, atol=2e-5)
    unrolled = build_model(dict(base, moe_every=every, scan_layers=False))
    np.testing.assert_allclose(unrolled.apply({"params": params}, tokens), logits, atol=1e-6)


def test_active_params_and_flops():
    cfg = build_model(dict(GPT, moe_hidden=64)).cfg
    dense = build_model(dict(GPT, moe_experts=0)).cfg
    # top-2 experts 2C wide = one dense 4C MLP's weights; per layer + the router [C, E] and
    # one more output bias [C] (each of the two experts has its own)
    assert gpt_lib.num_params(cfg, active=True) == gpt_lib.num_params(dense) + 4 * (32 * 4 + 32)
    assert gpt_lib.num_params(cfg) > gpt_lib.num_params(dense)


def test_bad_moe_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="moe_every"):
        build_model(dict(GPT, moe_every=3))
    with pytest.raises(ConfigError, match="moe_top_k"):
        build_model(dict(GPT, moe_top_k=5))
    with pytest.raises(ConfigError, match="moe_dispatch"):
        build_model(dict(GPT, moe_dispatch="sparse"))


def test_lm_task_adds_weighted_router_losses_in_training_only():
    from jaxmodels.tasks.lm import LMTask, token_cross_entropy
    from jaxmodels.train.defaults import base_config

    c = base_config()
    c.model = ml_collections.ConfigDict(dict(GPT, moe_aux_weight=0.5, moe_z_weight=0.25))
    c.data.update(source="embedded", tokenizer="byte", seq_len=12)
    task = LMTask(c)
    params = task.init_params(jax.random.key(0))
    batch = {"inputs": jax.random.randint(jax.random.key(1), (2, 12), 0, 64, dtype=jnp.int32),
             "targets": jax.random.randint(jax.random.key(2), (2, 12), 0, 64, dtype=jnp.int32),
             "mask": jnp.ones((2, 12))}
    # Jitted: op by op, the layer scans made this test take ~25 s.
    loss = jax.jit(task.loss, static_argnames="train")
    train_loss, aux = loss(params, batch, jax.random.key(3), train=True)
    eval_loss, eval_aux = loss(params, batch, jax.random.key(3), train=False)
    ce, _ = token_cross_entropy(jax.jit(task.logits)(params, batch["inputs"]), batch["targets"], batch["mask"])
    np.testing.assert_allclose(eval_loss, ce, rtol=1e-6)
    np.testing.assert_allclose(train_loss, ce + 0.5 * aux["moe_aux"] + 0.25 * aux["moe_z"], rtol=1e-6)
    assert 4 * 0.99 < float(aux["moe_aux"]) and float(aux["moe_dropped"]) == 0.0  # 4 layers, each >= ~1
    loads = np.array([[float(aux[f"moe_load/l{l}_e{e}"]) for e in range(4)] for l in range(4)])
    np.testing.assert_allclose(loads.sum(axis=1), 1.0, rtol=1e-6)
    grads = jax.jit(jax.grad(lambda p: task.loss(p, batch, jax.random.key(3))[0]))(params)
    assert float(jnp.abs(grads["h"]["moe"]["router"]).max()) > 0
