"""LLaMA family against transformers fixtures (tests/fixtures/make_llama.py), KV-cache decoding,
checkpoint layouts (bf16, sharded, old rope_scaling), export round trip and named sizes."""
from __future__ import annotations

import dataclasses
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import generate
from jaxmodels.convert import from_hf, read_hf_config
from jaxmodels.convert import llama as convert
from jaxmodels.convert.safetensors_io import SafetensorsFolder, save_folder
from jaxmodels.models import build_model
from jaxmodels.models import llama

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "llama")
VARIANTS = ("llama", "llama3", "mistral", "qwen2")


def fixture(variant):
    return os.path.join(FIXTURES, variant)


def reference(variant):
    return dict(np.load(os.path.join(fixture(variant), "reference.npz")))


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.fixture(scope="module")
def loaded():
    return {v: from_hf(fixture(v)) for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_greedy_match_transformers(loaded, variant):
    model, params = loaded[variant]
    ref = reference(variant)
    logits = model.apply({"params": params}, jnp.asarray(ref["tokens"]))
    chex.assert_shape(logits, ref["logits"].shape)
    assert logits.dtype == jnp.float32
    assert rel_err(logits, ref["logits"]) < 1e-4
    new = ref["greedy"].shape[1] - ref["prompt"].shape[1]
    tokens = generate.greedy(model, params, jnp.asarray(ref["prompt"]), new)
    np.testing.assert_array_equal(np.asarray(tokens), ref["greedy"])


def test_fixture_configs_exercise_the_variants(loaded):
    """The fixtures must cover what they claim (GQA, llama3 bands, window < length, biases)."""
    cfgs = {v: loaded[v][0].cfg for v in VARIANTS}
    assert all(c.n_kv_heads < c.n_heads for c in cfgs.values())
    assert cfgs["llama3"].rope_type == "llama3" and cfgs["llama3"].dh != cfgs["llama3"].dim // cfgs["llama3"].n_heads
    assert 0 < cfgs["mistral"].sliding_window < reference("mistral")["tokens"].shape[1]
    assert cfgs["qwen2"].qkv_bias and cfgs["qwen2"].tie_embeddings
    assert "bias" in loaded["qwen2"][1]["layers"]["attn"]["q_proj"]
    assert SafetensorsFolder(fixture("llama")).get("model.norm.weight", dtype=None).dtype.name == "bfloat16"


def test_kv_cache_decode_equals_full_forward(loaded):
    """Mistral: the sliding window must also hold across prefill + cached steps."""
    variant = "mistral"
    model, params = loaded[variant]
    tokens = jnp.asarray(reference(variant)["tokens"])
    B, T = tokens.shape
    full = model.apply({"params": params}, tokens)
    state = model.init_decode_state(B, T + 2)
    prefill, state = model.apply({"params": params}, tokens[:, :5], decode_state=state, pos=jnp.int32(0))
    steps = [prefill]
    step = jax.jit(lambda p, t, s, pos: model.apply({"params": p}, t, decode_state=s, pos=pos))
    for i in range(5, T):
        logits, state = step(params, tokens[:, i:i + 1], state, jnp.int32(i))
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)


def test_old_rope_scaling_layout_gives_same_config():
    new = read_hf_config(fixture("llama3"))
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    params = dict(new["rope_parameters"])
    old["rope_theta"] = params.pop("rope_theta")
    params["type"] = params.pop("rope_type")  # the oldest spelling
    old["rope_scaling"] = params
    assert convert.config_from_hf(old) == convert.config_from_hf(new)
    plain = dict(old, rope_scaling=None)
    assert convert.config_from_hf(plain)["rope_type"] == "default"


def test_llama3_rope_scaling_changes_only_low_frequencies():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0.5, "high_freq_factor": 2.0,
               "original_max_position_embeddings": 16}
    from jaxmodels.layers.rope import rope_inv_freq
    base, scaled = rope_inv_freq(16, 10000.0), rope_inv_freq(16, 10000.0, scaling)
    wavelen = 2 * np.pi / base
    np.testing.assert_allclose(scaled[wavelen < 8], base[wavelen < 8])
    np.testing.assert_allclose(scaled[wavelen > 32], base[wavelen > 32] / 8, rtol=1e-6)
    mid = (wavelen >= 8) & (wavelen <= 32)
    assert mid.any() and np.all(scaled[mid] < base[mid]) and np.all(scaled[mid] > base[mid] / 8)


def test_sharded_f32_folder_loads_the_same(loaded, tmp_path):
    st = SafetensorsFolder(fixture("llama"))
    tensors = {name: array for name, array in st.items()}  # bf16 -> f32
    save_folder(tensors, str(tmp_path), read_hf_config(fixture("llama")), max_shard_bytes=40_000)
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model, params = from_hf(str(tmp_path))
    chex.assert_trees_all_equal(params, loaded["llama"][1])


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
def test_export_round_trip(loaded, variant, tmp_path):
    """to_hf writes HF names/layout (checked with numpy against the fixture) and reloads."""
    model, params = loaded[variant]
    convert.to_hf(model, params, str(tmp_path), tokenizer_from=fixture(variant))
    ours, theirs = SafetensorsFolder(str(tmp_path)), SafetensorsFolder(fixture(variant))
    assert sorted(ours.keys()) == sorted(theirs.keys())
    for name in theirs.keys():
        np.testing.assert_array_equal(ours.get(name), theirs.get(name), err_msg=name)
    hf_in, hf_out = read_hf_config(fixture(variant)), read_hf_config(str(tmp_path))
    for key in ("model_type", "hidden_size", "num_key_value_heads", "intermediate_size", "tie_word_embeddings"):
        assert hf_out[key] == hf_in[key], key
    model2, params2 = from_hf(str(tmp_path))
    ref = reference(variant)
    np.testing.assert_array_equal(model2.apply({"params": params2}, jnp.asarray(ref["tokens"])),
                                  model.apply({"params": params}, jnp.asarray(ref["tokens"])))


def test_tokenizer_from_folder():
    tok = convert.load_tokenizer(fixture("llama"))
    assert tok.encode("w3 w17 w5").ids == [3, 17, 5]


def test_nf4_load_quantises_and_stays_close(loaded):
    model, params = convert.from_hf(fixture("llama"), read_hf_config(fixture("llama")), quant="nf4")
    q = params["layers"]["attn"]["q_proj"]["kernel_nf4"]
    assert q["nf4"].dtype == np.uint8 and q["scale_q"].dtype == np.int8
    dim, hd = model.cfg.dim, model.cfg.n_heads * model.cfg.dh
    chex.assert_shape(q["nf4"], (model.cfg.n_layers, dim * hd // 2))
    tokens = jnp.asarray(reference("llama")["tokens"])
    f32_model, f32_params = loaded["llama"]
    p_f32 = jax.nn.softmax(f32_model.apply({"params": f32_params}, tokens))
    p_nf4 = jax.nn.softmax(model.apply({"params": params}, tokens))
    tv = 0.5 * np.abs(np.asarray(p_f32 - p_nf4)).sum(-1)
    # 4-bit weights perturb the distribution but keep it close (random init, std 0.2).
    assert 0 < tv.mean() < 0.25, tv.mean()


def test_named_sizes_have_the_published_parameter_counts():
    expected = {"llama-2-7b": 6_738_415_616, "llama-3-8b": 8_030_261_248, "mistral-7b": 7_241_732_096,
                "tinyllama-1.1b": 1_100_048_384, "llama-3.2-1b": 1_235_814_400,
                "llama-3.2-3b": 3_212_749_824}
    for size, n in expected.items():
        assert llama.num_params(llama.Config(**llama.SIZES[size])) == n, size
    model = build_model({"name": "llama", "size": "stories15M"})
    shapes = convert.abstract_params(model)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == llama.num_params(model.cfg) == 15_191_712


def test_unknown_field_and_bad_target_raise():
    from jaxmodels.config import ConfigError
    with pytest.raises(ConfigError, match="valid"):
        build_model({"name": "llama", "size": "stories15M", "n_head": 4})
    with pytest.raises(ConfigError, match="lora_targets"):
        build_model({"name": "llama", "size": "stories15M", "lora_targets": ("qq",)})


def test_flops_per_token_counts_matmuls():
    model = build_model({"name": "llama", "size": "llama-2-7b"})
    n_matmul = llama.num_params(model.cfg) - model.cfg.vocab_size * model.cfg.dim
    assert model.flops_per_token(512) == pytest.approx(6 * n_matmul + 12 * 32 * 32 * 128 * 512, rel=1e-3)


def test_lora_tiny_config_trains_and_merges(tmp_path):
    """configs/llama_lora_tiny.py:smoke through the shared trainer: the response loss falls
    from ln(256) (fresh adapters on a near-uniform random base), then merge_lora writes an
    HF folder whose logits equal the adapted model's."""
    from jaxmodels.config import load_config
    from jaxmodels.train.checkpoint import load_params
    from jaxmodels.train.loop import train

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    cfg = load_config(os.path.join(root, "configs", "llama_lora_tiny.py") + ":smoke",
                      ["train.steps=20", "train.eval_every=20", "train.checkpoint_every=20", "train.log_every=10"])
    train(cfg, str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and losses[-1] < np.log(256) - 1.0, losses
    out = str(tmp_path / "merged")
    info = convert.merge_workdir(str(tmp_path / "run"), out)
    _, params = load_params(str(tmp_path / "run"))
    lora_model = build_model(cfg.model)
    merged_model, merged = from_hf(out)
    assert merged_model.cfg.lora_rank == 0 and "lora_a" not in json.dumps(jax.tree.map(lambda x: 0, merged))
    assert info["num_params"] == llama.num_params(merged_model.cfg)
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)), jnp.int32)
    a = lora_model.apply({"params": params}, toks)
    b = merged_model.apply({"params": merged}, toks)
    assert rel_err(b, a) < 1e-4


def test_init_from_hf_into_qlora_model_keeps_adapters_fresh():
    """What LMTask.load_init_from does for LLaMA: base weights read (and NF4-quantised) into
    the LoRA model's layout; the adapters keep their fresh values."""
    fields = convert.config_from_hf(read_hf_config(fixture("llama")))
    model = llama.Llama(llama.Config(**fields, lora_rank=4, quant="nf4", lora_targets=("q", "v", "down")))
    tokens = jnp.asarray(reference("llama")["tokens"])
    fresh = model.init(jax.random.key(0), tokens)["params"]
    loaded = model.load_pretrained(fresh, fixture("llama"))
    assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
    np.testing.assert_array_equal(loaded["layers"]["attn"]["q_proj"]["lora_a"], fresh["layers"]["attn"]["q_proj"]["lora_a"])
    _, nf4_params = convert.from_hf(fixture("llama"), read_hf_config(fixture("llama")), quant="nf4")
    chex.assert_trees_all_equal(loaded["layers"]["mlp"]["up_proj"], nf4_params["layers"]["mlp"]["up_proj"])
    chex.assert_trees_all_equal(loaded["embed"], nf4_params["embed"])
    # A model section that differs from the checkpoint in more than shapes is refused.
    from jaxmodels.config import ConfigError
    wrong = llama.Llama(dataclasses.replace(model.cfg, rope_theta=500000.0))
    with pytest.raises(ConfigError, match="rope_theta"):
        wrong.load_pretrained(fresh, fixture("llama"))


def test_7b_qlora_config_state_is_nf4_with_adapter_only_moments():
    """configs/llama2_7b_qlora.py on abstract shapes: NF4 base as uint8, Adam moments only
    for the adapters, params well under the 12 GB budget (launch.memory compiles the step
    on top of this: 7.9 GiB total measured)."""
    from jaxmodels.config import load_config
    from jaxmodels.tasks import build_task
    from jaxmodels.train.build import make_setup
    from jaxmodels.train.memory import tree_bytes

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    cfg = load_config(os.path.join(root, "configs", "llama2_7b_qlora.py"))
    setup = make_setup(build_task(cfg), cfg)
    params = setup.abstract_params
    q = params["layers"]["mlp"]["down_proj"]["kernel_nf4"]
    assert q["nf4"].dtype == jnp.uint8 and q["nf4"].shape == (32, 11008 * 4096 // 2)
    n_lora = sum(int(np.prod(x.shape)) for x, t in zip(jax.tree.leaves(params), jax.tree.leaves(setup.trainable)) if t)
    assert n_lora == 32 * 16 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    opt_bytes = tree_bytes(setup.abstract_state.opt_state)
    assert 2 * 4 * n_lora <= opt_bytes < 2 * 4 * n_lora + (1 << 20)
    assert tree_bytes(params) < 4.6 * 2 ** 30  # NF4 blocks + f32 embedding/head/norms + adapters


def test_bf16_compute_and_unrolled_layers(loaded):
    """dtype="bfloat16" (the GPU setting) stays close to the f32 reference; scan_layers=False
    (unrolled, same param layout) gives the same logits as the scan."""
    model, params = loaded["llama"]
    tokens = jnp.asarray(reference("llama")["tokens"])
    ref = reference("llama")["logits"]
    bf16 = llama.Llama(dataclasses.replace(model.cfg, dtype="bfloat16"))
    out = bf16.apply({"params": params}, tokens)
    assert out.dtype == jnp.float32 and rel_err(out, ref) < 3e-2
    unrolled = llama.Llama(dataclasses.replace(model.cfg, scan_layers=False, remat="nothing_saveable"))
    np.testing.assert_allclose(unrolled.apply({"params": params}, tokens), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
