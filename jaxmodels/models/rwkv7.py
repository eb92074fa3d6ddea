"""RWKV-7 "Goose" (x070) as in RWKV-LM's RWKV-v7 (train_temp/src/model.py, rwkv_v7_numpy.py).

emb -> ln0 -> blocks -> ln_out -> head (untied). Block (pre-LN, residual in f32):
  time mixing: xx = token_shift(x) - x; x_r..x_g = x + xx·mix_{r,w,k,v,a,g};
    r, k, v = receptance, key, value projections;
    w = exp(-exp(-softplus(-(w0 + tanh(x_w W1) W2)) - 0.5))   (decay, soft-clamped to (0.545, 1));
    v += (v_first - v)·σ(v0 + x_v V1 V2) for layers > 0 (value residual; layer 0 sets v_first);
    a = σ(a0 + x_a A1 A2) (in-context learning rate); g = σ(x_g G1) G2;
    κ̂ = normalize(k·k_k) per head; k = k·(1 + (a-1)·k_a);
    per head:  S_t = S_{t-1}(diag(w_t) - κ̂_t (a_t⊙κ̂_t)ᵀ) + v_t k_tᵀ,   y_t = S_t r_t   (S [V, K]);
    y = GroupNorm_H(y) + (Σ r⊙k⊙r_k)·v;  out = output(y ⊙ g).
  channel mixing: k = relu(key(x + xx·mix_k))², out = value(k).
The WKV runs in one of two proven-equal forms (`wkv_mode`): "recurrent" (lax.scan over time;
a matrix-valued transition, so not the diagonal engine in jaxmodels/scan.py) or "chunked"
(parallel inside chunks of `chunk_size` via a unit-triangular solve, the state carried
across chunks — see `wkv7_chunk`).

Init (RWKV-LM generate_init_weight + RWKV_Tmix_x070.__init__): emb U(±1e-4); head orthogonal
0.5·sqrt(V/C); receptance, value, ffn.key orthogonal; key orthogonal·0.1; output, ffn.value
zero; LoRA down (W1, A1, V1, G1) zero and up (W2, A2, V2, G2) orthogonal·0.1; ln_x scale
((l+1)/L)^0.7; mixes, w0, a0, v0, k_k, k_a, r_k layer-dependent as in RWKV-LM.
Decode state per layer: att_x, ffn_x [B, C] and S [B, H, N, N] f32 (flat in sequence length).
The layers are one nn.scan, so layer 0 also holds v0/V1/V2 (RWKV-LM has none there); they
are unused (the value residual is switched off at layer 0) and get zero gradient.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError, check_choice
from jaxmodels.kernels import dispatch
from jaxmodels.layers import adapters
from jaxmodels.layers.dense import Dense, linear
from jaxmodels.layers.headnorm import HeadNorm
from jaxmodels.layers.lm_head import lm_head
from jaxmodels.layers.norms import LayerNorm
from jaxmodels.layers.stack import REMAT_POLICIES, scan_blocks
from jaxmodels.layers.token_shift import token_shift

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
WKV_MODES = ("chunked", "recurrent")


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 50304         # Pile models: 50277 padded to 50304; World: 65536
    d_model: int = 768
    n_layer: int = 12
    head_size: int = 64
    d_ffn: int = 0                  # 0: 4 * d_model
    d_decay_lora: int = 0           # 0: RWKV-LM's suggestion max(32, round(2.5·sqrt(C)/32)·32)
    d_aaa_lora: int = 0             # same rule as decay
    d_mv_lora: int = 0              # 1.7·sqrt(C)
    d_gate_lora: int = 0            # 5·sqrt(C)
    norm_eps: float = 1e-5
    group_norm_eps: float = 64e-5   # ln_x: 1e-5 · head_size_divisor² (= 8²)
    wkv_mode: str = "chunked"       # "chunked" | "recurrent"
    chunk_size: int = 16
    dtype: str = "float32"
    remat: str = "none"
    adapters: Any = None          # LoRA / QLoRA / state tuning (jaxmodels.layers.adapters)

    def __post_init__(self):
        check_choice("rwkv7", "dtype", self.dtype, DTYPES)
        check_choice("rwkv7", "remat", self.remat, REMAT_POLICIES)
        check_choice("rwkv7", "wkv_mode", self.wkv_mode, WKV_MODES)
        if self.d_model % self.head_size:
            raise ConfigError(f"rwkv7 d_model={self.d_model} must be a multiple of head_size={self.head_size}")

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_size

    @property
    def ffn_dim(self) -> int:
        return self.d_ffn or 4 * self.d_model

    def lora(self, name: str) -> int:
        given = {"decay": self.d_decay_lora, "aaa": self.d_aaa_lora, "mv": self.d_mv_lora,
                 "gate": self.d_gate_lora}[name]
        factor = {"decay": 2.5, "aaa": 2.5, "mv": 1.7, "gate": 5.0}[name]
        return given or max(32, int(round(factor * math.sqrt(self.d_model) / 32) * 32))

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


SIZES: dict[str, dict[str, Any]] = {
    # RWKV-LM v7 Pile models (rwkv-7-pile: 0.1B L12-D768 ... 1.5B L24-D2048).
    "l12-d768": dict(n_layer=12, d_model=768),
    "l24-d1024": dict(n_layer=24, d_model=1024),
    "l24-d2048": dict(n_layer=24, d_model=2048),
    "l32-d2560": dict(n_layer=32, d_model=2560),
}


def build(cfg: Mapping[str, Any]) -> "RWKV7":
    """The RWKV-7 module for a config's `model` section (optional `size` + field overrides)."""
    from jaxmodels.models import sized_config

    return RWKV7(sized_config(Config, SIZES, cfg, "rwkv7"))


def num_params(cfg: Config) -> int:
    C, F, H, N = cfg.d_model, cfg.ffn_dim, cfg.n_head, cfg.head_size
    loras = sum(2 * C * cfg.lora(n) for n in ("decay", "aaa", "mv", "gate"))
    att = 6 * C + 3 * C + 2 * C + H * N + loras + 4 * C * C + 2 * C  # mixes, w0/a0/v0, k_k/k_a, r_k, W, ln_x
    ffn = C + 2 * C * F
    return 2 * cfg.vocab_size * C + 4 * C + cfg.n_layer * (4 * C + att + ffn)


# ---------------------------------------------------------------------------------------------
# The WKV-7 recurrence. Per head (batch and head axes leading): r, w, k, v, alpha = -κ̂,
# beta = a⊙κ̂, each [..., T, N]; state S [..., N(v), N(k)].
# ---------------------------------------------------------------------------------------------


def wkv7_recurrent(r, w, k, v, alpha, beta, S):
    """S_t = S_{t-1}(diag(w_t) + α_t β_tᵀ) + v_t k_tᵀ, y_t = S_t r_t, one step at a time."""
    def step(S, inp):
        r_t, w_t, k_t, v_t, a_t, b_t = inp
        S = (S * w_t[..., None, :] + jnp.einsum("...vk,...k->...v", S, a_t)[..., :, None] * b_t[..., None, :]
             + v_t[..., :, None] * k_t[..., None, :])
        return S, jnp.einsum("...vk,...k->...v", S, r_t)

    time_first = lambda x: jnp.moveaxis(x, -2, 0)
    S, y = jax.lax.scan(step, S, tuple(time_first(x) for x in (r, w, k, v, alpha, beta)))
    return jnp.moveaxis(y, 0, -2), S


def wkv7_chunk(r, w, k, v, alpha, beta, S0):
    """The same recurrence over one chunk of c steps in parallel; returns (y, S_c).

    With cumulative log-decay cum_t = Σ_{s≤t} log w_s and x_t = S_{t-1} α_t, unrolling gives
      S_t = S_0 Γ_t + Σ_{i≤t} (x_i β_iᵀ + v_i k_iᵀ) Γ_t Γ_i⁻¹,
      x_t = S_0 (Γ_{t-1} α_t) + Σ_{i<t} [β_iᵀ(Γ_{t-1}Γ_i⁻¹ α_t) x_i + k_iᵀ(Γ_{t-1}Γ_i⁻¹ α_t) v_i],
    a unit lower-triangular system X = (I - M)⁻¹ (...) solved exactly. Every decay ratio is
    formed as exp(cum_t - cum_i) with t ≥ i (exponent ≤ 0, no division, no overflow).
    """
    c = r.shape[-2]
    lw = jnp.log(w)
    cum = jnp.cumsum(lw, axis=-2)                          # inclusive  [..., c, N]
    cumx = cum - lw                                        # exclusive
    t = jnp.arange(c)
    strict = (t[:, None] > t[None, :])[..., None]          # [c, c, 1]: i < t
    causal = (t[:, None] >= t[None, :])[..., None]         # i <= t

    def pair_decay(end, mask):  # exp(end_t - cum_i) where mask, else 0: [..., c(t), c(i), N]
        diff = end[..., :, None, :] - cum[..., None, :, :]
        return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)

    Dx = pair_decay(cumx, strict)
    Dy = pair_decay(cum, causal)
    M = jnp.einsum("...tn,...in,...tin->...ti", alpha, beta, Dx)
    Kx = jnp.einsum("...tn,...in,...tin->...ti", alpha, k, Dx)
    rhs = (jnp.einsum("...tk,...vk->...tv", alpha * jnp.exp(cumx), S0)
           + jnp.einsum("...ti,...iv->...tv", Kx, v))
    eye = jnp.eye(c, dtype=M.dtype)
    X = jax.scipy.linalg.solve_triangular(eye - M, rhs, lower=True, unit_diagonal=True)
    y = (jnp.einsum("...tk,...vk->...tv", r * jnp.exp(cum), S0)
         + jnp.einsum("...ti,...iv->...tv", jnp.einsum("...tn,...in,...tin->...ti", r, beta, Dy), X)
         + jnp.einsum("...ti,...iv->...tv", jnp.einsum("...tn,...in,...tin->...ti", r, k, Dy), v))
    to_end = jnp.exp(cum[..., -1:, :] - cum)                # [..., c, N] decay from i to the chunk end
    S_c = (S0 * jnp.exp(cum[..., -1, :])[..., None, :]
           + jnp.einsum("...iv,...ik->...vk", X, beta * to_end)
           + jnp.einsum("...iv,...ik->...vk", v, k * to_end))
    return y, S_c


def wkv7_chunked(r, w, k, v, alpha, beta, S, chunk: int):
    """wkv7_chunk over consecutive chunks (lax.scan, rematerialised); a shorter tail chunk last."""
    T = r.shape[-2]
    chunk = max(1, min(chunk, T))
    n_full, rest = divmod(T, chunk)
    xs = (r, w, k, v, alpha, beta)
    outs = []
    if n_full:
        def split(x):
            x = x[..., :n_full * chunk, :]
            x = x.reshape(x.shape[:-2] + (n_full, chunk, x.shape[-1]))
            return jnp.moveaxis(x, -3, 0)

        def body(S, inp):
            y, S = wkv7_chunk(*inp, S)
            return S, y

        if n_full > 1:
            body = jax.checkpoint(body, prevent_cse=False)
        S, y = jax.lax.scan(body, S, tuple(split(x) for x in xs))
        y = jnp.moveaxis(y, 0, -3)
        outs.append(y.reshape(y.shape[:-3] + (n_full * chunk, y.shape[-1])))
    if rest:
        y, S = wkv7_chunk(*(x[..., T - rest:, :] for x in xs), S)
        outs.append(y)
    return jnp.concatenate(outs, axis=-2), S


# ---------------------------------------------------------------------------------------------


def _orthogonal(scale: float):
    """torch's orthogonal_(W[out, in], gain) for a flax kernel [in, out]."""
    return nn.initializers.orthogonal(scale=scale)


def _uniform(limit: float):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -limit, limit)


def _layer_init(layer_id: jax.Array, cfg: Config, kind: str, C: int) -> jax.Array:
    """RWKV-LM's layer-dependent vectors (layer_id may be a traced scan index)."""
    l = layer_id.astype(jnp.float32)
    L = cfg.n_layer
    r01 = l / max(L - 1, 1)
    r10 = 1.0 - l / L
    n = jnp.arange(C, dtype=jnp.float32)
    ddd = n / C
    N = cfg.head_size
    linear = n / (C - 1) - 0.5
    zz = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
    zigzag = zz * jnp.abs(zz)
    powers = {"x_r": 0.2, "x_w": 0.9, "x_k": 0.7, "x_v": 0.7, "x_a": 0.9, "x_g": 0.2}
    if kind in powers:
        return 1.0 - ddd ** (powers[kind] * r10)
    if kind == "ffn_x_k":
        return 1.0 - ddd ** (r10 ** 4)
    if kind == "w0":
        return -6 + 6 * (n / (C - 1)) ** (1 + r01 ** 0.3) + 0.5 + zigzag * 2.5
    if kind == "a0":
        return -0.19 + zigzag * 0.3 + linear * 0.4
    if kind == "v0":
        return 0.73 - linear * 0.4
    if kind == "k_k":
        return 0.71 - linear * 0.1
    if kind == "k_a":
        return jnp.full((C,), 1.02)
    if kind == "ln_x":
        return jnp.full((C,), ((l + 1) / L) ** 0.7)
    raise ValueError(kind)


class TimeMix(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BTC, v_first_BTC, layer_id, state):
        cfg = self.cfg
        B, T, C = x_BTC.shape
        H, N = cfg.n_head, cfg.head_size
        dtype = cfg.compute_dtype

        def vec(name, kind):
            # Always a concrete f32 array: a weak-typed init (jnp.full of a Python float) would
            # change type after the first optimizer step and make the train step recompile.
            return self.param(name, lambda _k, s: jnp.asarray(_layer_init(layer_id, cfg, kind, s[0]),
                                                              jnp.float32), (C,))

        def dense(features, name, init):
            return Dense(features, use_bias=False, dtype=dtype, kernel_init=init, name=name)

        def lora(x, name, rank, inner=lambda h: h):
            down = self.param(f"{name}1", nn.initializers.zeros, (C, rank), jnp.float32)
            gain = math.sqrt(rank / C) if rank > C else 1.0
            up = self.param(f"{name}2", _orthogonal(0.1 * gain), (rank, C), jnp.float32)
            h = inner(linear(x, down.astype(dtype)))
            return linear(h, up.astype(dtype))

        shifted, last_BC = token_shift(x_BTC, None if state is None else state["att_x"])
        xx = shifted - x_BTC
        xr, xw, xk, xv, xa, xg = (x_BTC + xx * vec(n, n).astype(dtype)
                                  for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
        r = dense(C, "receptance", _orthogonal(1.0))(xr)
        w_raw = vec("w0", "w0") + lora(xw, "w", cfg.lora("decay"), jnp.tanh).astype(jnp.float32)
        log_w = -jnp.exp(-jax.nn.softplus(-w_raw) - 0.5)     # log decay in (-e^-0.5, 0)
        k = dense(C, "key", _orthogonal(0.1))(xk)
        v = dense(C, "value", _orthogonal(1.0))(xv)
        is_first = layer_id == 0
        # v_first rides the layer scan in the compute dtype: it is layer 0's `v`, already
        # rounded to that dtype, so an f32 copy holds no more digits but doubles the per-layer
        # copy the scan keeps for the backward pass (RWKV-7 2.9B at 1024 tokens: 160 MiB).
        v_first_BTC = jnp.where(is_first, v.astype(v_first_BTC.dtype), v_first_BTC)
        v_mix = jax.nn.sigmoid(vec("v0", "v0") + lora(xv, "v", cfg.lora("mv")).astype(jnp.float32))
        v32 = v.astype(jnp.float32)
        v32 = jnp.where(is_first, v32, v32 + (v_first_BTC.astype(jnp.float32) - v32) * v_mix)
        a = jax.nn.sigmoid(vec("a0", "a0") + lora(xa, "a", cfg.lora("aaa")).astype(jnp.float32))
        g = lora(xg, "g", cfg.lora("gate"), jax.nn.sigmoid).astype(jnp.float32)

        heads = lambda x: x.astype(jnp.float32).reshape(B, T, H, N).transpose(0, 2, 1, 3)  # [B,H,T,N]
        k32 = k.astype(jnp.float32)
        kk = heads(k32 * vec("k_k", "k_k"))
        kk = kk / jnp.maximum(jnp.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)
        k32 = k32 * (1 + (a - 1) * vec("k_a", "k_a"))
        r_h, k_h, v_h, a_h = heads(r), heads(k32), heads(v32), heads(a)
        S0 = jnp.zeros((B, H, N, N), jnp.float32) if state is None else state["S"]
        spec = adapters.current()
        if spec is not None and spec.state_tuning:
            # State tuning (RWKV-PEFT): a trained initial state per layer, the only leaf that
            # trains; decoding starts from it too (RWKV7.__call__ adds it at pos 0).
            state0 = self.param(adapters.STATE_LEAF, nn.initializers.zeros, (H, N, N), jnp.float32)
            if state is None:
                S0 = S0 + state0.astype(jnp.float32)
        wkv_args = (r_h, jnp.exp(heads(log_w)), k_h, v_h, -kk, kk * a_h, S0)
        # wkv7_chunked / wkv7_recurrent below, or the Pallas kernel with config
        # kernels.rwkv7=pallas (kernels/rwkv7.py).
        y, S = dispatch.rwkv7_wkv(*wkv_args, chunk=cfg.chunk_size, recurrent=cfg.wkv_mode == "recurrent")
        y = y.transpose(0, 2, 1, 3)                               # [B, T, H, N]
        ln_x = HeadNorm(kind="layer", eps=cfg.group_norm_eps, dtype=jnp.float32, name="ln_x",
                        scale_init=lambda _k, s, d=jnp.float32: _layer_init(layer_id, cfg, "ln_x", s[0]))
        y = ln_x(y)
        r_k = self.param("r_k", nn.initializers.constant(-0.04), (H, N), jnp.float32)
        bonus = jnp.sum(r_h * k_h * r_k[None, :, None, :], axis=-1, keepdims=True) * v_h
        y = (y + bonus.transpose(0, 2, 1, 3)).reshape(B, T, C)
        out = dense(C, "output", nn.initializers.zeros)((y * g).astype(dtype))
        new_state = None if state is None else {"att_x": last_BC.astype(state["att_x"].dtype), "S": S}
        return out, v_first_BTC, new_state


class ChannelMix(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BTC, layer_id, state):
        cfg = self.cfg
        C = x_BTC.shape[-1]
        dtype = cfg.compute_dtype
        mix = self.param("x_k", lambda _k, s: _layer_init(layer_id, cfg, "ffn_x_k", s[0]), (C,))
        shifted, last_BC = token_shift(x_BTC, None if state is None else state["ffn_x"])
        xk = x_BTC + (shifted - x_BTC) * mix.astype(dtype)
        h = Dense(cfg.ffn_dim, use_bias=False, dtype=dtype, kernel_init=_orthogonal(1.0), name="key")(xk)
        h = jnp.square(jax.nn.relu(h))
        out = Dense(C, use_bias=False, dtype=dtype, kernel_init=nn.initializers.zeros, name="value")(h)
        return out, (None if state is None else {"ffn_x": last_BC.astype(state["ffn_x"].dtype)})


class Block(nn.Module):
    """((x, v_first), layer_id, state) -> ((x, v_first), new state) for nn.scan."""
    cfg: Config

    @nn.compact
    def __call__(self, carry, layer_id, state=None):
        x_BTC, v_first = carry
        cfg = self.cfg
        dtype = cfg.compute_dtype
        h = LayerNorm(eps=cfg.norm_eps, dtype=dtype, name="ln1")(x_BTC)
        h, v_first, att_state = TimeMix(cfg, name="att")(h, v_first, layer_id, state)
        x_BTC = x_BTC + h.astype(jnp.float32)
        h = LayerNorm(eps=cfg.norm_eps, dtype=dtype, name="ln2")(x_BTC)
        h, ffn_state = ChannelMix(cfg, name="ffn")(h, layer_id, state)
        x_BTC = x_BTC + h.astype(jnp.float32)
        return (x_BTC, v_first), (None if state is None else {**att_state, **ffn_state})


class RWKV7(nn.Module):
    """RWKV-7 causal LM following the contract in jaxmodels/models/__init__.py."""
    cfg: Config

    @adapters.scoped
    @nn.compact
    def __call__(self, tokens_BT: jax.Array, train: bool = False,
                 decode_state: Optional[dict] = None, pos: Optional[jax.Array] = None,
                 head_input: bool = False):
        """tokens_BT int32 -> logits_BTV f32; with decode_state -> (logits, new_state). `pos` unused."""
        cfg = self.cfg
        V, C, L = cfg.vocab_size, cfg.d_model, cfg.n_layer
        dtype = cfg.compute_dtype
        emb_VC = self.param("emb", _uniform(1e-4), (V, C), jnp.float32)
        x_BTC = LayerNorm(eps=cfg.norm_eps, dtype=jnp.float32, name="ln0")(jnp.take(emb_VC, tokens_BT, axis=0))
        carry = (x_BTC, jnp.zeros_like(x_BTC, dtype=dtype))   # (residual f32, v_first)
        layer_ids = jnp.arange(L, dtype=jnp.int32)
        if decode_state is None:
            blocks = scan_blocks(Block, L, cfg.remat, in_axes=(0,), name="blocks", cfg=cfg)
            (x_BTC, _), _ = blocks(carry, layer_ids)
        else:
            decode_state = self._start_from_tuned_state(decode_state, pos)
            blocks = scan_blocks(Block, L, cfg.remat if train else "none", in_axes=(0, 0), name="blocks", cfg=cfg)
            (x_BTC, _), decode_state = blocks(carry, layer_ids, decode_state)
        x_BTC = LayerNorm(eps=cfg.norm_eps, dtype=dtype, name="ln_out")(x_BTC)
        gain = 0.5 * math.sqrt(V / C) if V > C else 0.5
        head_VC = self.param("head", _orthogonal(gain), (V, C), jnp.float32)
        logits = lm_head(x_BTC, head_VC, dtype, head_input=head_input)
        if decode_state is None:
            return logits
        return logits, decode_state

    def _start_from_tuned_state(self, decode_state: dict, pos) -> dict:
        """With state tuning, a decode that starts (pos == 0) starts from the trained state0."""
        spec = adapters.spec_from(self.cfg.adapters)
        if spec is None or not spec.state_tuning or pos is None or self.is_initializing():
            return decode_state
        state0 = self.variables["params"]["blocks"]["att"][adapters.STATE_LEAF].astype(jnp.float32)
        S = decode_state["S"]
        S = jnp.where(jnp.asarray(pos) == 0, S + state0[:, None], S)
        return {**decode_state, "S": S}

    @nn.nowrap
    def init_decode_state(self, batch: int, max_len: int = 0, dtype=None) -> dict:
        """Empty state: att_x, ffn_x [L, B, C] (dtype) and S [L, B, H, N, N] f32; max_len unused."""
        cfg = self.cfg
        L, C, H, N = cfg.n_layer, cfg.d_model, cfg.n_head, cfg.head_size
        x = jnp.zeros((L, batch, C), dtype or cfg.compute_dtype)
        return {"att_x": x, "ffn_x": x, "S": jnp.zeros((L, batch, H, N, N), jnp.float32)}

    @nn.nowrap
    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (fwd + bwd) per token: 6N (embedding excluded) + the WKV state update
        (~6·N² per head and token forward: decay, low-rank update, vkᵀ and the readout)."""
        cfg = self.cfg
        n = num_params(cfg) - cfg.vocab_size * cfg.d_model
        return 6.0 * n + 3.0 * cfg.n_layer * cfg.n_head * 6 * cfg.head_size ** 2
