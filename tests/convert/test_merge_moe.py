"""Frankenstein MoE: experts' FFNs come from their sources, `hidden` gates route each
expert's positive prompts to that expert, the output folder loads back (Mixtral layout)."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.convert import from_hf, read_hf_config
from jaxmodels.convert import llama as convert
from jaxmodels.convert.merge_moe import merge, read_merge_config, router_inputs
from jaxmodels.layers.moe import route
from jaxmodels.models import build_model

TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "fixtures", "llama", "llama")
TINY = dict(name="llama", vocab_size=128, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_len=64)
PROMPTS = [  # three "domains": disjoint word ranges
    ["w1 w2 w3 w4 w5", "w3 w1 w4 w2", "w5 w5 w2 w1"],
    ["w40 w41 w42 w43", "w44 w40 w42", "w41 w43 w44 w40 w42"],
    ["w90 w91 w92", "w93 w94 w90 w91", "w92 w94 w93"],
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    model = build_model(TINY)
    paths = []
    for seed in range(4):  # base + 3 sources of the same architecture
        params = model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]
        path = str(root / f"m{seed}")
        convert.to_hf(model, params, path, tokenizer_from=TOKENIZER)
        paths.append(path)
    return root, paths


def write_yaml(root, paths, mode):
    lines = [f"base_model: {paths[0]}", f"gate_mode: {mode}", "experts_per_token: 2", "experts:"]
    for i, src in enumerate(paths[1:]):
        others = [p for j, ps in enumerate(PROMPTS) if j != i for p in ps]
        lines += [f"  - source_model: {src}", f"    positive_prompts: {PROMPTS[i]}",
                  f"    negative_prompts: {others}"]
    path = os.path.join(root, f"merge_{mode}.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_hidden_gates_route_positive_prompts_to_their_expert(folders):
    root, paths = folders
    spec = read_merge_config(write_yaml(root, paths, "hidden"))
    model, params = merge(spec)
    base_model, base = from_hf(paths[0])
    tokenizer = convert.load_tokenizer(spec["tokenizer"])
    hits, total = 0, 0
    for e, prompts in enumerate(PROMPTS):
        h = np.concatenate([router_inputs(base_model, jax.tree.map(np.asarray, base),
                                          np.asarray(tokenizer.encode(p).ids)) for p in prompts], axis=1)
        for layer in range(2):
            logits = h[layer] @ params["layers"]["moe"]["router"][layer]
            _, experts, probs = route(jnp.asarray(logits), 2, True)
            # over all of its positive prompts' tokens, expert e gets the most router mass...
            assert int(np.argmax(np.asarray(probs).mean(axis=0))) == e, (e, layer)
            hits += int(np.sum(np.asarray(experts)[:, 0] == e))
            total += logits.shape[0]
    # ...and most tokens pick their own expert first (chance: 1/3)
    print("top-1 share of positive-prompt tokens on their own expert:", hits / total)
    assert hits / total > 0.75
    # experts are the sources' FFNs; attention and embeddings the base's
    for e in range(3):
        _, src = from_hf(paths[e + 1])
        np.testing.assert_array_equal(params["layers"]["moe"]["up_proj"][:, e], src["layers"]["mlp"]["up_proj"]["kernel"])
    np.testing.assert_array_equal(params["layers"]["attn"]["q_proj"]["kernel"], base["layers"]["attn"]["q_proj"]["kernel"])


@pytest.mark.parametrize("mode", ["random", "cheap_embed"])
def test_folder_is_mixtral_and_loads_back(folders, tmp_path, mode):
    from jaxmodels.convert.merge_moe import merge_to_folder

    root, paths = folders
    merge_to_folder(write_yaml(root, paths, mode), str(tmp_path / "out"))
    hf = read_hf_config(str(tmp_path / "out"))
    assert hf["model_type"] == "mixtral" and hf["num_local_experts"] == 3 and hf["num_experts_per_tok"] == 2
    assert os.path.isfile(tmp_path / "out" / "tokenizer.json")
    model, params = from_hf(str(tmp_path / "out"))
    router = params["layers"]["moe"]["router"]
    if mode == "cheap_embed":
        np.testing.assert_array_equal(router[0], router[1])  # the same at every layer
    logits = model.apply({"params": params}, jnp.arange(8, dtype=jnp.int32)[None])
    assert np.isfinite(np.asarray(logits)).all()
