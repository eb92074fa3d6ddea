"""BitNet b1.58 against transformers fixtures (tests/fixtures/make_bitnet.py) in both released
layouts, packing the latent weights vs transformers' packing, import -> export round trips,
KV-cache decoding (latent and packed), the full-precision switch and the named sizes."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import generate
from jaxmodels.config import ConfigError
from jaxmodels.convert import from_hf
from jaxmodels.convert import bitnet as convert
from jaxmodels.convert.pretrained import flatten
from jaxmodels.convert.safetensors_io import SafetensorsFolder
from jaxmodels.models import build_model
from jaxmodels.models import bitnet

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "bitnet")
VARIANTS = ("master", "packed", "packed_tied")
TINY = dict(name="bitnet", vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_len=32)


def fixture(variant):
    return os.path.join(FIXTURES, variant)


def reference(variant):
    return dict(np.load(os.path.join(fixture(variant), "reference.npz")))


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def assert_same_params(a, b):
    fa, fb = flatten(a), flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


@pytest.fixture(scope="module")
def loaded():
    return {v: from_hf(fixture(v)) for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_greedy_match_transformers(loaded, variant):
    model, params = loaded[variant]
    assert model.cfg.packed == (variant != "master")
    ref = reference(variant)
    logits = model.apply({"params": params}, jnp.asarray(ref["tokens"]))
    assert logits.dtype == jnp.float32 and logits.shape == ref["logits"].shape
    assert rel_err(logits, ref["logits"]) < 1e-4
    new = ref["greedy"].shape[1] - ref["prompt"].shape[1]
    tokens = generate.greedy(model, params, jnp.asarray(ref["prompt"]), new)
    np.testing.assert_array_equal(np.asarray(tokens), ref["greedy"])


def test_fixtures_cover_the_architecture(loaded):
    cfgs = {v: loaded[v][0].cfg for v in VARIANTS}
    assert all(c.n_kv_heads < c.n_heads and c.hidden_act == "relu2" for c in cfgs.values())
    assert cfgs["packed_tied"].tie_embeddings and not cfgs["packed"].tie_embeddings
    _, params = loaded["packed"]
    q = params["layers"]["attn"]["q_proj"]
    assert q["packed"].dtype == jnp.uint8 and q["packed"].shape == (2, 32 // 4, 32)
    assert params["embed"].dtype == jnp.float32 and "kernel" in params["lm_head"]


def test_our_packing_equals_transformers_packing(loaded):
    """The fixture's packed file was quantised and packed by transformers from the master
    weights: pack_params on our import of the master gives the same bytes, and the scales
    up to the file's bf16 rounding."""
    model, params = loaded["master"]
    ours = convert.pack_params(model.cfg, params)
    _, theirs = loaded["packed"]
    for group, name in bitnet.PROJECTIONS:
        a, b = ours["layers"][group][name], theirs["layers"][group][name]
        np.testing.assert_array_equal(np.asarray(a["packed"]), np.asarray(b["packed"]))
        np.testing.assert_allclose(np.asarray(a["weight_scale"]), np.asarray(b["weight_scale"]), rtol=2 ** -8)
    # Packed inference from our packing = the latent model's forward (same math, f32 scale).
    ref = reference("master")
    packed_model = convert.packed_model(model)
    a = packed_model.apply({"params": ours}, jnp.asarray(ref["tokens"]))
    b = model.apply({"params": params}, jnp.asarray(ref["tokens"]))
    assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_import_export_round_trip(loaded, variant, tmp_path):
    model, params = loaded[variant]
    layout = "master" if variant == "master" else "packed"
    out = str(tmp_path / "export")
    convert.to_hf(model, params, out, layout=layout)
    model2, params2 = from_hf(out)
    assert model2.cfg == model.cfg
    assert_same_params(params, params2)
    # Same tensor names as the released layout, and bit-identical packed bytes.
    src, dst = SafetensorsFolder(fixture(variant)), SafetensorsFolder(out)
    assert sorted(src.keys()) == sorted(dst.keys())
    for name in src.keys():
        a, b = src.get(name, dtype=None), dst.get(name, dtype=None)
        if a.dtype == np.uint8 or variant == "master":
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_export_packed_from_latent_and_refuse_master_from_packed(loaded, tmp_path):
    model, params = loaded["master"]
    convert.to_hf(model, params, str(tmp_path / "p"), layout="packed")
    packed_model, packed_params = from_hf(str(tmp_path / "p"))
    ref = reference("master")
    logits = packed_model.apply({"params": packed_params}, jnp.asarray(ref["tokens"]))
    assert rel_err(logits, ref["logits"]) < 1e-4
    with pytest.raises(ConfigError, match="no latent weights"):
        convert.to_hf(packed_model, packed_params, str(tmp_path / "m"), layout="master")
    with pytest.raises(ConfigError, match="inference layout"):
        packed_model.trainable_mask(packed_params)


@pytest.mark.parametrize("packed", [False, True])
def test_kv_cache_decoding_equals_full_forward(packed):
    model = build_model(TINY)
    tokens = jax.random.randint(jax.random.key(0), (2, 10), 0, 64)
    params = jax.jit(model.init)(jax.random.key(1), tokens)["params"]
    if packed:
        params = convert.pack_params(model.cfg, params)
        model = convert.packed_model(model)

    @jax.jit
    def run(params):
        full = model.apply({"params": params}, tokens)
        state = model.init_decode_state(2, 16)
        a, state = model.apply({"params": params}, tokens[:, :6], decode_state=state, pos=jnp.int32(0))
        b, state = model.apply({"params": params}, tokens[:, 6:], decode_state=state, pos=jnp.int32(6))
        return full, a, b
    full, a, b = run(params)
    np.testing.assert_allclose(np.concatenate([a, b], 1), full, rtol=1e-5, atol=1e-5)


def test_latent_weights_train_and_full_precision_switch_differs():
    model = build_model(TINY)
    fp = build_model({**TINY, "quant": "none"})
    tokens = jax.random.randint(jax.random.key(0), (2, 10), 0, 64)
    params = jax.jit(model.init)(jax.random.key(1), tokens)["params"]
    assert params["layers"]["attn"]["q_proj"]["kernel"].dtype == jnp.float32
    loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, tokens))[..., 0])  # noqa: E731
    grads = jax.jit(jax.grad(loss))(params)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    bf16 = build_model({**TINY, "dtype": "bfloat16"})
    run = jax.jit(lambda p: (model.apply({"params": p}, tokens), fp.apply({"params": p}, tokens),
                             bf16.apply({"params": p}, tokens)))
    q, f, b = run(params)
    assert rel_err(f, q) > 1e-3 and rel_err(b, q) < 0.05


def test_named_sizes():
    counts = {name: bitnet.num_params(bitnet.Config(**s)) for name, s in bitnet.SIZES.items()}
    assert 0.33e9 < counts["350m"] < 0.35e9
    assert 0.70e9 < counts["700m"] < 0.80e9
    assert 1.2e9 < counts["1.3b"] < 1.4e9
    assert 3.3e9 < counts["3b"] < 3.4e9
    assert 2.40e9 < counts["2b-4t"] < 2.42e9  # 2.41B with the tied 128256 x 2560 embedding
    model = build_model({"name": "bitnet", "size": "2b-4t"})
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == counts["2b-4t"]
    with pytest.raises(ConfigError, match="relu2"):
        build_model({**TINY, "hidden_act": "gelu"})


def test_export_launcher_writes_a_packed_folder(tmp_path, capsys):
    from launch import export_bitnet

    out = str(tmp_path / "packed")
    assert export_bitnet.main(["--hf", fixture("master"), "--out", out]) == 0
    assert "(packed)" in capsys.readouterr().out
    model, params = from_hf(out)
    assert model.cfg.packed and params["layers"]["mlp"]["down_proj"]["packed"].dtype == jnp.uint8
    assert export_bitnet.main(["--hf", out, "--out", str(tmp_path / "m"), "--layout", "master"]) == 2


def test_generate_launcher_from_a_packed_hf_folder(capsys):
    """launch.generate --hf on the released layout (packed, tied; word-level tokenizer.json
    w0 .. w94, <unk>) continues the prompt exactly as transformers' greedy decoding did."""
    from launch import generate as launcher

    ref = reference("packed_tied")
    words = lambda ids: " ".join("<unk>" if i == 95 else f"w{i}" for i in ids)  # noqa: E731
    new = ref["greedy"].shape[1] - ref["prompt"].shape[1]
    assert launcher.main(["--hf", fixture("packed_tied"), "--prompt", words(ref["prompt"][0]), "--greedy",
                          "--max_new_tokens", str(new)]) == 0
    assert capsys.readouterr().out.split() == words(ref["greedy"][0]).split()


def test_bitlinear_class_scale_is_read_as_its_inverse(loaded, tmp_path):
    """transformers' "bitlinear" class stores weight_scale = 1 / mean|W| (it divides by it);
    "autobitlinear" stores mean|W| (it multiplies). The same model in either file gives the
    same params."""
    import json
    import shutil

    from safetensors.numpy import save_file

    out = str(tmp_path / "bitlinear_class")
    shutil.copytree(fixture("packed"), out)
    st = SafetensorsFolder(fixture("packed"))
    tensors = {k: st.get(k, dtype=None) for k in st.keys()}
    tensors = {k: (1.0 / v.astype(np.float32) if k.endswith("weight_scale") else v) for k, v in tensors.items()}
    save_file(tensors, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"]["linear_class"] = "bitlinear"
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f)
    _, params = from_hf(out)
    _, expected = loaded["packed"]
    for group, name in bitnet.PROJECTIONS:
        np.testing.assert_allclose(np.asarray(params["layers"][group][name]["weight_scale"]),
                                   np.asarray(expected["layers"][group][name]["weight_scale"]), rtol=1e-6)
