"""Repetition penalty and stop-at-EOS in jaxmodels.generate, against a full-forward reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import generate
from jaxmodels.models import build_model

TINY = dict(name="gpt", vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
P, N = 5, 10


@pytest.fixture(scope="module")
def tiny():
    model = build_model(TINY)
    prompt = jax.random.randint(jax.random.key(1), (3, P), 0, 64, dtype=jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), prompt)["params"]
    params = dict(params, ln_f=dict(params["ln_f"], scale=params["ln_f"]["scale"] * 10.0))
    full = jax.jit(lambda t: model.apply({"params": params}, t))
    return model, params, prompt, full


def reference(full, prompt, penalty=1.0, eos=None):
    """Greedy with no cache; transformers' RepetitionPenaltyLogitsProcessor in numpy."""
    buf = np.zeros((prompt.shape[0], P + N), np.int32)
    buf[:, :P] = prompt
    done = np.zeros(prompt.shape[0], bool)
    for t in range(P, P + N):
        logits = np.asarray(full(jnp.asarray(buf)))[:, t - 1].astype(np.float64)
        for b in range(len(buf)):
            for tok in set(buf[b, :t].tolist()):
                logits[b, tok] = logits[b, tok] / penalty if logits[b, tok] > 0 else logits[b, tok] * penalty
        nxt = np.argmax(logits, axis=-1)
        if eos is not None:
            nxt = np.where(done, eos, nxt)
            done |= nxt == eos
        buf[:, t] = nxt
    return buf


def test_repetition_penalty_matches_the_transformers_rule(tiny):
    model, params, prompt, full = tiny
    plain = np.asarray(generate.greedy(model, params, prompt, N))
    out = np.asarray(generate.greedy(model, params, prompt, N, repetition_penalty=1.8))
    np.testing.assert_array_equal(out, reference(full, np.asarray(prompt), 1.8))
    assert (out != plain).any()  # the penalty changed the greedy path
    # penalised generations repeat less
    distinct = lambda a: np.mean([len(set(r[P:].tolist())) for r in a])  # noqa: E731
    assert distinct(out) > distinct(plain)


def test_rows_stop_at_eos(tiny):
    model, params, prompt, full = tiny
    # with the penalty, so that the rows do not repeat one token (a random tiny model does)
    plain = np.asarray(generate.greedy(model, params, prompt, N, repetition_penalty=1.8))
    row = plain[0, P:].tolist()
    k = next(i for i in range(1, N) if row[i] not in row[:i])  # row 0's first new token after the start
    eos = row[k]
    out = np.asarray(generate.greedy(model, params, prompt, N, repetition_penalty=1.8, eos_ids=(eos,)))
    np.testing.assert_array_equal(out, reference(full, np.asarray(prompt), 1.8, eos=eos))
    assert (out[0, P + k:] == eos).all()
    assert generate.cut_at_eos(out[0, P:], (eos,)) == row[:k]
    sampled = np.asarray(generate.sample(model, params, prompt, N, jax.random.key(3), eos_ids=(eos,)))
    for row in sampled[:, P:]:
        hits = np.flatnonzero(row == eos)
        assert len(hits) == 0 or (row[hits[0]:] == eos).all()


def test_bad_penalty_is_refused(tiny):
    model, params, prompt, _ = tiny
    with pytest.raises(ValueError, match="repetition_penalty"):
        generate.greedy(model, params, prompt, 2, repetition_penalty=0.0)
