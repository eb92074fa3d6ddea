"""RWKV-4 as in RWKV-LM (v4neo) and Hugging Face `RwkvForCausalLM`.

emb -> ln0 -> blocks -> ln_out -> head (untied). Block (pre-LN, residual in f32):
  time mixing:    xs = token_shift(ln1(x)); k, v, r from x·mix + xs·(1-mix) (per channel);
                  out = output(sigmoid(r) ⊙ WKV(w, u, k, v)),  w = -exp(time_decay),
                  u = time_first; WKV runs through jaxmodels.scan.wkv_log_scan (running max).
  channel mixing: xs = token_shift(ln2(x)); k = relu(key(xk))², out = sigmoid(receptance(xr))
                  ⊙ value(k).
HF's `rescale_every` (halving activations every few layers in fp16 inference) is a no-op in
exact arithmetic and is not used.

Init (RWKV-LM generate_init_weight): embedding U(±emb_init); att.key/receptance/output,
ffn.receptance/value zeros; att.value, ffn.key orthogonal with gain sqrt(out/in) when
out > in; head orthogonal with gain 0.5·sqrt(V/D); time_decay = -5 + 8(h/(C-1))^(0.7+1.3ρ),
time_first = log 0.3 + zigzag, time_mix = (i/C)^(1-l/L) (+ 0.3ρ for v, half power for r),
with ρ = l/(L-1) and l the layer index.

Params (f32): emb [V, D], ln0, ln_out, head [V, D] and blocks/{ln1, ln2, att/{time_decay,
time_first, time_mix_k, time_mix_v, time_mix_r, key, value, receptance, output},
ffn/{time_mix_k, time_mix_r, key, receptance, value}} with a leading [n_layer] axis.
Decode state per layer: att_x, ffn_x (the previous LN'd inputs) and the WKV state
num, den, max ([L, B, C] each) — independent of the sequence length.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels import scan
from jaxmodels.config import check_choice
from jaxmodels.layers import adapters
from jaxmodels.layers.dense import Dense
from jaxmodels.layers.lm_head import lm_head
from jaxmodels.layers.norms import LayerNorm
from jaxmodels.layers.stack import REMAT_POLICIES, scan_blocks
from jaxmodels.layers.token_shift import lerp, token_shift

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 50277
    d_model: int = 768
    n_layer: int = 12
    d_att: int = 0                  # 0: d_model (HF attention_hidden_size)
    d_ffn: int = 0                  # 0: 4 * d_model (HF intermediate_size)
    norm_eps: float = 1e-5
    emb_init: float = 1e-4          # embedding U(±emb_init) (RWKV-LM uses lr_init)
    dtype: str = "float32"          # compute dtype: "float32" | "bfloat16"
    remat: str = "none"             # jaxmodels.layers.stack.REMAT_POLICIES
    scan_mode: str = "auto"         # jaxmodels.scan.MODES
    scan_chunk: int = 64
    adapters: Any = None          # LoRA / QLoRA / state tuning (jaxmodels.layers.adapters)

    def __post_init__(self):
        check_choice("rwkv4", "dtype", self.dtype, DTYPES)
        check_choice("rwkv4", "remat", self.remat, REMAT_POLICIES)
        check_choice("rwkv4", "scan_mode", self.scan_mode, scan.MODES)

    @property
    def att_dim(self) -> int:
        return self.d_att or self.d_model

    @property
    def ffn_dim(self) -> int:
        return self.d_ffn or 4 * self.d_model

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


SIZES: dict[str, dict[str, Any]] = {
    # BlinkDL/rwkv-4-pile-* (HF RWKV/rwkv-4-*-pile), GPT-NeoX tokenizer.
    "169m": dict(d_model=768, n_layer=12),
    "430m": dict(d_model=1024, n_layer=24),
    "1.5b": dict(d_model=2048, n_layer=24),
    "3b": dict(d_model=2560, n_layer=32),
    "7b": dict(d_model=4096, n_layer=32),
}


def build(cfg: Mapping[str, Any]) -> "RWKV4":
    """The RWKV-4 module for a config's `model` section (optional `size` + field overrides)."""
    from jaxmodels.models import sized_config

    return RWKV4(sized_config(Config, SIZES, cfg, "rwkv4"))


def num_params(cfg: Config) -> int:
    D, A, F, V = cfg.d_model, cfg.att_dim, cfg.ffn_dim, cfg.vocab_size
    att = 2 * A + 3 * D + 3 * D * A + A * D
    ffn = 2 * D + D * F + D * D + F * D
    return 2 * V * D + 4 * D + cfg.n_layer * (4 * D + att + ffn)


def orthogonal(gain: float):
    """Orthogonal init for a flax kernel [in, out] (gain as in torch's [out, in] rule)."""
    return nn.initializers.orthogonal(scale=gain)


def _gain(fan_in: int, fan_out: int) -> float:
    return math.sqrt(fan_out / fan_in) if fan_out > fan_in else 1.0


def _time_weight(C: int, layer_id: jax.Array, n_layer: int, kind: str) -> jax.Array:
    """RWKV-LM's layer-dependent init of the time_* parameters (layer_id may be traced)."""
    l = layer_id.astype(jnp.float32)
    ratio_0_to_1 = l / max(n_layer - 1, 1)
    ratio_1_to_almost0 = 1.0 - l / n_layer
    i = jnp.arange(C, dtype=jnp.float32)
    ddd = i / C
    if kind == "decay":
        return -5 + 8 * (i / max(C - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1)
    if kind == "first":
        zigzag = 0.5 * (((i + 1) % 3) - 1)
        return math.log(0.3) + zigzag
    if kind == "mix_k":
        return ddd ** ratio_1_to_almost0
    if kind == "mix_v":
        return ddd ** ratio_1_to_almost0 + 0.3 * ratio_0_to_1
    if kind == "mix_r":
        return ddd ** (0.5 * ratio_1_to_almost0)
    raise ValueError(kind)


class TimeMix(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BTD: jax.Array, layer_id: jax.Array, state: Optional[dict]):
        cfg = self.cfg
        D, A, L = cfg.d_model, cfg.att_dim, cfg.n_layer
        dtype = cfg.compute_dtype

        def time_param(name, kind, size):
            return self.param(name, lambda _key, shape: _time_weight(shape[0], layer_id, L, kind), (size,))

        decay_A = time_param("time_decay", "decay", A)
        first_A = time_param("time_first", "first", A)
        mix_k, mix_v, mix_r = (time_param(f"time_mix_{n}", f"mix_{n}", D) for n in "kvr")
        shifted_BTD, last_BD = token_shift(x_BTD, None if state is None else state["att_x"])

        def dense(features, name, init):
            return Dense(features, use_bias=False, dtype=dtype, kernel_init=init, name=name)

        zeros = nn.initializers.zeros
        k_BTA = dense(A, "key", zeros)(lerp(x_BTD, shifted_BTD, mix_k))
        v_BTA = dense(A, "value", orthogonal(_gain(D, A)))(lerp(x_BTD, shifted_BTD, mix_v))
        r_BTA = jax.nn.sigmoid(dense(A, "receptance", zeros)(lerp(x_BTD, shifted_BTD, mix_r)))
        wkv_state = None if state is None else (state["num"], state["den"], state["max"])
        wkv_BTA, (num, den, mx) = scan.wkv_log_scan(-jnp.exp(decay_A), first_A, k_BTA, v_BTA, wkv_state,
                                                    mode=cfg.scan_mode, chunk=cfg.scan_chunk)
        out_BTD = dense(D, "output", zeros)((r_BTA.astype(jnp.float32) * wkv_BTA).astype(dtype))
        new_state = None
        if state is not None:
            new_state = {"att_x": last_BD.astype(state["att_x"].dtype), "num": num, "den": den, "max": mx}
        return out_BTD, new_state


class ChannelMix(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BTD: jax.Array, layer_id: jax.Array, state: Optional[dict]):
        cfg = self.cfg
        D, F, L = cfg.d_model, cfg.ffn_dim, cfg.n_layer
        dtype = cfg.compute_dtype
        mix_k, mix_r = (self.param(f"time_mix_{n}", lambda _k, s: _time_weight(s[0], layer_id, L, "mix_k"),
                                   (D,)) for n in "kr")
        shifted_BTD, last_BD = token_shift(x_BTD, None if state is None else state["ffn_x"])
        k_BTF = Dense(F, use_bias=False, dtype=dtype, kernel_init=orthogonal(_gain(D, F)),
                      name="key")(lerp(x_BTD, shifted_BTD, mix_k))
        k_BTF = jnp.square(jax.nn.relu(k_BTF))
        kv_BTD = Dense(D, use_bias=False, dtype=dtype, kernel_init=nn.initializers.zeros,
                       name="value")(k_BTF)
        r_BTD = jax.nn.sigmoid(Dense(D, use_bias=False, dtype=dtype, kernel_init=nn.initializers.zeros,
                                     name="receptance")(lerp(x_BTD, shifted_BTD, mix_r)))
        new_state = None if state is None else {"ffn_x": last_BD.astype(state["ffn_x"].dtype)}
        return r_BTD * kv_BTD, new_state


class Block(nn.Module):
    """x + att(ln1(x)), x + ffn(ln2(x)); `(x, layer_id, state) -> (x, new state)` for nn.scan."""
    cfg: Config

    @nn.compact
    def __call__(self, x_BTD: jax.Array, layer_id: jax.Array, state: Optional[dict] = None):
        cfg = self.cfg
        dtype = cfg.compute_dtype
        h_BTD = LayerNorm(eps=cfg.norm_eps, dtype=dtype, name="ln1")(x_BTD)
        h_BTD, att_state = TimeMix(cfg, name="att")(h_BTD, layer_id, state)
        x_BTD = x_BTD + h_BTD.astype(jnp.float32)
        h_BTD = LayerNorm(eps=cfg.norm_eps, dtype=dtype, name="ln2")(x_BTD)
        h_BTD, ffn_state = ChannelMix(cfg, name="ffn")(h_BTD, layer_id, state)
        x_BTD = x_BTD + h_BTD.astype(jnp.float32)
        return x_BTD, (None if state is None else {**att_state, **ffn_state})


class RWKV4(nn.Module):
    """RWKV-4 causal LM following the contract in jaxmodels/models/__init__.py."""
    cfg: Config

    @adapters.scoped
    @nn.compact
    def __call__(self, tokens_BT: jax.Array, train: bool = False,
                 decode_state: Optional[dict] = None, pos: Optional[jax.Array] = None,
                 head_input: bool = False):
        """tokens_BT int32 -> logits_BTV f32; with decode_state -> (logits, new_state).

        `pos` is unused: RWKV has no positions, the state carries everything.
        """
        cfg = self.cfg
        V, D, L = cfg.vocab_size, cfg.d_model, cfg.n_layer
        dtype = cfg.compute_dtype
        emb_init = lambda k, s: jax.random.uniform(k, s, jnp.float32, -cfg.emb_init, cfg.emb_init)
        emb_VD = self.param("emb", emb_init, (V, D))
        x_BTD = jnp.take(emb_VD, tokens_BT, axis=0)
        x_BTD = LayerNorm(eps=cfg.norm_eps, dtype=jnp.float32, name="ln0")(x_BTD)
        layer_ids = jnp.arange(L, dtype=jnp.int32)
        if decode_state is None:
            blocks = scan_blocks(Block, L, cfg.remat, in_axes=(0,), name="blocks", cfg=cfg)
            x_BTD, _ = blocks(x_BTD, layer_ids)
        else:
            blocks = scan_blocks(Block, L, cfg.remat if train else "none", in_axes=(0, 0), name="blocks", cfg=cfg)
            x_BTD, decode_state = blocks(x_BTD, layer_ids, decode_state)
        x_BTD = LayerNorm(eps=cfg.norm_eps, dtype=dtype, name="ln_out")(x_BTD)
        head_VD = self.param("head", orthogonal(0.5 * _gain(D, V)), (V, D), jnp.float32)
        logits_BTV = lm_head(x_BTD, head_VD, dtype, head_input=head_input)
        if decode_state is None:
            return logits_BTV
        return logits_BTV, decode_state

    @nn.nowrap
    def init_decode_state(self, batch: int, max_len: int = 0, dtype=None) -> dict:
        """Empty state, [n_layer, batch, C] each: att_x, ffn_x (dtype) and num, den, max (f32).

        max_len is accepted for the shared contract and ignored: the state does not grow.
        """
        cfg = self.cfg
        L, D, A = cfg.n_layer, cfg.d_model, cfg.att_dim
        num, den, mx = scan.wkv_init_state(batch, A)
        x = jnp.zeros((L, batch, D), dtype or cfg.compute_dtype)
        stack = lambda a: jnp.broadcast_to(a, (L,) + a.shape)
        return {"att_x": x, "ffn_x": x, "num": stack(num), "den": stack(den), "max": stack(mx)}

    @nn.nowrap
    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token: 6N (the embedding lookup excluded)
        plus the WKV recurrence (~20 flops per channel forward, tripled)."""
        cfg = self.cfg
        n = num_params(cfg) - cfg.vocab_size * cfg.d_model
        return 6.0 * n + 3.0 * 20 * cfg.n_layer * cfg.att_dim
