"""RetNet (Sun et al. 2023, "Retentive Network"), parameterised like torchscale's RetNetDecoder.

emb·sqrt(D) -> blocks -> RMSNorm -> head (untied). Block (pre-norm, residual in f32):
  x + MSR(RMSNorm(x)),  x + GLU(RMSNorm(x))  with GLU = fc2(swish(fc1 x) ⊙ gate x).
Multi-scale retention per head h with decay γ_h = 1 - 2^(-5-h):
  q, k (scaled by Dk^-1/2) rotated by position (layers/xpos.py), v, gate g = swish(g_proj x);
  out = out_proj(g ⊙ HeadNorm(retention(q, k, v)))  (per-head RMS norm, no affine).
Three equal forms of retention, chosen by `retention_mode`:
  parallel   (Q Kᵀ ⊙ D) V, D_nm = γ^(n-m) for n >= m else 0;
  recurrent  S_n = γ S_{n-1} + k_nᵀ v_n, o_n = q_n S_n (through jaxmodels.scan);
  chunkwise  parallel inside chunks of `chunk_size`, the state S carried across chunks.
torchscale also divides D's rows by sqrt(row sum) and Q Kᵀ's rows by their |·| sum (clamped
to [1, 5e4]); each is a positive per-(head, position) factor that the per-head norm removes
(up to its eps), so they are left out and all three forms compute exactly the same thing.

Init (torchscale): q/k/v/g_proj xavier_uniform(gain 2^-2.5), out_proj gain 2^-1, embedding
and head N(0, D^-1/2), FFN PyTorch-default U(±1/sqrt(fan_in)).
Params (f32): embed [V, D], norm, head [V, D] and layers/{retention_norm, ffn_norm,
retention/{q_proj, k_proj, v_proj, g_proj, out_proj}, ffn/{gate_proj (=fc1, swished),
up_proj (=gate), down_proj (=fc2)}} with a leading [n_layer] axis.
Decode state: S [n_layer, B, H, Dk, Dv] f32, flat in the sequence length.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels import scan
from jaxmodels.config import ConfigError, check_choice
from jaxmodels.layers import adapters
from jaxmodels.layers.dense import Dense
from jaxmodels.layers.headnorm import HeadNorm
from jaxmodels.layers.lm_head import lm_head
from jaxmodels.layers.mlp import SwiGLUMLP
from jaxmodels.layers.norms import RMSNorm
from jaxmodels.layers.stack import REMAT_POLICIES, scan_blocks
from jaxmodels.layers.xpos import xpos_rotate

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
RETENTION_MODES = ("parallel", "recurrent", "chunkwise")


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 50257
    d_model: int = 512
    n_layer: int = 6
    n_head: int = 2
    d_value: int = 864              # value / gate width (torchscale decoder_value_embed_dim)
    d_ffn: int = 864
    norm_eps: float = 1e-6
    scale_embedding: bool = True    # x = emb · sqrt(d_model) (fairseq/torchscale default)
    xpos_scale_base: float = 0.0    # > 0 adds the xPos length scale to the rotation
    retention_mode: str = "chunkwise"  # "parallel" | "recurrent" | "chunkwise"
    chunk_size: int = 64
    scan_mode: str = "auto"         # jaxmodels.scan.MODES, for the recurrent form
    dtype: str = "float32"
    remat: str = "none"
    adapters: Any = None          # LoRA / QLoRA / state tuning (jaxmodels.layers.adapters)

    def __post_init__(self):
        check_choice("retnet", "dtype", self.dtype, DTYPES)
        check_choice("retnet", "remat", self.remat, REMAT_POLICIES)
        check_choice("retnet", "retention_mode", self.retention_mode, RETENTION_MODES)
        check_choice("retnet", "scan_mode", self.scan_mode, scan.MODES)
        if self.d_model % self.n_head or self.d_value % self.n_head:
            raise ConfigError(f"retnet d_model={self.d_model} and d_value={self.d_value} must be "
                              f"divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ConfigError("retnet key head dim (d_model / n_head) must be even for the rotation")

    @property
    def key_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def value_dim(self) -> int:
        return self.d_value // self.n_head

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


SIZES: dict[str, dict[str, Any]] = {
    # torchscale examples/fairseq/models/retnet.py architectures (paper: 1.3B = xl, 2.7B = 3b, 6.7B = 7b).
    "base": dict(d_model=512, d_value=864, d_ffn=864, n_layer=6, n_head=2),
    "medium": dict(d_model=1024, d_value=1728, d_ffn=1728, n_layer=16, n_head=4),
    "xl": dict(d_model=2048, d_value=3456, d_ffn=3456, n_layer=24, n_head=8),
    "3b": dict(d_model=2560, d_value=4280, d_ffn=4280, n_layer=32, n_head=10),
    "7b": dict(d_model=4096, d_value=6912, d_ffn=6912, n_layer=32, n_head=16),
}


def build(cfg: Mapping[str, Any]) -> "RetNet":
    """The RetNet module for a config's `model` section (optional `size` + field overrides)."""
    from jaxmodels.models import sized_config

    return RetNet(sized_config(Config, SIZES, cfg, "retnet"))


def num_params(cfg: Config) -> int:
    D, Dv, F = cfg.d_model, cfg.d_value, cfg.d_ffn
    per_layer = 2 * D + 2 * D * D + 3 * D * Dv + 3 * D * F
    return 2 * cfg.vocab_size * D + D + cfg.n_layer * per_layer


def log_gammas(n_head: int) -> jax.Array:
    """log γ_h with γ_h = 1 - 2^(-5-h): each head forgets at its own scale."""
    return jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(n_head, dtype=jnp.float32))))


# ---- the three forms (q, k [B, T, H, Dk], v [B, T, H, Dv], state S [B, H, Dk, Dv]; all f32) ----


def retention_parallel(q, k, v, log_g_H):
    """(Q Kᵀ ⊙ D) V from a zero state. Returns o [B, T, H, Dv]."""
    T = q.shape[1]
    n = jnp.arange(T, dtype=jnp.float32)
    dist_TT = n[:, None] - n[None, :]
    decay_HTT = jnp.where(dist_TT >= 0, jnp.exp(log_g_H[:, None, None] * jnp.maximum(dist_TT, 0)), 0.0)
    scores_BHTS = jnp.einsum("bthd,bshd->bhts", q, k) * decay_HTT
    return jnp.einsum("bhts,bshe->bthe", scores_BHTS, v)


def _one_chunk(q, k, v, log_g_H, S):
    """Parallel inside one chunk plus the carried state; returns (o, S after the chunk)."""
    c = q.shape[1]
    i = jnp.arange(c, dtype=jnp.float32)
    inner = retention_parallel(q, k, v, log_g_H)
    # Query i sees the state decayed by γ^(i+1); key j reaches the chunk end decayed by γ^(c-1-j).
    q_decay_TH = jnp.exp((i[:, None] + 1) * log_g_H[None])
    k_decay_TH = jnp.exp((c - 1 - i[:, None]) * log_g_H[None])
    cross = jnp.einsum("bthd,bhde->bthe", q * q_decay_TH[None, :, :, None], S)
    S_new = (jnp.exp(c * log_g_H)[None, :, None, None] * S
             + jnp.einsum("bthd,bthe->bhde", k * k_decay_TH[None, :, :, None], v))
    return inner + cross, S_new


def retention_chunkwise(q, k, v, log_g_H, S, chunk: int):
    """Chunks of `chunk` steps: parallel inside, state across. Returns (o, S_last)."""
    B, T, H, Dk = q.shape
    chunk = max(1, min(chunk, T))
    n_full, rest = divmod(T, chunk)
    outs = []
    if n_full:
        def body(S, qkv):
            o, S = _one_chunk(*qkv, log_g_H, S)
            return S, o

        split = lambda x: jnp.moveaxis(x[:, :n_full * chunk].reshape((B, n_full, chunk) + x.shape[2:]), 1, 0)
        S, o_c = jax.lax.scan(body, S, (split(q), split(k), split(v)))
        outs.append(jnp.moveaxis(o_c, 0, 1).reshape((B, n_full * chunk) + o_c.shape[3:]))
    if rest:  # the tail is one shorter chunk, exact (no padding that would decay the state)
        o, S = _one_chunk(q[:, -rest:], k[:, -rest:], v[:, -rest:], log_g_H, S)
        outs.append(o)
    return jnp.concatenate(outs, axis=1), S


def retention_recurrent(q, k, v, log_g_H, S, *, mode: str = "auto", chunk: int = 64):
    """S_n = γ S_{n-1} + k_nᵀ v_n, o_n = q_n S_n, through jaxmodels.scan. Returns (o, S_last)."""
    gamma_H11 = jnp.exp(log_g_H)[:, None, None]

    def make_ab(xs):
        _, k_c, v_c = xs
        kv = jnp.einsum("bthd,bthe->bthde", k_c, v_c)
        return jnp.broadcast_to(gamma_H11, kv.shape), kv

    def readout(S_all, xs):
        return jnp.einsum("bthd,bthde->bthe", xs[0], S_all)

    return scan.fused_scan(make_ab, readout, (q, k, v), S, mode=mode, chunk=chunk)


class MultiScaleRetention(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BTD: jax.Array, pos_T: jax.Array, S: Optional[jax.Array] = None):
        cfg = self.cfg
        B, T, D = x_BTD.shape
        H, Dk, Dv = cfg.n_head, cfg.key_dim, cfg.value_dim
        dtype = cfg.compute_dtype

        def dense(features, name, gain):
            init = nn.initializers.variance_scaling(gain ** 2, "fan_avg", "uniform")
            return Dense(features, use_bias=False, dtype=dtype, kernel_init=init, name=name)

        q = dense(D, "q_proj", 2 ** -2.5)(x_BTD).reshape(B, T, H, Dk)
        k = dense(D, "k_proj", 2 ** -2.5)(x_BTD).reshape(B, T, H, Dk) * (Dk ** -0.5)
        v = dense(cfg.d_value, "v_proj", 2 ** -2.5)(x_BTD).reshape(B, T, H, Dv)
        g = dense(cfg.d_value, "g_proj", 2 ** -2.5)(x_BTD)
        q = xpos_rotate(q, pos_T, scale_base=cfg.xpos_scale_base).astype(jnp.float32)
        k = xpos_rotate(k, pos_T, scale_base=cfg.xpos_scale_base, inverse_scale=True).astype(jnp.float32)
        v = v.astype(jnp.float32)
        log_g_H = log_gammas(H)

        S0 = jnp.zeros((B, H, Dk, Dv), jnp.float32) if S is None else S
        if cfg.retention_mode == "recurrent":
            o, S_new = retention_recurrent(q, k, v, log_g_H, S0, mode=cfg.scan_mode, chunk=cfg.chunk_size)
        elif cfg.retention_mode == "parallel" and S is None:
            o, S_new = retention_parallel(q, k, v, log_g_H), None
        else:  # chunkwise; with a state, "parallel" is the chunkwise form with one chunk
            chunk = T if cfg.retention_mode == "parallel" else cfg.chunk_size
            o, S_new = retention_chunkwise(q, k, v, log_g_H, S0, chunk)

        o = HeadNorm(kind="rms", eps=cfg.norm_eps, use_scale=False, use_bias=False,
                     dtype=jnp.float32, name="group_norm")(o)
        o = (nn.swish(g.astype(jnp.float32)) * o.reshape(B, T, H * Dv)).astype(dtype)
        out = dense(D, "out_proj", 2 ** -1)(o)
        return out, (None if S is None else S_new)


class RetNetBlock(nn.Module):
    """x + MSR(norm(x)), x + GLU(norm(x)); `(x, S, pos) -> (x, new S)` for nn.scan."""
    cfg: Config

    @nn.compact
    def __call__(self, x_BTD: jax.Array, S: Optional[jax.Array], pos_T: jax.Array):
        cfg = self.cfg
        dtype = cfg.compute_dtype
        h = RMSNorm(eps=cfg.norm_eps, dtype=dtype, name="retention_norm")(x_BTD)
        h, S = MultiScaleRetention(cfg, name="retention")(h, pos_T, S)
        x_BTD = x_BTD + h.astype(jnp.float32)
        h = RMSNorm(eps=cfg.norm_eps, dtype=dtype, name="ffn_norm")(x_BTD)
        lin = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        h = SwiGLUMLP(hidden=cfg.d_ffn, dtype=dtype, kernel_init=lin, name="ffn")(h)
        return x_BTD + h.astype(jnp.float32), S


class RetNet(nn.Module):
    """RetNet causal LM following the contract in jaxmodels/models/__init__.py."""
    cfg: Config

    @adapters.scoped
    @nn.compact
    def __call__(self, tokens_BT: jax.Array, train: bool = False,
                 decode_state: Optional[dict] = None, pos: Optional[jax.Array] = None,
                 head_input: bool = False):
        """tokens_BT int32 -> logits_BTV f32; with decode_state -> (logits, new_state)."""
        cfg = self.cfg
        V, D = cfg.vocab_size, cfg.d_model
        B, T = tokens_BT.shape
        dtype = cfg.compute_dtype
        emb_VD = self.param("embed", nn.initializers.normal(D ** -0.5), (V, D), jnp.float32)
        # The residual stream is f32 (the layer scan's carry), also when adapters store the
        # frozen embedding in bf16.
        x_BTD = jnp.take(emb_VD, tokens_BT, axis=0).astype(jnp.float32)
        if cfg.scale_embedding:
            x_BTD = x_BTD * math.sqrt(D)
        start = jnp.zeros((), jnp.int32) if pos is None else jnp.asarray(pos, jnp.int32)
        pos_T = start + jnp.arange(T, dtype=jnp.int32)
        if decode_state is None:
            blocks = scan_blocks(RetNetBlock, cfg.n_layer, cfg.remat, in_axes=(nn.broadcast, nn.broadcast),
                                 name="layers", cfg=cfg)
            x_BTD, _ = blocks(x_BTD, None, pos_T)
        else:
            blocks = scan_blocks(RetNetBlock, cfg.n_layer, cfg.remat if train else "none", in_axes=(0, nn.broadcast),
                                 name="layers", cfg=cfg)
            x_BTD, S = blocks(x_BTD, decode_state["S"], pos_T)
            decode_state = {"S": S}
        x_BTD = RMSNorm(eps=cfg.norm_eps, dtype=dtype, name="norm")(x_BTD)
        head_VD = self.param("head", nn.initializers.normal(D ** -0.5), (V, D), jnp.float32)
        logits_BTV = lm_head(x_BTD, head_VD, dtype, head_input=head_input)
        if decode_state is None:
            return logits_BTV
        return logits_BTV, decode_state

    @nn.nowrap
    def init_decode_state(self, batch: int, max_len: int = 0, dtype=None) -> dict:
        """Empty retention state {"S": [n_layer, B, H, Dk, Dv] f32}; max_len is not needed."""
        cfg = self.cfg
        return {"S": jnp.zeros((cfg.n_layer, batch, cfg.n_head, cfg.key_dim, cfg.value_dim), jnp.float32)}

    @nn.nowrap
    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (fwd + bwd) per token: 6N (embedding lookup excluded) plus retention.

        Retention is counted in its chunkwise form: within a chunk of c tokens the score and
        value products cost 2·c·(Dk + Dv) per head and token (causal half: c/2 average, kept
        as c like the attention convention), the state read/write 4·Dk·Dv per head.
        """
        cfg = self.cfg
        c = min(seq_len, cfg.chunk_size) if cfg.retention_mode != "parallel" else seq_len
        n = num_params(cfg) - cfg.vocab_size * cfg.d_model
        per_layer = cfg.n_head * (2 * c * (cfg.key_dim + cfg.value_dim) + 4 * cfg.key_dim * cfg.value_dim)
        return 6.0 * n + 3.0 * cfg.n_layer * per_layer
