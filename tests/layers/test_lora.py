"""LoRA: a fresh adapter is the identity, merging equals base + adapters (f32 and NF4 bases),
and optimizer steps through the model's trainable_mask change only adapter leaves."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels.layers.lora import LoRADense, lora_trainable_mask, merge_lora
from jaxmodels.models import build_model

TINY = dict(name="llama", vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
            hidden_dim=64, max_len=32)
ALL_TARGETS = ("q", "k", "v", "o", "gate", "up", "down", "head")


@functools.lru_cache(maxsize=None)
def _jitted(model):
    return jax.jit(model.apply)


def apply(model, params, toks):
    return _jitted(model)({"params": params}, toks)


def tokens(seed=0, shape=(2, 12)):
    return jax.random.randint(jax.random.key(seed), shape, 0, TINY["vocab_size"])


def with_random_b(params, seed=1):
    """Adapters as after training: B != 0."""
    key = iter(jax.random.split(jax.random.key(seed), 64))
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jax.random.normal(next(key), x.shape) * 0.3 if p[-1].key == "lora_b" else x, params)


def test_dense_with_zero_b_equals_base():
    x = jax.random.normal(jax.random.key(0), (3, 16))
    lora = LoRADense(8, use_bias=True, lora_rank=4, lora_alpha=8.0)
    params = lora.init(jax.random.key(1), x)["params"]
    assert params["lora_a"].shape == (16, 4) and np.all(params["lora_a"] != 0)
    np.testing.assert_array_equal(params["lora_b"], 0)
    base = {"kernel": params["kernel"], "bias": params["bias"]}
    expected = LoRADense(8, use_bias=True).apply({"params": base}, x)
    np.testing.assert_array_equal(lora.apply({"params": params}, x), expected)
    # With B != 0 the update is exactly (alpha / r) x A B.
    params = dict(params, lora_b=jnp.ones((4, 8)))
    delta = 2.0 * x @ params["lora_a"] @ params["lora_b"]
    np.testing.assert_allclose(lora.apply({"params": params}, x), expected + delta, rtol=1e-5, atol=1e-5)


def test_lora_dropout_only_in_training():
    x = jnp.ones((4, 16))
    layer = LoRADense(8, lora_rank=4, lora_dropout=0.5, deterministic=False)
    params = with_random_b(layer.init(jax.random.key(0), x)["params"])
    a = layer.apply({"params": params}, x, rngs={"dropout": jax.random.key(1)})
    b = layer.apply({"params": params}, x, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)
    eval_layer = LoRADense(8, lora_rank=4, lora_dropout=0.5)
    np.testing.assert_array_equal(eval_layer.apply({"params": params}, x),
                                  eval_layer.apply({"params": params}, x))


def test_fresh_lora_model_equals_base_and_merge_equals_adapters():
    base_model = build_model(TINY)
    lora_model = build_model(dict(TINY, lora_rank=4, lora_alpha=8.0, lora_targets=ALL_TARGETS))
    params = lora_model.init(jax.random.key(0), tokens())["params"]
    base_params = merge_lora(params, 4, 8.0)  # B = 0: the base weights themselves
    np.testing.assert_array_equal(apply(lora_model, params, tokens()),
                                  apply(base_model, base_params, tokens()))
    trained = with_random_b(params)
    merged = merge_lora(trained, 4, 8.0)
    assert jax.tree.structure(merged) == jax.tree.structure(base_params)
    with_adapters = apply(lora_model, trained, tokens())
    np.testing.assert_allclose(apply(base_model, merged, tokens()), with_adapters, rtol=1e-4, atol=1e-4)
    assert np.max(np.abs(with_adapters - apply(base_model, base_params, tokens()))) > 0.1


def test_merge_nf4_base_equals_qlora_model():
    qlora = build_model(dict(TINY, lora_rank=4, quant="nf4", lora_targets=("q", "v", "down")))
    params = with_random_b(qlora.init(jax.random.key(0), tokens())["params"])
    assert params["layers"]["mlp"]["up_proj"]["kernel_nf4"]["nf4"].dtype == jnp.uint8
    from jaxmodels.convert.llama import base_params
    merged = base_params(qlora, params)  # adapters folded in, every NF4 kernel de-quantised
    base_model = build_model(TINY)
    np.testing.assert_allclose(apply(base_model, merged, tokens()),
                               apply(qlora, params, tokens()), rtol=1e-4, atol=1e-4)


def test_only_adapters_change_under_optimizer_steps():
    """A few AdamW steps through the model's trainable_mask (as the trainer does: grads only
    w.r.t. trainable leaves, frozen leaves through optax.set_to_zero)."""
    model = build_model(dict(TINY, lora_rank=4, lora_dropout=0.1, quant="nf4", lora_targets=ALL_TARGETS))
    params = model.init(jax.random.key(0), tokens())["params"]
    mask = model.trainable_mask(params)
    assert mask == lora_trainable_mask(params)
    leaves, treedef = jax.tree.flatten(params)
    flags = jax.tree.leaves(mask)
    assert sum(flags) == 2 * (7 + 1) and any(not f for f in flags)
    labels = jax.tree.map(lambda t: "train" if t else "freeze", mask)
    opt = optax.multi_transform({"train": optax.adamw(1e-2), "freeze": optax.set_to_zero()}, labels)
    opt_state = opt.init(params)
    # Frozen leaves keep no Adam moments.
    n_moments = sum(x.size for x in jax.tree.leaves(opt_state) if hasattr(x, "size") and x.ndim > 0)
    n_lora = sum(x.size for x, f in zip(leaves, flags) if f)
    assert n_moments == 2 * n_lora
    x, y = tokens(1)[:, :-1], tokens(1)[:, 1:]

    @jax.jit
    def step(params, opt_state, rng):
        def loss_fn(train_leaves):
            it = iter(train_leaves)
            full = treedef.unflatten([next(it) if f else x_ for x_, f in zip(jax.tree.leaves(params), flags)])
            logits = model.apply({"params": full}, x, train=True, rngs={"dropout": rng})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        train_leaves = [x_ for x_, f in zip(jax.tree.leaves(params), flags) if f]
        loss, g = jax.value_and_grad(loss_fn)(train_leaves)
        it = iter(g)
        grads = treedef.unflatten([next(it) if f else jnp.zeros_like(x_) for x_, f in zip(jax.tree.leaves(params), flags)])
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    new, losses = params, []
    for i in range(4):
        new, opt_state, loss = step(new, opt_state, jax.random.key(i))
        losses.append(float(loss))
    for (path, old), updated, f in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(new), flags):
        if f:
            assert np.any(np.asarray(old) != np.asarray(updated)), jax.tree_util.keystr(path)
        else:
            np.testing.assert_array_equal(old, updated, err_msg=jax.tree_util.keystr(path))
            assert old.dtype == updated.dtype
    assert losses[-1] < losses[0]
