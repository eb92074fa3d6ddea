"""The LM task: loss = masked token cross-entropy (checked against numpy), weights, dropout,
vocab resolution, FLOPs, sort evaluation, samples, init_from, and a loss that falls."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmodels.config import ConfigError, load_config
from jaxmodels.tasks import build_task
from jaxmodels.tasks import lm as lm_module
from jaxmodels.tasks.lm import token_cross_entropy


def smoke_config(tmp_path, spec="configs/gpt_shakespeare_char.py:smoke", *overrides):
    return load_config(spec, [f"data.cache_dir={tmp_path}/cache", "data.max_bytes=40000",
                              "data.num_threads=1", *overrides])


@pytest.fixture(scope="module")
def text_task(tmp_path_factory):
    cfg = smoke_config(tmp_path_factory.mktemp("lm"))
    task = build_task(cfg)
    params = jax.jit(task.init_params)(jax.random.key(0))
    batch = next(iter(task.dataset("train", 4, seed=0)))
    return task, params, batch


def numpy_cross_entropy(logits, targets, mask):
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return (nll * mask).sum() / mask.sum()


def test_loss_equals_numpy_cross_entropy(text_task):
    task, params, batch = text_task
    mask = np.zeros_like(batch["mask"])
    mask[:, ::3] = 1.0  # a partial mask: only these targets count
    masked = dict(batch, mask=mask)
    logits, (loss, aux) = jax.jit(lambda p, b: (task.model.apply({"params": p}, b["inputs"]),
                                                task.loss(p, b, jax.random.key(1), train=False)))(params, masked)
    np.testing.assert_allclose(loss, numpy_cross_entropy(logits, batch["targets"], mask), rtol=1e-5)
    assert float(aux["weight"]) == mask.sum()
    correct = (np.argmax(np.asarray(logits), -1) == batch["targets"]) * mask
    np.testing.assert_allclose(aux["accuracy"], correct.sum() / mask.sum(), rtol=1e-6)


def test_weights_make_micro_batches_add_up_to_the_batch():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(4, 6, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, size=(4, 6)), jnp.int32)
    mask = jnp.asarray(rng.random((4, 6)) < 0.5, jnp.float32)
    ce = jax.jit(token_cross_entropy)
    full, full_aux = ce(logits, targets, mask)
    # Two "micro-batches" (rows 0 and 1-3), as masks of the same shape: one compile.
    rows = jnp.arange(4)[:, None]
    parts = [ce(logits, targets, mask * (rows == 0)), ce(logits, targets, mask * (rows > 0))]
    weights = [float(a["weight"]) for _, a in parts]
    assert sum(weights) == float(full_aux["weight"]) == float(mask.sum())
    assert min(weights) > 0
    combined = sum(w * float(l) for w, (l, _) in zip(weights, parts)) / sum(weights)
    np.testing.assert_allclose(combined, full, rtol=1e-6)
    # An all-zero mask gives weight 0 and a finite loss (no 0/0).
    zero_loss, zero_aux = ce(logits, targets, jnp.zeros_like(mask))
    assert float(zero_aux["weight"]) == 0 and np.isfinite(zero_loss)
    # bf16 logits are upcast: the loss is computed in f32.
    loss_bf16, _ = jax.eval_shape(token_cross_entropy, logits.astype(jnp.bfloat16), targets, mask)
    assert loss_bf16.dtype == jnp.float32


def test_abstract_batch_matches_real_batches(text_task):
    task, _, batch = text_task
    abstract = task.abstract_batch(4)
    assert set(abstract) == set(batch)
    for key, spec in abstract.items():
        assert spec.shape == batch[key].shape and spec.dtype == batch[key].dtype, key
    assert task.units_per_example() == 32 and task.unit == "tokens"


def test_dropout_uses_the_rng_only_when_training(text_task, tmp_path):
    _, params, batch = text_task
    cfg = smoke_config(tmp_path, "configs/gpt_shakespeare_char.py:smoke", "model.dropout=0.3")
    task = build_task(cfg)  # same params as the fixture's model, now with dropout
    rngs = jnp.stack([jax.random.key_data(jax.random.key(i)) for i in (1, 2)])

    @jax.jit
    def losses(params, batch):
        keys = jax.vmap(jax.random.wrap_key_data)(rngs)
        train = [task.loss(params, batch, keys[i], train=True)[0] for i in range(2)]
        evals = [task.loss(params, batch, keys[i], train=False)[0] for i in range(2)]
        return jnp.stack(train), jnp.stack(evals)

    (l1, l2), (e1, e2) = losses(params, batch)
    assert float(l1) != float(l2)
    assert float(e1) == float(e2)
    assert float(e1) != float(l1)


def test_vocab_size_zero_means_the_tokenizers_and_too_small_raises(tmp_path):
    task = build_task(smoke_config(tmp_path, "configs/gpt_shakespeare_char.py:smoke", "model.vocab_size=0"))
    assert task.model.cfg.vocab_size == 256  # byte tokenizer
    small = build_task(smoke_config(tmp_path, "configs/gpt_shakespeare_char.py:smoke", "model.vocab_size=100"))
    with pytest.raises(ConfigError, match="model.vocab_size=256"):
        small.dataset("train", 2, seed=0)


def test_flops_per_example_uses_the_models_formula(text_task):
    task, params, _ = text_task
    assert task.flops_per_example() == task.model.flops_per_token(32) * 32
    n = sum(x.size for x in jax.tree.leaves(params))
    assert task.num_params() == n


def test_sort_exact_match_counts_whole_sequences(tmp_path, monkeypatch):
    task = build_task(load_config("configs/mingpt_sort.py:smoke"))
    seen = {}

    def fake_greedy(model, params, prompt, n_new):
        prompt = np.asarray(prompt)
        seen["prompt"] = prompt
        answer = np.sort(prompt, axis=1)
        answer[::4, 0] = (answer[::4, 0] + 1) % 3  # every 4th answer wrong in one digit
        return np.concatenate([prompt, answer], axis=1)

    import jaxmodels.generate
    monkeypatch.setattr(jaxmodels.generate, "greedy", fake_greedy)
    acc = task.sort_exact_match(params=None, num_examples=40)
    assert acc == pytest.approx(30 / 40)
    from jaxmodels.data.sort import is_val_sequence
    assert seen["prompt"].shape == (40, 6) and all(is_val_sequence(p) for p in seen["prompt"])


def test_sort_evaluation_with_the_real_decoder(tmp_path):
    task = build_task(load_config("configs/mingpt_sort.py:smoke"))
    params = task.init_params(jax.random.key(0))
    metrics = task.evaluate(params, step=0, workdir=str(tmp_path))
    acc = metrics["sort_exact_match"]
    # A fresh model's greedy answers, checked by hand.
    from jaxmodels.data.sort import SortSource
    from jaxmodels.generate import greedy
    src = SortSource("val", seed=12345, num_examples=64)
    prompts = np.stack([src.digits(i) for i in range(64)]).astype(np.int32)
    out = np.asarray(greedy(task.model, params, prompts, 6))
    assert acc == np.mean(np.all(out[:, 6:] == np.sort(prompts, 1), axis=1))


def test_sort_loss_falls_with_a_few_adam_steps():
    task = build_task(load_config("configs/mingpt_sort.py:smoke", ["model.dropout=0.0"]))
    params = task.init_params(jax.random.key(0))
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        (loss, aux), grads = jax.value_and_grad(lambda p: task.loss(p, batch, jax.random.key(0)),
                                                has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    it = iter(task.dataset("train", 32, seed=0))
    losses = []
    for _ in range(60):
        params, opt_state, loss = step(params, opt_state, next(it))
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:5])


def test_text_evaluation_appends_a_decoded_sample(text_task, tmp_path):
    task, params, _ = text_task
    assert task.evaluate(params, step=7, workdir=str(tmp_path)) == {}
    task.evaluate(params, step=8, workdir=str(tmp_path))
    content = (tmp_path / "samples.txt").read_text()
    assert content.count("=== step 7 ===") == 1 and "=== step 8 ===" in content
    prompt = task.tokenizer.decode(np.asarray(task._splits["val"][:8]))
    assert content.split("=== step 7 ===\n")[1].startswith(prompt + "[->]")


def test_load_init_from_restores_saved_params(text_task, tmp_path):
    from jaxmodels.convert.pretrained import save_pretrained
    task, params, _ = text_task
    saved = jax.tree.map(lambda x: x + 1.0, params)
    save_pretrained(task.cfg.model, saved, str(tmp_path / "pre"))
    loaded = task.load_init_from(params, str(tmp_path / "pre"))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), loaded, saved)


def test_merge_pretrained_keeps_fresh_adapters_and_rejects_shape_mismatch():
    fresh = {"dense": {"kernel": jnp.zeros((2, 3))}, "lora_a": jnp.ones((3,))}
    loaded = {"dense": {"kernel": jnp.full((2, 3), 5.0)}}
    merged = lm_module.merge_pretrained(fresh, loaded)
    assert float(merged["dense"]["kernel"][0, 0]) == 5.0 and float(merged["lora_a"][0]) == 1.0
    with pytest.raises(ConfigError, match="dense"):
        lm_module.merge_pretrained(fresh, {"dense": {"kernel": jnp.zeros((3, 3))}})


def test_configs_and_variants():
    for spec in ["configs/gpt_shakespeare_char.py", "configs/gpt_shakespeare_char.py:baby",
                 "configs/gpt_shakespeare_char.py:embedded", "configs/mingpt_sort.py",
                 "configs/gpt2_124m.py"]:
        cfg = load_config(spec)
        assert cfg.task.name == "lm" and cfg.model.name == "gpt"
    c = load_config("configs/gpt_shakespeare_char.py")
    assert (c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.block_size) == (6, 6, 384, 256)
    assert (c.train.batch_size, c.optim.b2, c.model.dropout, c.model.bias) == (64, 0.99, 0.2, False)
    g = load_config("configs/gpt2_124m.py")
    assert g.train.batch_size * g.data.seq_len == 524288 and g.train.batch_size % g.train.micro_batches == 0
    assert load_config("configs/mingpt_sort.py", ["model.n_layer=4"]).model.n_layer == 4
    for name in ("gpt_shakespeare_char", "gpt2_124m", "mingpt_sort"):
        with pytest.raises(ConfigError, match="valid: .*smoke"):
            load_config(f"configs/{name}.py:nope")
    with pytest.raises(ConfigError, match="seq_len=64 exceeds model.block_size=32"):
        build_task(load_config("configs/gpt_shakespeare_char.py:smoke", ["data.seq_len=64"]))
    with pytest.raises(FileNotFoundError, match="char-rnn"):
        build_task(load_config("configs/gpt_shakespeare_char.py", ["data.path=/nonexistent/x.txt"])).tokenizer
