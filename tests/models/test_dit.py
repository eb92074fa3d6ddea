"""DiT / PixArt-alpha backbones and the byte-level text encoder (tiny configs on CPU)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.models import build_model, dit
from jaxmodels.layers.mha import MultiHeadAttention
from jaxmodels.layers.text_encoder import PAD_ID, TextEncoder, WordTextEncoder, encode_bytes, word_slots

N = 2
TINY = dict(name="dit", size="dit-s/2", hidden_size=32, depth=2, num_heads=2, num_classes=10,
            in_channels=3, patch_size=2)


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _perturbed(params, seed=1, scale=0.05):
    """Params plus Gaussian noise, so zero-initialised layers stop hiding the paths under test.
    Drawn host-side with numpy: a jitted PRNG draw per leaf costs seconds to compile."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(p + scale * rng.standard_normal(p.shape).astype(np.float32)), params)


# Init keys use the "rbg" PRNG: XLA:CPU compiles a model init full of threefry 2-3x slower.
def _init(model, x, t, cond):
    return jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), x, t, cond)["params"])()


@pytest.mark.parametrize("size,expected_m", [("dit-s/2", 33.0), ("dit-b/2", 130.5), ("dit-l/2", 458.0),
                                             ("dit-xl/2", 675.0)])
def test_paper_parameter_counts(size, expected_m):
    model = dit.build({"size": size})
    x = jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    cond = {"label": jax.ShapeDtypeStruct((1,), jnp.int32)}
    shapes = jax.eval_shape(lambda x, t, c: model.init(jax.random.key(0), x, t, c), x, t, cond)
    # The paper's counts include DiT's frozen pos_embed buffer (tokens x D); ours is a constant.
    total = _count(shapes) + 256 * model.cfg.hidden_size
    assert abs(total / 1e6 - expected_m) / expected_m < 0.01, total


def test_dit_shapes_zero_init_and_scan_equivalence():
    model = build_model(TINY)
    x = jax.random.normal(jax.random.key(0), (N, 8, 8, 3))
    t = jnp.array([3, 700])
    cond = {"label": jnp.array([1, 9])}
    params = _init(model, x, t, cond)
    assert params["blocks"]["attn"]["qkv"]["kernel"].shape == (2, 32, 96)  # scanned: [depth, ...]
    apply = jax.jit(lambda p: model.apply({"params": p}, x, t, cond))
    out = apply(params)
    chex.assert_shape(out, (N, 8, 8, 6))  # learn_sigma: eps and v
    np.testing.assert_array_equal(out, 0.0)  # adaLN-Zero + zero final layer
    # scan_layers=False unrolls the loop: the same function on the same stacked params.
    p = _perturbed(params)
    out_scan = apply(p)
    assert float(jnp.abs(out_scan).max()) > 1e-3
    # ("auto", the default, unrolls on a CPU: the explicit loop and unrolling both match it.)
    for variant in (build_model(dict(TINY, scan_layers=False, remat="nothing_saveable")),
                    build_model(dict(TINY, scan_layers=True))):
        assert jax.tree.map(jnp.shape, _init(variant, x, t, cond)) == jax.tree.map(jnp.shape, params)
        np.testing.assert_allclose(jax.jit(variant.apply)({"params": p}, x, t, cond), out_scan, atol=1e-5)
    with pytest.raises(ConfigError, match="valid"):
        build_model(dict(TINY, conditioning="audio"))


def test_adaln_zero_block_is_identity_at_init():
    block = dit.DiTBlock(num_heads=2)
    x = jax.random.normal(jax.random.key(0), (N, 16, 32))
    c = jax.random.normal(jax.random.key(1), (N, 32))
    variables = jax.jit(lambda: block.init(jax.random.key(2, impl="rbg"), x, c, None, None))()
    y, _ = jax.jit(lambda v: block.apply(v, x, c, None, None))(variables)
    np.testing.assert_array_equal(y, x)


def test_label_dropout_and_null_class():
    model = build_model(dict(TINY, class_dropout=1.0))
    x = jax.random.normal(jax.random.key(0), (N, 8, 8, 3))
    t = jnp.array([3, 700])
    p = _perturbed(_init(model, x, t, {"label": jnp.array([1, 9])}))
    apply = jax.jit(lambda c: model.apply({"params": p}, x, t, c))
    f = lambda label, drop=(False, False): apply({"label": jnp.array(label), "drop": jnp.array(drop)})  # noqa: E731
    null = f([10, 10])
    np.testing.assert_allclose(f([1, 9], (True, True)), null, atol=1e-6)
    # train=True drops every label at class_dropout = 1 (draws from the "dropout" rng).
    train_apply = jax.jit(lambda c, r: model.apply({"params": p}, x, t, c, train=True, rngs={"dropout": r}))
    np.testing.assert_allclose(train_apply({"label": jnp.array([1, 9])}, jax.random.key(0)), null, atol=1e-6)
    labelled = f([1, 9])
    assert float(jnp.abs(labelled - null).max()) > 1e-3
    # "drop" acts per example.
    mixed = f([1, 9], (False, True))
    np.testing.assert_allclose(mixed[0], labelled[0], atol=1e-6)
    np.testing.assert_allclose(mixed[1], null[1], atol=1e-6)


@pytest.mark.parametrize("encoder", ["bytes", "words", "precomputed"])
def test_pixart_text_paths(encoder):
    model = build_model(dict(TINY, size="pixart-s/2", conditioning="text", text_encoder=encoder, text_len=12,
                             text_dim=24, encoder_width=32, encoder_depth=1, encoder_heads=2, learn_sigma=False))
    x = jax.random.normal(jax.random.key(0), (N, 8, 8, 3))
    t = jnp.array([3, 700])
    tokens, mask = encode_bytes(["red circle", "a blue star"], 12)
    if encoder in ("bytes", "words"):
        cond = {"text_tokens": jnp.asarray(tokens), "text_mask": jnp.asarray(mask)}
        # Garbage in the padded positions must not matter.
        other = dict(cond, text_tokens=jnp.where(cond["text_mask"], cond["text_tokens"], 65))
        changed = dict(cond, text_tokens=cond["text_tokens"].at[:, 0].set(ord("z")))
    else:
        emb = jax.random.normal(jax.random.key(5), (N, 12, 24))
        cond = {"text_emb": emb, "text_mask": jnp.asarray(mask)}
        other = dict(cond, text_emb=jnp.where(cond["text_mask"][..., None], emb, 7.0))
        changed = dict(cond, text_emb=emb.at[:, 0].add(1.0))
    params = _init(model, x, t, cond)
    assert "scale_shift_table" in params["blocks"] and "t_block" in params
    np.testing.assert_array_equal(params["blocks"]["cross_attn"]["proj"]["kernel"], 0.0)
    assert ("text_encoder" in params["y_embedder"]) == (encoder != "precomputed")
    apply = jax.jit(lambda p, c: model.apply({"params": p}, x, t, c))
    keep, drop = jnp.zeros((N,), bool), jnp.ones((N,), bool)
    out = apply(params, dict(cond, drop=keep))
    chex.assert_shape(out, (N, 8, 8, 3))
    np.testing.assert_array_equal(out, 0.0)  # zero final linear
    p = _perturbed(params)
    f = lambda c, d=keep: apply(p, dict(c, drop=d))  # noqa: E731
    base = f(cond)
    np.testing.assert_allclose(f(other), base, atol=1e-5)
    assert float(jnp.abs(f(changed) - base).max()) > 1e-4
    # Dropped captions become the learned null embedding, whatever the caption was.
    np.testing.assert_allclose(f(cond, drop), f(changed, drop), atol=1e-6)
    assert float(jnp.abs(f(cond, drop) - base).max()) > 1e-4


def test_text_encoder():
    enc = TextEncoder(width=32, depth=2, num_heads=2)
    tokens, mask = encode_bytes(["héllo", "ab"], 8)
    assert tokens[0, :6].tolist() == list("héllo".encode()) and tokens[1, 2] == PAD_ID
    np.testing.assert_array_equal(mask.sum(1), [6, 2])
    variables = jax.jit(lambda: enc.init(jax.random.key(0, impl="rbg"), tokens, mask))()
    assert variables["params"]["blocks"]["attn"]["qkv"]["kernel"].shape == (2, 32, 96)
    apply = jax.jit(enc.apply)
    out = apply(variables, tokens, mask)
    chex.assert_shape(out, (2, 8, 32))
    # Real tokens ignore the padding; the mask defaults to tokens != PAD.
    padded_other = np.where(mask, tokens, 0)
    np.testing.assert_allclose(apply(variables, padded_other, mask)[1, :2], out[1, :2], atol=1e-5)
    np.testing.assert_allclose(enc.apply(variables, tokens), out, atol=1e-6)
    # The caption must be audible at init, not drowned by the positions: two captions that
    # differ in one word give features that differ by a sizeable fraction of their norm
    # (with N(0, 0.02) token embeddings this was ~0.03; the trained PixArt stayed caption-blind).
    a, m = encode_bytes(["a small red circle", "a small blue circle"], 24)
    feats = apply(variables, a, m)
    rel = float(jnp.linalg.norm(feats[0] - feats[1]) / jnp.linalg.norm(feats[0]))
    assert rel > 0.3, rel


def test_word_slots():
    tokens, mask = encode_bytes(["a red  ring", "hourglass x"], 16)
    index, words = word_slots(jnp.asarray(tokens), jnp.asarray(mask), max_words=2, max_chars=4)
    # "a" -> word 0 slot 0; "red" -> word 1 slots 0-2; double space skipped; "ring" is word 2 >= max_words.
    assert np.asarray(index[0]).tolist() == [0, -1, 4, 5, 6] + [-1] * 11
    # "hourglass" keeps its first 4 bytes; padding is never a word.
    assert np.asarray(index[1]).tolist() == [0, 1, 2, 3] + [-1] * 6 + [4] + [-1] * 5
    np.testing.assert_array_equal(words, [2, 2])


def test_word_text_encoder():
    enc = WordTextEncoder(max_words=6, max_chars=8, width=32, depth=1, num_heads=2, byte_width=8)
    tokens, mask = encode_bytes(["a small red ring", "a small red grin", "a small blue ring", "ab"], 24)
    variables = jax.jit(lambda: enc.init(jax.random.key(0, impl="rbg"), tokens, mask))()
    apply = jax.jit(enc.apply)
    feats, word_mask = apply(variables, tokens, mask)
    chex.assert_shape(feats, (4, 6, 32))
    np.testing.assert_array_equal(word_mask.sum(1), [4, 4, 4, 1])
    # Padding bytes never matter; the words are order-aware ("ring" vs "grin") and a changed
    # word is audible at init (as TextEncoder's test: >= 30% of the features' norm).
    junk = np.where(mask, tokens, 65)
    np.testing.assert_allclose(apply(variables, junk, mask)[0][:, :4], feats[:, :4], atol=1e-5)
    for other in (1, 2):
        rel = float(jnp.linalg.norm((feats[0] - feats[other])[:4]) / jnp.linalg.norm(feats[0, :4]))
        assert rel > 0.2, (other, rel)


def test_multi_head_attention_cross_mask():
    mha = MultiHeadAttention(num_heads=2)
    x = jax.random.normal(jax.random.key(0), (N, 5, 8))
    ctx = jax.random.normal(jax.random.key(1), (N, 3, 6))
    mask = jnp.array([[True, True, False], [True, False, False]])
    v = jax.jit(lambda: mha.init(jax.random.key(2, impl="rbg"), x, ctx, mask))()
    out = jax.jit(mha.apply)(v, x, ctx, mask)
    # Equals attending to the visible keys only (the unmasked path: jax.nn.dot_product_attention).
    for b, n in enumerate((2, 1)):
        np.testing.assert_allclose(out[b:b + 1], jax.jit(mha.apply)(v, x[b:b + 1], ctx[b:b + 1, :n]), atol=1e-5)
