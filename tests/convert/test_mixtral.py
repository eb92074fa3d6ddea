"""Mixtral against transformers (tests/fixtures/make_mixtral.py): logits, routing, greedy
decoding, both dispatch paths, and the export -> import round trip."""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import generate
from jaxmodels.convert import from_hf, read_hf_config
from jaxmodels.convert import llama as convert
from jaxmodels.convert.safetensors_io import SafetensorsFolder
from jaxmodels.layers.moe import route

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mixtral")


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.fixture(scope="module")
def loaded():
    return from_hf(FIXTURE)


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(FIXTURE, "reference.npz")))


def test_config_and_router_weights_map(loaded, ref):
    model, params = loaded
    cfg = model.cfg
    assert (cfg.moe_experts, cfg.moe_top_k, cfg.moe_every, cfg.moe_router) == (4, 2, 1, "mixtral")
    assert cfg.moe_aux_weight == pytest.approx(0.04) and cfg.moe_z_weight == 0.0
    assert params["layers"]["moe"]["gate_proj"].shape == (2, 4, 32, 48)
    # the fixture's routing is not degenerate: tokens use different top-2 pairs
    _, experts, _ = route(jnp.asarray(ref["router_logits"][0]), 2, True)
    assert len({tuple(sorted(p)) for p in np.asarray(experts).tolist()}) >= 3


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_logits_and_greedy_match_transformers(loaded, ref, dispatch):
    model, params = loaded
    # capacity_factor = E / k: room for every token, so nothing is dropped
    model = model.clone(cfg=dataclasses.replace(model.cfg, moe_dispatch=dispatch, moe_capacity_factor=2.0))
    logits, state = model.apply({"params": params}, jnp.asarray(ref["tokens"]), mutable=["moe"])
    assert rel_err(logits, ref["logits"]) < 1e-4
    assert float(np.max(state["moe"]["layers"]["moe"]["dropped"][0])) == 0.0
    new = ref["greedy"].shape[1] - ref["prompt"].shape[1]
    tokens = generate.greedy(model, params, jnp.asarray(ref["prompt"]), new)
    np.testing.assert_array_equal(np.asarray(tokens), ref["greedy"])


def test_export_round_trip_is_bit_exact(loaded, ref, tmp_path):
    model, params = loaded
    convert.to_hf(model, params, str(tmp_path))
    ours, theirs = SafetensorsFolder(str(tmp_path)), SafetensorsFolder(FIXTURE)
    assert sorted(ours.keys()) == sorted(theirs.keys())
    for name in theirs.keys():
        np.testing.assert_array_equal(ours.get(name), theirs.get(name), err_msg=name)
    hf_in, hf_out = read_hf_config(FIXTURE), read_hf_config(str(tmp_path))
    for key in ("model_type", "architectures", "num_local_experts", "num_experts_per_tok",
                "intermediate_size", "sliding_window", "router_aux_loss_coef"):
        assert hf_out[key] == hf_in[key], key
    model2, params2 = from_hf(str(tmp_path))
    assert model2.cfg == model.cfg
    for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    tokens = jnp.asarray(ref["tokens"])
    np.testing.assert_array_equal(model2.apply({"params": params2}, tokens), model.apply({"params": params}, tokens))


def test_nf4_experts_load_quantised_and_stay_close(loaded, ref):
    from jaxmodels.layers import quant

    f32_model, f32_params = loaded
    model, params = convert.from_hf(FIXTURE, read_hf_config(FIXTURE), quant="nf4")
    q = params["layers"]["moe"]["down_proj"]["kernel_nf4"]
    assert q["nf4"].dtype == np.uint8 and q["nf4"].shape == (2, 4 * 48 * 32 // 2)
    w = np.asarray(f32_params["layers"]["moe"]["down_proj"][1])
    d = np.asarray(quant.nf4_dequantize(jax.tree.map(lambda a: a[1], q), w.shape, jnp.float32))
    assert np.abs(d - w).max() < 0.15 * np.abs(w).max()
    tokens = jnp.asarray(ref["tokens"])
    p_f32 = jax.nn.softmax(f32_model.apply({"params": f32_params}, tokens))
    p_nf4 = jax.nn.softmax(model.apply({"params": params}, tokens))
    tv = 0.5 * np.abs(np.asarray(p_f32 - p_nf4)).sum(-1)
    assert 0 < tv.mean() < 0.25, tv.mean()
