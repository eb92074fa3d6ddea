"""The MoE layer: both dispatch paths against each other and against a per-expert loop,
the router losses against their formulas on hand-built routings, capacity dropping."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.layers.mlp import gelu
from jaxmodels.layers.moe import MoE, capacity_slots, collect, route, router_stats


def _layer(kind, dispatch, capacity_factor=1.25, router="mixtral", top_k=2, E=4, bias=True):
    dispatch, _, grouped = dispatch.partition("-")
    return MoE(num_experts=E, top_k=top_k, hidden=24, kind=kind, use_bias=bias, router=router,
               dispatch=dispatch, capacity_factor=capacity_factor, gelu="tanh",
               grouped=grouped or "auto",
               router_init=jax.nn.initializers.normal(1.0))


def _params(kind, x, E=4):
    p = _layer(kind, "dropless", E=E).init(jax.random.key(1), x)["params"]
    # non-zero biases so they are exercised
    return {k: (v + 0.1 * jax.random.normal(jax.random.key(7), v.shape) if k.endswith("bias") else v)
            for k, v in p.items()}


def _reference(kind, p, x_TD, top_k, normalize):
    """Plain loop: every token, every chosen expert, one small MLP."""
    logits = x_TD @ p["router"]
    weights, experts, _ = route(logits, top_k, normalize)
    out = np.zeros(x_TD.shape, np.float64)
    for t in range(x_TD.shape[0]):
        for j in range(top_k):
            e = int(experts[t, j])
            x = x_TD[t]
            if kind == "swiglu":
                h = jax.nn.silu(x @ p["gate_proj"][e]) * (x @ p["up_proj"][e])
                y = h @ p["down_proj"][e]
            else:
                h = gelu(x @ p["fc"][e] + p["fc_bias"][e], "tanh")
                y = h @ p["proj"][e] + p["proj_bias"][e]
            out[t] += float(weights[t, j]) * np.asarray(y, np.float64)
    return out


@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
@pytest.mark.parametrize("dispatch", ["dropless-ragged_dot", "dropless-blocked", "capacity"])
@pytest.mark.parametrize("router", ["mixtral", "switch"])
def test_dispatch_matches_per_expert_loop(kind, dispatch, router):
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    p = _params(kind, x)
    top_k = 2 if router == "mixtral" else 1
    layer = _layer(kind, dispatch, capacity_factor=4.0 / top_k, router=router, top_k=top_k)  # C = T: no drop
    y = layer.apply({"params": p}, x)
    ref = _reference(kind, p, x.reshape(-1, 16), top_k, router == "mixtral")
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 16), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
@pytest.mark.parametrize("grouped", ["ragged_dot", "blocked"])
def test_dropless_equals_capacity_when_nothing_dropped_fwd_and_grads(kind, grouped):
    x = jax.random.normal(jax.random.key(0), (3, 8, 16))
    p = _params(kind, x)
    dropless, capacity = _layer(kind, "dropless-" + grouped), _layer(kind, "capacity", capacity_factor=2.0)

    def f(layer):
        def loss(p, x):
            y, state = layer.apply({"params": p}, x, mutable=["moe"])
            assert float(state["moe"]["dropped"][0]) == 0.0
            term, _ = collect(state["moe"], 0.1, 0.01)
            return jnp.sum(jnp.sin(y)) + term
        return jax.value_and_grad(loss, argnums=(0, 1))(p, x)

    (la, (ga, gxa)), (lb, (gb, gxb)) = f(dropless), f(capacity)
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    np.testing.assert_allclose(gxa, gxb, atol=1e-5)
    for k in ga:
        assert np.abs(np.asarray(ga[k])).max() > 0, k
        np.testing.assert_allclose(ga[k], gb[k], atol=1e-5, err_msg=k)


def test_capacity_priority_and_drop_passes_through_as_zero():
    # 4 tokens all pick expert 0 first: capacity 1 keeps token 0's first choice only; the
    # second choices (expert 1) are placed after all first choices.
    experts_TK = jnp.array([[0, 1], [0, 1], [0, 1], [0, 2]], jnp.int32)
    pos, keep = capacity_slots(experts_TK, 3, capacity=2)
    np.testing.assert_array_equal(pos, [[0, 0], [1, 1], [2, 2], [3, 0]])
    np.testing.assert_array_equal(keep, [[True, True], [True, True], [False, False], [False, True]])
    # In the layer: a token dropped by every expert gets exactly zero (the residual carries it).
    x = jnp.ones((1, 6, 16))  # identical tokens: all route identically, E=4, top-1
    p = _params("gelu", x)
    layer = _layer("gelu", "capacity", capacity_factor=1.0, router="switch", top_k=1)  # C = 2
    y, state = layer.apply({"params": p}, x, mutable=["moe"])
    y = np.asarray(y)[0]
    assert np.abs(y[:2]).min() > 0 and np.all(y[2:] == 0)
    np.testing.assert_allclose(state["moe"]["dropped"][0], 4 / 6, rtol=1e-6)
    # the dropless path computes all six, equal to the two kept ones
    y_all = np.asarray(_layer("gelu", "dropless", router="switch", top_k=1).apply({"params": p}, x))[0]
    np.testing.assert_allclose(y_all, np.broadcast_to(y[0], y_all.shape), rtol=1e-6)


def test_switch_aux_loss_and_z_loss_on_hand_built_routing():
    # 4 tokens, 2 experts, top-1: tokens 0-2 choose expert 0, token 3 chooses expert 1.
    p0 = np.array([0.9, 0.6, 0.7, 0.2])
    probs = np.stack([p0, 1 - p0], axis=1)
    logits = jnp.asarray(np.log(probs) + np.array([[0.5], [-1.0], [2.0], [0.0]]))  # shift per token
    weights, experts, probs_TE = route(logits, 1, normalize=False)
    np.testing.assert_array_equal(experts[:, 0], [0, 0, 0, 1])
    np.testing.assert_allclose(weights[:, 0], [0.9, 0.6, 0.7, 0.8], rtol=1e-6)
    stats = router_stats(logits, probs_TE, experts)
    f = np.array([3 / 4, 1 / 4])
    P = probs.mean(axis=0)                      # [0.6, 0.4]
    np.testing.assert_allclose(stats["aux"], 2 * np.sum(f * P), rtol=1e-6)   # = 1.1
    np.testing.assert_allclose(stats["aux"], 1.1, rtol=1e-6)
    np.testing.assert_allclose(stats["load"], f, rtol=1e-6)
    lse = np.log(np.exp(np.asarray(logits)).sum(axis=1))
    np.testing.assert_allclose(lse, [0.5, -1.0, 2.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(stats["z"], np.mean(lse ** 2), rtol=1e-6)
    ent = -np.sum(probs * np.log(probs), axis=1).mean()
    np.testing.assert_allclose(stats["entropy"], ent, rtol=1e-6)
    # uniform router: aux is exactly 1 for any k, z = (log E)^2
    uni = router_stats(jnp.zeros((8, 4)), jnp.full((8, 4), 0.25), jnp.array([[0, 1], [2, 3]] * 4))
    np.testing.assert_allclose(uni["aux"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(uni["z"], math.log(4) ** 2, rtol=1e-6)


def test_mixtral_renormalises_switch_does_not():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
    w_mix, e, _ = route(logits, 2, normalize=True)
    w_sw, _, _ = route(logits, 2, normalize=False)
    np.testing.assert_allclose(w_mix, [[0.625, 0.375]], rtol=1e-6)
    np.testing.assert_allclose(w_sw, [[0.5, 0.3]], rtol=1e-6)
    np.testing.assert_array_equal(e, [[0, 1]])


def test_collect_sums_layers_and_weights_losses():
    stats = {"h": {"moe": {"aux": (jnp.array([1.0, 2.0]),), "z": (jnp.array([3.0, 5.0]),),
                           "load": (jnp.array([[0.5, 0.5], [1.0, 0.0]]),),
                           "dropped": (jnp.array([0.0, 0.5]),), "entropy": (jnp.array([0.1, 0.3]),)}}}
    term, m = collect(stats, 0.01, 0.001)
    np.testing.assert_allclose(term, 0.01 * 3 + 0.001 * 8, rtol=1e-6)
    assert float(m["moe_aux"]) == 3.0 and float(m["moe_dropped"]) == 0.25
    assert float(m["moe_load/l1_e0"]) == 1.0 and float(m["moe_load/l0_e1"]) == 0.5


def test_jitter_only_in_training():
    x = jax.random.normal(jax.random.key(0), (2, 8, 16))
    p = _params("swiglu", x)
    layer = MoE(num_experts=4, top_k=2, hidden=24, kind="swiglu", jitter=0.5)
    plain = _layer("swiglu", "dropless", bias=False)
    ref = plain.apply({"params": p}, x)
    np.testing.assert_allclose(layer.apply({"params": p}, x), ref, rtol=1e-6)
    noisy = layer.apply({"params": p}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    assert np.abs(np.asarray(noisy - ref)).max() > 1e-4


@pytest.mark.parametrize("sizes", [[40, 0, 3, 21], [0, 0, 64, 0], [1, 1, 1, 61]])
def test_blocked_grouped_matmul_equals_ragged_dot(sizes):
    from jaxmodels.layers.moe import grouped_matmul

    x = jax.random.normal(jax.random.key(0), (64, 16))
    w = jax.random.normal(jax.random.key(1), (4, 16, 8))
    g = jnp.asarray(sizes, jnp.int32)
    f = lambda impl: jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(grouped_matmul(x, w, g, impl))),
                                        argnums=(0, 1))(x, w)
    (a, (gxa, gwa)), (b, (gxb, gwb)) = f("ragged_dot"), f("blocked")
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(gxa, gxb, atol=1e-5)
    np.testing.assert_allclose(gwa, gwb, atol=1e-5)
