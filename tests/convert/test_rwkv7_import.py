"""RWKV-7 import from the Hugging Face `rwkv7` layout: our logits equal an independent numpy
RNN written from RWKV-LM's x070 recurrence (tests/fixtures/make_rwkv7.py), in both WKV forms
and token by token with the decode state."""
import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.convert import from_hf
from jaxmodels.models import rwkv7

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "rwkv7")


@pytest.fixture(scope="module")
def imported():
    return from_hf(FIXTURE), np.load(os.path.join(FIXTURE, "reference.npz"))


@pytest.mark.parametrize("wkv_mode", ["chunked", "recurrent"])
def test_logits_match_the_numpy_reference(imported, wkv_mode):
    (model, params), ref = imported
    assert model.cfg.n_layer == 3 and model.cfg.head_size == 8 and model.cfg.lora("gate") == 16
    m = rwkv7.RWKV7(dataclasses.replace(model.cfg, wkv_mode=wkv_mode, chunk_size=8))
    logits = jax.jit(m.apply)({"params": params}, jnp.asarray(ref["tokens"]))
    scale = np.abs(ref["logits"]).max()
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=2e-5 * scale)


def test_decoding_with_the_state_matches_the_reference(imported):
    (model, params), ref = imported
    decode = jax.jit(lambda p, x, s: model.apply({"params": p}, x, decode_state=s, pos=jnp.int32(0)))
    state = model.init_decode_state(2)
    tokens = jnp.asarray(ref["tokens"])
    first, state = decode(params, tokens[:, :7], state)
    rest, _ = decode(params, tokens[:, 7:], state)
    np.testing.assert_allclose(np.concatenate([first, rest], 1), ref["logits"], rtol=0,
                               atol=2e-5 * np.abs(ref["logits"]).max())


def test_hybrid_attention_checkpoints_are_refused(tmp_path):
    shutil.copy(os.path.join(FIXTURE, "model.safetensors"), tmp_path / "model.safetensors")
    with open(os.path.join(FIXTURE, "config.json")) as f:
        config = json.load(f)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(dict(config, attn={"layers": [1]}), f)
    with pytest.raises(ConfigError, match="attention layers"):
        from_hf(str(tmp_path))
