"""Autoregressive decoding for every causal LM that follows the contract in jaxmodels/models.

The prompt is processed in one call (prefill, filling the KV cache / recurrent state), then
a jitted `lax.scan` runs one-token steps. Models with a bounded context (`model.max_context`)
slide a window once the context is full, as nanoGPT's generate does (see `plan`); recurrent
models decode any length. Nothing here knows the family: it only calls
`model.init_decode_state(batch, max_len, dtype)` and
`model.apply({"params": p}, tokens, decode_state=s, pos=pos) -> (logits, s)`.

One compiled function per (model, batch, prompt length, new tokens, sampling mode); the
model and sizes are static, params / prompt / rng / temperature / top_p are traced.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

PyTree = Any


def _state_dtype(model) -> Any:
    """The cache dtype: the model config's compute dtype when it names one, else f32."""
    for attr in ("cfg", "config"):
        name = getattr(getattr(model, attr, None), "dtype", None)
        if isinstance(name, str):
            return jnp.dtype(name)
    return jnp.float32


def filter_logits(logits_BV: jax.Array, top_k: Optional[int] = None,
                  top_p: Optional[jax.Array] = None) -> jax.Array:
    """Sets logits outside the top-k / nucleus (top-p) set to -inf (f32 in, f32 out)."""
    neg_inf = jnp.asarray(-jnp.inf, logits_BV.dtype)
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][..., -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, neg_inf, logits_BV)
    if top_p is not None:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[..., ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass;
        # the most likely token is always kept.
        mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        kept_BV = jnp.where(mass_before_BV < top_p, sorted_BV, jnp.inf)
        threshold_B1 = jnp.min(kept_BV, axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < threshold_B1, neg_inf, logits_BV)
    return logits_BV


def apply_repetition_penalty(logits_BV: jax.Array, seen_BV: jax.Array, penalty: jax.Array) -> jax.Array:
    """CTRL's / transformers' repetition penalty: the logit of every token already in the
    sequence is divided by `penalty` when positive and multiplied by it when negative."""
    penalized_BV = jnp.where(logits_BV > 0, logits_BV / penalty, logits_BV * penalty)
    return jnp.where(seen_BV, penalized_BV, logits_BV)


def _pick(logits_BV, rng, temperature, greedy: bool, top_k, top_p):
    if greedy:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = filter_logits(logits_BV.astype(jnp.float32) / temperature, top_k, top_p)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def context_limit(model) -> Optional[int]:
    """How many tokens the model reads at once (`model.max_context`); None: unbounded
    (recurrent models: their state does not grow)."""
    limit = getattr(model, "max_context", None)
    return None if limit is None else int(limit)


def plan(prompt_len: int, max_new_tokens: int, limit: Optional[int]) -> tuple[int, int, int]:
    """(prompt tokens read, tokens decoded with the cache, tokens decoded by sliding).

    Like nanoGPT's generate, a model with a bounded context reads only the last `limit`
    tokens: a longer prompt is cropped to its tail, and once prompt + output fill the
    context, each further token comes from a full forward over the last `limit` tokens
    (positions 0..limit-1 again). For learned positions (GPT) that is the only choice;
    for RoPE models (LLaMA) it equals re-prefilling the cropped window every token, which
    keeps the model inside the positions it was trained on. Up to the limit the KV cache
    serves every token, so a run that fits the context decodes exactly as before.
    """
    if limit is None:
        return prompt_len, max_new_tokens, 0
    read = min(prompt_len, limit)
    cached = max(0, min(max_new_tokens, limit - read))
    return read, cached, max_new_tokens - cached


@functools.lru_cache(maxsize=64)
def _decoder(model, batch: int, prompt_len: int, max_new_tokens: int, greedy: bool,
             top_k: Optional[int], use_top_p: bool, state_dtype, use_penalty: bool = False,
             eos_ids: tuple = ()):
    """The jitted prefill + scan for one shape / mode (cached: compiled once per key).
    With eos_ids, a row that has produced one of them repeats it from then on (the caller
    cuts there); with use_penalty, the repetition penalty applies to the row's tokens so far
    (the whole prompt included, as transformers does, even the part a window crops)."""
    read, cached, slid = plan(prompt_len, max_new_tokens, context_limit(model))

    def run(params, prompt_BP, rng, temperature, top_p, penalty=1.0):
        top_p = top_p if use_top_p else None
        rows_B1 = jnp.arange(batch)[:, None]
        eos_E = jnp.asarray(eos_ids or (-1,), jnp.int32)

        def pick(logits_BV, seen_BV, done_B, rng):
            if use_penalty:
                logits_BV = apply_repetition_penalty(logits_BV.astype(jnp.float32), seen_BV, penalty)
            token_B = _pick(logits_BV, rng, temperature, greedy, top_k, top_p)
            if eos_ids:
                token_B = jnp.where(done_B, eos_E[0], token_B)
                done_B = done_B | jnp.isin(token_B, eos_E)
            return token_B, seen_BV.at[rows_B1[:, 0], token_B].set(True), done_B

        seq_BS = prompt_BP[:, prompt_len - read:]
        seen_BV = done_B = None
        if cached:
            state = model.init_decode_state(batch, read + cached - 1, state_dtype)
            logits_BPV, state = model.apply({"params": params}, seq_BS, decode_state=state,
                                            pos=jnp.zeros((), jnp.int32))
            seen_BV = jnp.zeros((batch, logits_BPV.shape[-1]), bool).at[rows_B1, prompt_BP].set(True)
            rng, sub = jax.random.split(rng)
            first_B, seen_BV, done_B = pick(logits_BPV[:, -1], seen_BV, jnp.zeros(batch, bool), sub)

            def step(carry, _):
                state, token_B, pos, rng, seen_BV, done_B = carry
                logits_B1V, state = model.apply({"params": params}, token_B[:, None],
                                                decode_state=state, pos=pos)
                rng, sub = jax.random.split(rng)
                next_B, seen_BV, done_B = pick(logits_B1V[:, -1], seen_BV, done_B, sub)
                return (state, next_B, pos + 1, rng, seen_BV, done_B), next_B

            carry = (state, first_B, jnp.asarray(read, jnp.int32), rng, seen_BV, done_B)
            (_, _, _, rng, seen_BV, done_B), rest_NB = jax.lax.scan(step, carry, None, length=cached - 1)
            seq_BS = jnp.concatenate([seq_BS, first_B[:, None], rest_NB.T], axis=1)
        if slid:
            limit = read + cached  # == the context limit: slid > 0 only once it is full

            def slide(carry, _):
                window_BL, rng, seen_BV, done_B = carry
                logits_BLV = model.apply({"params": params}, window_BL)
                rng, sub = jax.random.split(rng)
                next_B, seen_BV, done_B = pick(logits_BLV[:, -1], seen_BV, done_B, sub)
                window_BL = jnp.concatenate([window_BL[:, 1:], next_B[:, None]], axis=1)
                return (window_BL, rng, seen_BV, done_B), next_B

            if seen_BV is None:  # no cached phase (the prompt fills the context): the vocab from a shape-only pass
                vocab = jax.eval_shape(lambda p, w: model.apply({"params": p}, w),
                                       params, seq_BS[:, -limit:]).shape[-1]
                seen_BV = jnp.zeros((batch, vocab), bool).at[rows_B1, prompt_BP].set(True)
                done_B = jnp.zeros(batch, bool)
            _, slid_NB = jax.lax.scan(slide, (seq_BS[:, -limit:], rng, seen_BV, done_B), None, length=slid)
            seq_BS = jnp.concatenate([seq_BS, slid_NB.T], axis=1)
        return jnp.concatenate([prompt_BP, seq_BS[:, read:]], axis=1)

    return jax.jit(run)


def _check_prompt(prompt) -> jax.Array:
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be int tokens [batch, length], got {prompt.dtype}{list(prompt.shape)}")
    if prompt.shape[1] < 1:
        raise ValueError("prompt needs at least one token (e.g. the BOS / end-of-text token)")
    return prompt.astype(jnp.int32)


def greedy(model, params: PyTree, prompt, max_new_tokens: int, state_dtype=None,
           repetition_penalty: float = 1.0, eos_ids=()) -> jax.Array:
    """Greedy decoding: returns tokens [B, P + max_new_tokens] (the prompt included).
    After a row emits one of eos_ids it repeats eos_ids[0] (cut the row at its first EOS)."""
    prompt = _check_prompt(prompt)
    if max_new_tokens <= 0:
        return prompt
    fn = _decoder(model, prompt.shape[0], prompt.shape[1], int(max_new_tokens), True, None, False,
                  jnp.dtype(state_dtype or _state_dtype(model)), *_extras(repetition_penalty, eos_ids))
    return fn(params, prompt, jax.random.key(0), jnp.float32(1.0), jnp.float32(1.0),
              jnp.float32(repetition_penalty))


def _extras(repetition_penalty: float, eos_ids) -> tuple:
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0: off), got {repetition_penalty}")
    return repetition_penalty != 1.0, tuple(int(e) for e in eos_ids)


def sample(model, params: PyTree, prompt, max_new_tokens: int, rng: jax.Array,
           temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
           state_dtype=None, repetition_penalty: float = 1.0, eos_ids=()) -> jax.Array:
    """Samples with the repetition penalty, temperature, then optional top-k and nucleus
    (top-p) filtering (transformers' order).

    temperature == 0 means greedy. Returns tokens [B, P + max_new_tokens].
    """
    if temperature == 0:
        return greedy(model, params, prompt, max_new_tokens, state_dtype, repetition_penalty, eos_ids)
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError(f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
    prompt = _check_prompt(prompt)
    if max_new_tokens <= 0:
        return prompt
    fn = _decoder(model, prompt.shape[0], prompt.shape[1], int(max_new_tokens), False,
                  None if top_k is None else int(top_k), top_p is not None,
                  jnp.dtype(state_dtype or _state_dtype(model)), *_extras(repetition_penalty, eos_ids))
    return fn(params, prompt, rng, jnp.float32(temperature), jnp.float32(1.0 if top_p is None else top_p),
              jnp.float32(repetition_penalty))


def cut_at_eos(tokens, eos_ids) -> list:
    """A generated row up to (not including) its first EOS."""
    tokens = [int(t) for t in tokens]
    hits = [i for i, t in enumerate(tokens) if t in set(eos_ids)]
    return tokens[:hits[0]] if hits else tokens
