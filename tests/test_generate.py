"""Decoding with the KV cache (jaxmodels.generate) against plain full-forward decoding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import generate
from jaxmodels.models import build_model

TINY = dict(name="gpt", vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
P, N = 5, 7


@pytest.fixture(scope="module")
def tiny():
    model = build_model(TINY)
    prompt = jax.random.randint(jax.random.key(1), (3, P), 0, 64, dtype=jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), prompt)["params"]
    # Sharpen the next-token distribution (a fresh init is nearly uniform) so that top-k
    # sampling has a clear top 3 and greedy has no near-ties.
    params = dict(params, ln_f=dict(params["ln_f"], scale=params["ln_f"]["scale"] * 10.0))
    # Logits of every position of a [B, P + N] buffer in one compiled call.
    full = jax.jit(lambda t: model.apply({"params": params}, t))
    return model, params, prompt, full


def test_cached_greedy_equals_full_forward_argmax(tiny):
    model, params, prompt, full = tiny
    out = np.asarray(generate.greedy(model, params, prompt, N))
    assert out.shape == (3, P + N) and out.dtype == np.int32
    np.testing.assert_array_equal(out[:, :P], prompt)
    # Reference without any cache: re-run the whole (zero-padded) sequence for each token;
    # causality makes the padding after position t irrelevant to logits[t].
    buf = np.zeros((3, P + N), np.int32)
    buf[:, :P] = prompt
    for t in range(P, P + N):
        buf[:, t] = np.argmax(np.asarray(full(jnp.asarray(buf)))[:, t - 1], axis=-1)
    np.testing.assert_array_equal(out, buf)


def test_compiled_once_per_shape(tiny):
    model, params, prompt, _ = tiny
    generate.greedy(model, params, prompt, N)
    before = generate._decoder.cache_info()
    generate.greedy(model, params, prompt + 1, N)
    after = generate._decoder.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses


def test_filter_logits_top_k_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15], [0.25, 0.25, 0.25, 0.25]]))
    k2 = generate.filter_logits(logits, top_k=2)
    # Ties with the k-th largest are kept (the uniform row keeps all four).
    np.testing.assert_array_equal(np.isfinite(k2), [[True, False, True, False], [True] * 4])
    np.testing.assert_array_equal(k2[0, [0, 2]], logits[0, [0, 2]])
    p = generate.filter_logits(logits, top_p=0.7)   # 0.5 + 0.3 reaches 0.7
    np.testing.assert_array_equal(np.isfinite(p[0]), [True, False, True, False])
    p = generate.filter_logits(logits, top_p=0.5)   # the top token alone holds 0.5
    np.testing.assert_array_equal(np.isfinite(p[0]), [True, False, False, False])
    p = generate.filter_logits(logits, top_p=0.1)   # always keeps the most likely token
    assert np.isfinite(p[0]).sum() == 1 and np.isfinite(p[0, 0])


def test_sampling_respects_top_k_and_seed(tiny):
    model, params, prompt, full = tiny
    batch = jnp.tile(prompt[:1], (3, 1))  # same shape as `prompt`: reuses `full`
    a = generate.sample(model, params, batch, N, jax.random.key(3), temperature=2.0, top_k=3)
    b = generate.sample(model, params, batch, N, jax.random.key(3), temperature=2.0, top_k=3)
    c = generate.sample(model, params, batch, N, jax.random.key(4), temperature=2.0, top_k=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Every sampled token is among the 3 most likely given what precedes it.
    logits = np.asarray(full(a))
    top3 = np.argsort(logits, axis=-1)[..., -3:]
    chosen = np.asarray(a)[:, P:]
    assert all(chosen[i, j] in top3[i, P - 1 + j] for i in range(3) for j in range(N))
    # Rows differ (it samples), but top_k=1 is exactly greedy.
    assert len({tuple(r) for r in np.asarray(a)}) > 1
    k1 = generate.sample(model, params, prompt, N, jax.random.key(5), temperature=1.0, top_k=1)
    np.testing.assert_array_equal(k1, generate.greedy(model, params, prompt, N))
    with pytest.raises(ValueError):
        generate.sample(model, params, prompt, N, jax.random.key(5), top_p=1.5)


def test_launch_generate_decodes_checkpoint_params(tiny, monkeypatch, capsys, tmp_path):
    """launch.generate wires checkpoint params + tokenizer + greedy together (the checkpoint
    reader is replaced by a stub returning our params; it is tested with the trainer)."""
    import ml_collections

    import jaxmodels.train.checkpoint as checkpoint
    from jaxmodels.data.tokenizers import build_tokenizer
    from launch.generate import main

    model, params, prompt, _ = tiny
    chars = "".join(chr(c) for c in range(ord("0"), ord("0") + 64))  # 64 sorted characters
    cfg = ml_collections.ConfigDict({"model": TINY, "data": {"tokenizer": "char", "vocab": chars}})
    monkeypatch.setattr(checkpoint, "load_params", lambda workdir, use_ema=True: (cfg, params))
    text = build_tokenizer(cfg.data).decode(np.asarray(prompt[0]).tolist())
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)  # what launch.generate looks for first
    assert main(["--workdir", str(tmp_path), "--prompt", text, "--max_new_tokens", str(N), "--greedy"]) == 0
    expected = generate.greedy(model, params, prompt[:1], N)[0]
    assert capsys.readouterr().out.strip() == build_tokenizer(cfg.data).decode(np.asarray(expected).tolist())


def _window_reference(apply, prompt, n, limit):
    """nanoGPT's generate, greedy: crop the context to the last `limit` tokens, full forward,
    argmax of the last position; no cache."""
    seq = np.asarray(prompt)
    for _ in range(n):
        logits = np.asarray(apply(jnp.asarray(seq[:, -limit:])))
        seq = np.concatenate([seq, np.argmax(logits[:, -1], axis=-1)[:, None].astype(np.int32)], axis=1)
    return seq


# shorter (-m slow: suite time) and longer than block_size 32
@pytest.mark.parametrize("prompt_len", [pytest.param(P, marks=pytest.mark.slow), 40])
def test_generation_past_block_size_slides_the_window(tiny, prompt_len):
    """Learned positions end at block_size: generating past it crops the context (nanoGPT)."""
    model, params, _, _ = tiny
    assert generate.context_limit(model) == TINY["block_size"]
    prompt = jax.random.randint(jax.random.key(7), (2, prompt_len), 0, 64, dtype=jnp.int32)
    n = 45  # P + n crosses block_size; 40 + n starts beyond it
    out = np.asarray(generate.greedy(model, params, prompt, n))
    assert out.shape == (2, prompt_len + n)
    ref = _window_reference(jax.jit(lambda t: model.apply({"params": params}, t)), prompt, n, TINY["block_size"])
    np.testing.assert_array_equal(out, ref)
    assert generate.plan(prompt_len, n, 32) == (min(prompt_len, 32), max(0, 32 - prompt_len), n - max(0, 32 - prompt_len))


def test_rope_model_slides_by_reprefilling_the_window():
    """LLaMA (RoPE + KV cache) past max_len: each new token re-reads the last max_len tokens
    at positions 0..max_len-1, the same as a fresh prefill of the cropped window."""
    model = build_model(dict(name="llama", vocab_size=48, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             hidden_dim=64, max_len=16))
    prompt = jax.random.randint(jax.random.key(2), (2, 6), 0, 48, dtype=jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), prompt)["params"]
    out = np.asarray(generate.greedy(model, params, prompt, 20))
    ref = _window_reference(jax.jit(lambda t: model.apply({"params": params}, t)), prompt, 20, 16)
    np.testing.assert_array_equal(out, ref)
    # sampling takes the same path
    s = generate.sample(model, params, prompt, 20, jax.random.key(1), temperature=0.8, top_k=5)
    assert s.shape == (2, 26)


def test_recurrent_models_have_no_context_limit():
    model = build_model(dict(name="mamba", vocab_size=32, d_model=16, n_layer=1, d_state=4))
    assert generate.context_limit(model) is None
    assert generate.plan(5, 300, None) == (5, 300, 0)


def test_launch_generate_wrong_workdir_is_one_line_naming_the_run_that_exists(tmp_path, capsys):
    """README's first mistake: runs/gpt_shakespeare_char when the run is ..._embedded."""
    from launch.generate import main

    (tmp_path / "runs" / "gpt_shakespeare_char_embedded" / "checkpoints" / "250").mkdir(parents=True)
    wrong = tmp_path / "runs" / "gpt_shakespeare_char"
    assert main(["--workdir", str(wrong), "--prompt", "ROMEO:"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"did you mean --workdir {tmp_path / 'runs' / 'gpt_shakespeare_char_embedded'}" in err
    assert not wrong.exists()  # looking created nothing
