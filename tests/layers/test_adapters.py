"""model.adapters on every family (jaxmodels/layers/adapters.py): a fresh adapter is the
base model exactly, merging folds it in, QLoRA keeps an NF4 base, the mask trains only
adapters, RWKV-7 state tuning trains only the initial state."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.layers import adapters
from jaxmodels.models import build_model

LM = {
    "gpt": dict(name="gpt", vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32),
    "mamba": dict(name="mamba", vocab_size=64, d_model=32, n_layer=2, d_state=4, scan_chunk=4),
    "rwkv4": dict(name="rwkv4", vocab_size=64, d_model=32, n_layer=2, scan_chunk=4),
    "rwkv7": dict(name="rwkv7", vocab_size=64, d_model=32, head_size=8, n_layer=2, chunk_size=4),
    "retnet": dict(name="retnet", vocab_size=64, d_model=32, n_layer=2, n_head=2, d_value=48, d_ffn=64,
                   chunk_size=4),
    "moe_gpt": dict(name="gpt", vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32,
                    moe_experts=4, moe_top_k=2),
}
DIFFUSION = {
    "dit": dict(name="dit", size="dit-s/2", hidden_size=32, depth=2, num_heads=2, num_classes=10,
                in_channels=3, patch_size=2),
    "unet": dict(name="unet", size="unet-tiny", conditioning="class"),
}
LORA = dict(rank=4, alpha=8.0)


def _inputs(name):
    if name in LM:
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)), jnp.int32)
        return (tokens,)
    side = 8 if name == "dit" else 16
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, side, side, 3)), jnp.float32)
    return x, jnp.array([3, 700]), {"label": jnp.array([1, 4]), "drop": jnp.array([False, False])}


def _build(name, lora=None):
    cfg = dict({**LM, **DIFFUSION}[name])
    if lora is not None:
        cfg["adapters"] = lora
    return build_model(cfg)


def _perturb(params, keep=("lora_b",), seed=1, scale=0.05):
    """Noise on every float leaf but `keep` (zero-initialised outputs stop hiding paths)."""
    rng = np.random.default_rng(seed)

    def one(path, p):
        name = str(getattr(path[-1], "key", ""))
        if name in keep or not jnp.issubdtype(p.dtype, jnp.floating):
            return p
        return p + scale * rng.standard_normal(p.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(one, params)


def _pair(name, lora):
    model, base = _build(name, lora), _build(name)
    args = _inputs(name)
    params = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), *args)["params"])()
    base_shapes = jax.eval_shape(lambda: base.init(jax.random.key(0, impl="rbg"), *args)["params"])
    apply = lambda m, p: m.apply({"params": p}, *args)  # noqa: E731
    return model, base, params, base_shapes, apply


# Three families by default (seconds each); the rest compile longer: -m slow.
SLOW = ("rwkv4", "retnet", "moe_gpt", "dit", "unet")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in list(LM) + list(DIFFUSION)])
def test_fresh_lora_is_the_base_model_and_merge_matches(name):
    model, base, params, base_shapes, apply = _pair(name, LORA)
    flat = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert any("lora_a" in k for k in flat), "no Dense got an adapter"
    params = _perturb(params)
    merged = adapters.merge(params, model.cfg.adapters, base_shapes)
    # B = 0: the adapter model is the base model with the same weights, bit for bit.
    np.testing.assert_array_equal(np.asarray(apply(model, params)), np.asarray(apply(base, merged)))
    # With a trained (non-zero) B, merging W + alpha/r A B gives the adapter forward.
    trained = _perturb(params, keep=(), seed=2, scale=0.2)
    out = np.asarray(apply(model, trained))
    merged = adapters.merge(trained, model.cfg.adapters, base_shapes)
    # f32 sums in another order: within 2e-5 of the output's scale (DiT's reaches ~12).
    np.testing.assert_allclose(out, np.asarray(apply(base, merged)), atol=2e-5 * max(1.0, np.abs(out).max()))
    assert np.abs(out - np.asarray(apply(base, adapters.merge(params, model.cfg.adapters, base_shapes)))).max() > 1e-4


@pytest.mark.parametrize("name", ["mamba", "rwkv7"])
def test_qlora_nf4_base_merges_to_the_adapter_forward(name):
    lora = dict(LORA, quant="nf4")
    model, base, params, base_shapes, apply = _pair(name, lora)
    flat = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert any("kernel_nf4" in k for k in flat) and not any("'kernel']" in k for k in flat)
    trained = _perturb(params, keep=(), seed=2, scale=0.2)
    merged = adapters.merge(trained, model.cfg.adapters, base_shapes)
    np.testing.assert_allclose(np.asarray(apply(model, trained)), np.asarray(apply(base, merged)),
                               atol=2e-5, rtol=1e-5)
    # A pretrained f32 tree is quantised into the NF4 layout (init_from) and back.
    requant = adapters.quantize_like(merged, trained)
    assert jax.tree.structure(jax.tree.map(np.asarray, {k: v for k, v in requant.items()})) is not None


def test_mask_trains_only_adapters_and_bf16_base_storage():
    model, _, params, _, _ = _pair("gpt", dict(LORA, base_dtype="bfloat16", train_also="ln_f"))
    mask = adapters.trainable_mask(model, params)
    for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]:
        key = jax.tree_util.keystr(path)
        assert m == ("lora_" in key or "ln_f" in key), key
    # Dense kernels are created in bf16 already; store_frozen casts the other frozen leaves.
    assert params["h"]["attn"]["c_attn"]["kernel"].dtype == jnp.bfloat16
    stored = adapters.store_frozen(params, mask, jnp.bfloat16)
    assert stored["wte"].dtype == jnp.bfloat16 and stored["h"]["attn"]["c_attn"]["lora_a"].dtype == jnp.float32
    assert adapters.trainable_mask(_build("gpt"), params) is None


def test_targets_select_dense_layers_by_path():
    model, _, params, _, _ = _pair("rwkv7", dict(LORA, targets=r"att/(key|value)$"))
    with_lora = sorted(jax.tree_util.keystr(k[:-1]) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]
                       if "lora_a" in jax.tree_util.keystr(k))
    assert with_lora == ["['blocks']['att']['key']", "['blocks']['att']['value']"]


def test_rwkv7_state_tuning_trains_only_the_initial_state():
    model, base, params, base_shapes, apply = _pair("rwkv7", dict(state_tuning=True))
    mask = adapters.trainable_mask(model, params)
    trained = [jax.tree_util.keystr(k) for k, m in jax.tree_util.tree_flatten_with_path(mask)[0] if m]
    assert trained == ["['blocks']['att']['state0']"]
    assert params["blocks"]["att"]["state0"].shape == (2, 4, 8, 8)   # [L, H, N, N]
    # Zero state0: the base model; a non-zero state0 changes the output.
    params = _perturb(params, keep=("state0",), scale=0.5)  # (a fresh RWKV-7 has zero output projections)
    merged = adapters.merge(params, model.cfg.adapters, base_shapes)
    np.testing.assert_array_equal(np.asarray(apply(model, params)), np.asarray(apply(base, merged)))
    tuned = jax.tree.map(lambda x: x, params)
    # (random: a constant state adds the same to every channel of a head, which ln_x removes)
    noise = np.random.default_rng(3).standard_normal(params["blocks"]["att"]["state0"].shape)
    tuned["blocks"]["att"]["state0"] = params["blocks"]["att"]["state0"] + noise.astype(np.float32)
    assert np.abs(np.asarray(apply(model, tuned)) - np.asarray(apply(model, params))).max() > 1e-4


def test_rwkv7_state_tuning_decodes_from_the_tuned_state():
    model = _build("rwkv7", dict(state_tuning=True))
    tokens = _inputs("rwkv7")[0]
    params = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), tokens)["params"])()
    params = _perturb(params, keep=("state0",), scale=0.5)
    noise = np.random.default_rng(3).standard_normal(params["blocks"]["att"]["state0"].shape)
    params["blocks"]["att"]["state0"] = params["blocks"]["att"]["state0"] + noise.astype(np.float32)
    full = model.apply({"params": params}, tokens)
    state = model.init_decode_state(tokens.shape[0], 0)
    stepped, state = model.apply({"params": params}, tokens[:, :5], decode_state=state, pos=jnp.int32(0))
    rest, _ = model.apply({"params": params}, tokens[:, 5:], decode_state=state, pos=jnp.int32(5))
    np.testing.assert_allclose(np.concatenate([stepped, rest], axis=1), full, atol=2e-5)


def test_bad_lora_settings_name_the_fix():
    with pytest.raises(ConfigError, match="trains nothing"):
        _build("gpt", dict(rank=0))
    with pytest.raises(ConfigError, match="unknown model.adapters field"):
        _build("gpt", dict(rank=2, rnak=3))
    with pytest.raises(ConfigError, match="quant"):
        _build("gpt", dict(rank=2, quant="int3"))


BITNET = dict(name="bitnet", vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
              max_len=32)


def _bitnet(lora=None, **fields):
    cfg = dict(BITNET, **fields)
    if lora is not None:
        cfg["adapters"] = lora
    return build_model(cfg)


def _drop_adapters(params):
    if not isinstance(params, dict):
        return params
    return {k: _drop_adapters(v) for k, v in params.items() if k not in adapters.LORA_LEAVES}


def _init(model, tokens):
    return jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), tokens)["params"])()


def _random_ternary_codes(params):
    """Packed uint8 leaves filled with valid 2-bit codes (0, 1, 2) four to a byte (a fresh
    packed base is all zeros and would hide the base path)."""
    rng = np.random.default_rng(4)

    def one(path, p):
        if str(getattr(path[-1], "key", "")) != "packed":
            return p
        codes = rng.integers(0, 3, p.shape + (4,))
        return jnp.asarray(sum(codes[..., i] << (2 * i) for i in range(4)), jnp.uint8)

    return jax.tree_util.tree_map_with_path(one, params)


@pytest.mark.parametrize("packed", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_bitnet_lora_beside_the_ternary_base(packed):
    """A fresh adapter is the BitNet (latent or packed ternary base); a trained one
    changes the output; only the adapters train; an NF4 request is refused."""
    model, base = _bitnet(LORA, packed=packed), _bitnet(packed=packed)
    tokens = _inputs("gpt")[0]
    params = _init(model, tokens)
    if packed:
        params = _random_ternary_codes(params)
    apply = lambda m, p: np.asarray(m.apply({"params": p}, tokens))
    out = apply(model, params)
    # Through the CPU attention kernel (the default here) q and k are materialised for the custom
    # call, and XLA's fusion of RoPE after the adapter's zero term may round them differently
    # from the base model's in the last bit (~2e-8); through the einsum path, bit for bit.
    np.testing.assert_allclose(out, apply(base, _drop_adapters(params)), rtol=0, atol=1e-6)
    from jaxmodels.kernels import dispatch
    dispatch.configure({"attention": "xla"})
    try:
        np.testing.assert_array_equal(apply(model, params), apply(base, _drop_adapters(params)))
    finally:
        dispatch.configure(None)
    mask = model.trainable_mask(params)  # BitNet's own (the LM task asks the model first)
    trained = [jax.tree_util.keystr(k) for k, m in jax.tree_util.tree_flatten_with_path(mask)[0] if m]
    assert trained and all("lora_" in k for k in trained)
    assert any("attn" in k for k in trained) and any("mlp" in k or "ffn" in k for k in trained), trained
    moved = _perturb(params, keep=(), seed=2, scale=0.2)
    moved = jax.tree.map(lambda p, q, m: q if m else p, params, moved, mask)
    assert np.abs(np.asarray(model.apply({"params": moved}, tokens)) - out).max() > 1e-4
    with pytest.raises(ConfigError, match="ternary already"):
        _bitnet(dict(LORA, quant="nf4")).init(jax.random.key(0), tokens)


def test_bitnet_full_precision_lora_merges():
    """quant='none' (the full-precision baseline): the adapters fold into W as for a Dense."""
    model, base = _bitnet(LORA, quant="none"), _bitnet(quant="none")
    tokens = _inputs("gpt")[0]
    params = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), tokens)["params"])()
    shapes = jax.eval_shape(lambda: base.init(jax.random.key(0, impl="rbg"), tokens)["params"])
    trained = _perturb(params, keep=(), seed=2, scale=0.2)
    out = np.asarray(model.apply({"params": trained}, tokens))
    merged = adapters.merge(trained, model.cfg.adapters, shapes)
    np.testing.assert_allclose(out, np.asarray(base.apply({"params": merged}, tokens)),
                               atol=2e-5 * max(1.0, np.abs(out).max()))
