"""Mamba-1 as in `mamba_ssm` (MambaLMHeadModel) and Hugging Face `MambaForCausalLM`.

Block: x + mixer(RMSNorm(x)), the residual stream kept in f32. Mixer:
  in_proj (D -> 2E) -> (x, z); x -> depthwise causal conv1d (kernel d_conv, bias) -> SiLU;
  x_proj (E -> R + 2N) -> (dt, B, C); dt = softplus(dt_proj(dt) + bias) [E];
  selective scan  h_t = exp(dt_t·A) ⊙ h_{t-1} + dt_t·B_t·x_t,  y_t = C_t·h_t + D·x_t
  (A = -exp(A_log) [E, N]); y ⊙ SiLU(z) -> out_proj (E -> D).
A final RMSNorm and a head tied to the embedding.

Init (mamba_ssm): embedding N(0, 0.02); Linear layers PyTorch-default U(±1/sqrt(fan_in))
with zero biases; out_proj additionally / sqrt(n_layer); conv PyTorch default;
dt_proj weight U(±dt_rank^-0.5), its bias the inverse softplus of dt ~ log-uniform in
[dt_min, dt_max] floored at dt_init_floor; A_log = log(1..N) (S4D-real); D = 1.

Params (f32): embedding [V, D], norm_f/scale, lm_head (only when untied) and
layers/{norm/scale, mixer/{in_proj, conv1d_kernel [K, E], conv1d_bias [E], x_proj, dt_proj,
A_log [E, N], D [E], out_proj}} with a leading [n_layer] axis (one nn.scan).
Decode state per layer: conv [B, d_conv-1, E] (the last inputs of the conv) and ssm
[B, E, N] f32 — independent of the sequence length.
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
from jaxmodels.kernels import dispatch
from jaxmodels.layers import adapters
from jaxmodels.layers.dense import Dense
from jaxmodels.layers.lm_head import lm_head
from jaxmodels.layers.norms import RMSNorm
from jaxmodels.layers.stack import REMAT_POLICIES, scan_blocks

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 50280
    d_model: int = 768
    n_layer: int = 24
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int = 0                # 0: "auto" = ceil(d_model / 16)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    conv_bias: bool = True
    bias: bool = False              # biases of in_proj / out_proj
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 8  # mamba_ssm pads the embedding rows to a multiple of this
    rescale_prenorm_residual: bool = True  # out_proj init / sqrt(n_layer)
    dtype: str = "float32"          # compute dtype: "float32" | "bfloat16"
    remat: str = "none"             # jaxmodels.layers.stack.REMAT_POLICIES
    scan_mode: str = "auto"         # jaxmodels.scan.MODES
    scan_chunk: int = 64
    adapters: Any = None          # LoRA / QLoRA / state tuning (jaxmodels.layers.adapters)

    def __post_init__(self):
        check_choice("mamba", "dtype", self.dtype, DTYPES)
        check_choice("mamba", "remat", self.remat, REMAT_POLICIES)
        check_choice("mamba", "scan_mode", self.scan_mode, scan.MODES)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)

    @property
    def padded_vocab(self) -> int:
        m = max(1, self.pad_vocab_size_multiple)
        return -(-self.vocab_size // m) * m

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


_MAMBA = dict(vocab_size=50280, d_state=16, expand=2, d_conv=4)
SIZES: dict[str, dict[str, Any]] = {
    # state-spaces/mamba-* (Pile, GPT-NeoX tokenizer).
    "mamba-130m": dict(_MAMBA, d_model=768, n_layer=24),
    "mamba-370m": dict(_MAMBA, d_model=1024, n_layer=48),
    "mamba-790m": dict(_MAMBA, d_model=1536, n_layer=48),
    "mamba-1.4b": dict(_MAMBA, d_model=2048, n_layer=48),
    "mamba-2.8b": dict(_MAMBA, d_model=2560, n_layer=64),
}


def build(cfg: Mapping[str, Any]) -> "Mamba":
    """The Mamba module for a config's `model` section (optional `size` + field overrides)."""
    from jaxmodels.models import sized_config

    return Mamba(sized_config(Config, SIZES, cfg, "mamba"))


def num_params(cfg: Config) -> int:
    """Parameter count (the tied head counted once)."""
    D, E, N, R, K = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.rank, cfg.d_conv
    per_layer = (D + D * 2 * E + 2 * E * cfg.bias + E * K + E * cfg.conv_bias + E * (R + 2 * N)
                 + R * E + E + E * N + E + E * D + D * cfg.bias)
    head = 0 if cfg.tie_embeddings else cfg.padded_vocab * D
    return cfg.padded_vocab * D + cfg.n_layer * per_layer + D + head


def torch_linear_init():
    """PyTorch nn.Linear / Conv default (kaiming_uniform a=sqrt(5)): U(±1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _dt_bias_init(cfg: Config):
    """Inverse softplus of dt ~ log-uniform[dt_min, dt_max], floored (mamba_ssm)."""
    def init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, jnp.float32)
        dt = jnp.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = jnp.maximum(dt, cfg.dt_init_floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)
    return init


def _a_log_init(key, shape, dtype=jnp.float32):
    E, N = shape
    return jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=jnp.float32), (E, N))).astype(dtype)


def _uniform(limit: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -limit, limit)
    return init


def _scaled(init, factor: float):
    def scaled_init(key, shape, dtype=jnp.float32):
        return init(key, shape, dtype) * factor
    return scaled_init


def causal_depthwise_conv(x_BTE: jax.Array, prev_BKE: jax.Array, kernel_KE: jax.Array,
                          bias_E: Optional[jax.Array]):
    """y_t = sum_k w_k · x_{t-K+1+k} (+ bias) with the K-1 inputs before x given in prev.

    Returns (y_BTE, the new prev: the last K-1 inputs). Zero `prev` is the usual left padding,
    so the same code serves training, prefill and single decode steps.
    """
    K = kernel_KE.shape[0]
    T = x_BTE.shape[1]
    full_BSE = jnp.concatenate([prev_BKE.astype(x_BTE.dtype), x_BTE], axis=1)
    y_BTE = sum(full_BSE[:, k:k + T] * kernel_KE[k].astype(x_BTE.dtype) for k in range(K))
    if bias_E is not None:
        y_BTE = y_BTE + bias_E.astype(x_BTE.dtype)
    return y_BTE, full_BSE[:, full_BSE.shape[1] - (K - 1):]


class MambaMixer(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BTD: jax.Array, state: Optional[dict] = None):
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        E, N, R, K = cfg.d_inner, cfg.d_state, cfg.rank, cfg.d_conv
        dtype = cfg.compute_dtype
        lin = torch_linear_init()
        xz_BT2E = Dense(2 * E, use_bias=cfg.bias, dtype=dtype, kernel_init=lin,
                        name="in_proj")(x_BTD)
        x_BTE, z_BTE = jnp.split(xz_BT2E, 2, axis=-1)

        # PyTorch's default for a depthwise Conv1d: fan_in = K, weight and bias U(±1/sqrt(K)).
        conv_init = _uniform(1 / math.sqrt(K))
        kernel_KE = self.param("conv1d_kernel", conv_init, (K, E), jnp.float32)
        bias_E = self.param("conv1d_bias", conv_init, (E,), jnp.float32) if cfg.conv_bias else None
        prev_BKE = jnp.zeros((B, K - 1, E), dtype) if state is None else state["conv"]
        x_BTE, new_conv = causal_depthwise_conv(x_BTE, prev_BKE, kernel_KE, bias_E)
        x_BTE = nn.silu(x_BTE)

        dbc_BTX = Dense(R + 2 * N, use_bias=False, dtype=dtype, kernel_init=lin,
                        name="x_proj")(x_BTE)
        dt_BTR, B_BTN, C_BTN = jnp.split(dbc_BTX, [R, R + N], axis=-1)
        dt_std = cfg.rank ** -0.5 * cfg.dt_scale
        dt_BTE = Dense(E, use_bias=True, dtype=dtype, name="dt_proj",
                       kernel_init=_uniform(dt_std),
                       bias_init=_dt_bias_init(cfg))(dt_BTR)
        dt_BTE = jax.nn.softplus(dt_BTE.astype(jnp.float32))
        A_EN = -jnp.exp(self.param("A_log", _a_log_init, (E, N), jnp.float32))
        D_E = self.param("D", nn.initializers.ones, (E,), jnp.float32)

        # h_t = exp(dt A) h_{t-1} + dt x B_t, y_t = h_t C_t: jaxmodels.scan's fused_scan, or the
        # Pallas kernel with config kernels.selective_scan=pallas (kernels/selective_scan.py).
        h0_BEN = jnp.zeros((B, E, N), jnp.float32) if state is None else state["ssm"]
        y_BTE, h_last = dispatch.selective_scan(x_BTE, dt_BTE, A_EN, B_BTN, C_BTN, h0_BEN,
                                                mode=cfg.scan_mode, chunk=cfg.scan_chunk)
        y_BTE = y_BTE + x_BTE.astype(jnp.float32) * D_E
        y_BTE = (y_BTE * nn.silu(z_BTE.astype(jnp.float32))).astype(dtype)
        out_init = _scaled(lin, 1 / math.sqrt(cfg.n_layer)) if cfg.rescale_prenorm_residual else lin
        out_BTD = Dense(cfg.d_model, use_bias=cfg.bias, dtype=dtype, kernel_init=out_init,
                        name="out_proj")(y_BTE)
        new_state = None if state is None else {"conv": new_conv.astype(state["conv"].dtype), "ssm": h_last}
        return out_BTD, new_state


class MambaBlock(nn.Module):
    """x + mixer(RMSNorm(x)); `(x, state) -> (x, new state)` for nn.scan."""
    cfg: Config

    @nn.compact
    def __call__(self, x_BTD: jax.Array, state: Optional[dict] = None):
        cfg = self.cfg
        h_BTD = RMSNorm(eps=cfg.norm_eps, dtype=cfg.compute_dtype, name="norm")(x_BTD)
        h_BTD, state = MambaMixer(cfg, name="mixer")(h_BTD, state)
        return x_BTD + h_BTD.astype(jnp.float32), state


class Mamba(nn.Module):
    """Mamba causal LM following the contract in jaxmodels/models/__init__.py."""
    cfg: Config

    @adapters.scoped
    @nn.compact
    def __call__(self, tokens_BT: jax.Array, train: bool = False,
                 decode_state: Optional[dict] = None, pos: Optional[jax.Array] = None,
                 head_input: bool = False):
        """tokens_BT int32 -> logits_BTV f32; with decode_state -> (logits, new_state).

        Logits cover the padded vocabulary (mamba_ssm); `pos` is unused (no positions).
        """
        cfg = self.cfg
        V, D = cfg.padded_vocab, cfg.d_model
        emb_VD = self.param("embedding", nn.initializers.normal(0.02), (V, D), jnp.float32)
        x_BTD = jnp.take(emb_VD, tokens_BT, axis=0).astype(jnp.float32)  # residual stream in f32
        if decode_state is None:
            blocks = scan_blocks(MambaBlock, cfg.n_layer, cfg.remat, name="layers", cfg=cfg)
            x_BTD, _ = blocks(x_BTD)
        else:
            blocks = scan_blocks(MambaBlock, cfg.n_layer, cfg.remat if train else "none", in_axes=(0,),
                                 name="layers", cfg=cfg)
            x_BTD, decode_state = blocks(x_BTD, decode_state)
        dtype = cfg.compute_dtype
        x_BTD = RMSNorm(eps=cfg.norm_eps, dtype=dtype, name="norm_f")(x_BTD)
        if cfg.tie_embeddings:
            head_VD = emb_VD
        else:
            head_VD = self.param("lm_head", torch_linear_init(), (V, D), jnp.float32)
        logits_BTV = lm_head(x_BTD, head_VD, dtype, head_input=head_input)
        if decode_state is None:
            return logits_BTV
        return logits_BTV, decode_state

    @nn.nowrap
    def init_decode_state(self, batch: int, max_len: int = 0, dtype=None) -> dict:
        """Empty recurrent state: conv [L, B, d_conv-1, E] (dtype) and ssm [L, B, E, N] (f32).

        max_len is accepted for the shared contract and ignored: the state does not grow.
        """
        cfg = self.cfg
        L, E = cfg.n_layer, cfg.d_inner
        return {"conv": jnp.zeros((L, batch, cfg.d_conv - 1, E), dtype or cfg.compute_dtype),
                "ssm": jnp.zeros((L, batch, E, cfg.d_state), jnp.float32)}

    @nn.nowrap
    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token: 6N for the matmuls plus the scan.

        The selective scan costs ~9·E·N per token forward (exp, 2 products for a and b, the
        state update and the C readout); the conv 2·K·E. Both are tripled for fwd + bwd.
        seq_len does not enter: the cost per token is constant.
        """
        cfg = self.cfg
        E, N = cfg.d_inner, cfg.d_state
        scan_fwd = cfg.n_layer * (9 * E * N + 2 * cfg.d_conv * E)
        return 6.0 * num_params(cfg) + 3.0 * scan_fwd
