"""The improved-diffusion / UNet2DModel-style U-Net (tiny configs on CPU)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.models import build_model, unet
from jaxmodels.layers.text_encoder import encode_bytes

N = 2


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _perturbed(params, seed=1, scale=0.05):
    """Params plus Gaussian noise, so zero-initialised layers stop hiding the paths under test.
    Drawn host-side with numpy: a jitted PRNG draw per leaf costs seconds to compile."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(p + scale * rng.standard_normal(p.shape).astype(np.float32)), params)


def test_ddpm64_parameter_count():
    # DDPM's CIFAR-10 U-Net has 35.7M parameters; the same architecture on 64x64.
    model = unet.build({"size": "unet-ddpm64"})
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                               jnp.zeros((1,), jnp.int32), {}))
    assert abs(_count(shapes) / 1e6 - 35.7) < 0.2


# Init keys use the "rbg" PRNG: XLA:CPU compiles a model init full of threefry 2-3x slower.
def test_class_unet_shapes_zero_init_and_attention_path():
    model = build_model(dict(name="unet", size="unet-tiny", conditioning="class", learn_sigma=True, dropout=0.1))
    x = jax.random.normal(jax.random.key(0), (N, 16, 16, 3))
    t = jnp.array([5, 900])
    cond = {"label": jnp.array([2, 7]), "drop": jnp.array([False, False])}
    params = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), x, t, cond)["params"])()
    # Attention only at 8x8 (level 1 of 2, plus the middle).
    assert {"down_1_0_attn", "mid_attn", "up_1_0_attn"} <= set(params) and "down_0_0_attn" not in params
    apply = jax.jit(lambda p, c: model.apply({"params": p}, x, t, c))
    out = apply(params, cond)
    chex.assert_shape(out, (N, 16, 16, 6))
    np.testing.assert_array_equal(out, 0.0)  # zero-init output conv
    p = _perturbed(params)
    base = apply(p, cond)
    assert float(jnp.abs(base).max()) > 1e-3
    # The attention blocks are on the path: changing their weights changes the output.
    p_attn = dict(p, mid_attn=_perturbed(p["mid_attn"], seed=3, scale=0.5))
    assert float(jnp.abs(apply(p_attn, cond) - base).max()) > 1e-4
    # Labels matter; "drop" gives the null class.
    null = apply(p, dict(cond, label=jnp.array([10, 10])))
    np.testing.assert_allclose(apply(p, dict(cond, drop=jnp.array([True, True]))), null, atol=1e-6)
    assert float(jnp.abs(null - base).max()) > 1e-4
    # Dropout is active with train=True only.
    train_out = jax.jit(lambda r: model.apply({"params": p}, x, t, cond, train=True, rngs={"dropout": r}))(
        jax.random.key(1))
    assert float(jnp.abs(train_out - base).max()) > 1e-4


@pytest.mark.parametrize("encoder", ["bytes", "precomputed"])
def test_text_unet_cross_attention(encoder):
    model = build_model(dict(name="unet", size="unet-tiny", conditioning="text", text_encoder=encoder))
    x = jax.random.normal(jax.random.key(0), (N, 16, 16, 3))
    t = jnp.array([5, 900])
    tokens, mask = encode_bytes(["green ring", "a yellow cross"], 16)
    keep = jnp.zeros((N,), bool)
    if encoder == "bytes":
        cond = {"text_tokens": jnp.asarray(tokens), "text_mask": jnp.asarray(mask), "drop": keep}
        padded = dict(cond, text_tokens=jnp.where(cond["text_mask"], cond["text_tokens"], 70))
        changed = dict(cond, text_tokens=cond["text_tokens"].at[:, 1].set(ord("q")))
    else:
        emb = jax.random.normal(jax.random.key(4), (N, 16, 20))
        cond = {"text_emb": emb, "text_mask": jnp.asarray(mask), "drop": keep}
        padded = dict(cond, text_emb=jnp.where(cond["text_mask"][..., None], emb, -3.0))
        changed = dict(cond, text_emb=emb.at[:, 1].add(1.0))
    params = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), x, t, cond)["params"])()
    assert "cross_attn" in params["mid_attn"] and "cross_attn" in params["up_1_0_attn"]
    np.testing.assert_array_equal(params["mid_attn"]["cross_attn"]["proj"]["kernel"], 0.0)
    apply = jax.jit(lambda p, c: model.apply({"params": p}, x, t, c))
    chex.assert_shape(apply(params, cond), (N, 16, 16, 3))
    p = _perturbed(params)
    base = apply(p, cond)
    np.testing.assert_allclose(apply(p, padded), base, atol=1e-5)
    assert float(jnp.abs(apply(p, changed) - base).max()) > 1e-4
    drop = jnp.ones((N,), bool)
    np.testing.assert_allclose(apply(p, dict(cond, drop=drop)), apply(p, dict(changed, drop=drop)), atol=1e-6)
