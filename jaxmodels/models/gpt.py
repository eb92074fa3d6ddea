"""GPT-2 as in Hugging Face `GPT2LMHeadModel` and nanoGPT/minGPT.

Pre-LayerNorm blocks (x + attn(ln_1(x)), x + mlp(ln_2(x))), learned position embeddings,
a final LayerNorm and a head tied to the token embedding. Initialisation follows GPT-2:
N(0, 0.02) everywhere, the two residual projections (attention out, MLP out) at
0.02 / sqrt(2 * n_layer), zero biases. Dropout at the embeddings, on the attention
probabilities and on each residual branch (nanoGPT uses one rate for all three).

Params (f32):  wte [V, C], wpe [block_size, C], ln_f/{scale,bias},
               h/{ln_1, attn/c_attn, attn/c_proj, ln_2, mlp/fc, mlp/proj}/... with a leading
               [n_layer] axis (the stack is one nn.scan; see jaxmodels.layers.stack).
The residual stream stays f32 (as under torch autocast); matmuls run in `dtype`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError, check_choice
from jaxmodels.layers import adapters
from jaxmodels.layers.attention import attention, init_stacked_kv_cache, update_kv_cache
from jaxmodels.layers.dense import Dense
from jaxmodels.layers.dropout import Dropout
from jaxmodels.layers.lm_head import lm_head
from jaxmodels.layers.mlp import GELU_KINDS, GeluMLP
from jaxmodels.layers.moe import MoE, MoEFields, moe_ffn_params, moe_stack
from jaxmodels.layers.norms import LayerNorm
from jaxmodels.layers.stack import REMAT_POLICIES, layer_unroll

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Config(MoEFields):   # moe_* fields: jaxmodels.layers.moe (GELU experts, 4*n_embd wide by default)
    vocab_size: int = 50257
    block_size: int = 1024          # context length = number of learned positions
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0            # embd, attention-probability and residual dropout
    bias: bool = True               # biases in Linear layers and LayerNorms (nanoGPT's `bias`)
    gelu: str = "tanh"              # "tanh" (HF gpt2's gelu_new, minGPT) | "exact" (nanoGPT)
    dtype: str = "float32"          # compute dtype: "float32" | "bfloat16"
    remat: str = "none"             # jaxmodels.layers.stack.REMAT_POLICIES
    scan_layers: Union[bool, str] = "auto"  # False unrolls the layer loop (same param layout);
                                            # auto: unrolled on a CPU (layers/stack.layer_unroll)
    adapters: Any = None          # LoRA / QLoRA / state tuning (jaxmodels.layers.adapters)

    def __post_init__(self):
        check_choice("gpt", "gelu", self.gelu, GELU_KINDS)
        check_choice("gpt", "dtype", self.dtype, DTYPES)
        check_choice("gpt", "remat", self.remat, REMAT_POLICIES)
        if self.n_embd % self.n_head:
            raise ConfigError(f"gpt model.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        self.check_moe("gpt", self.n_layer)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


_GPT2 = dict(vocab_size=50257, block_size=1024, gelu="tanh", bias=True, dropout=0.0)
_MINGPT = dict(gelu="tanh", bias=True, dropout=0.1)           # minGPT: NewGELU, pdrop 0.1
_NANOGPT_CHAR = dict(vocab_size=65, gelu="exact", bias=False)  # nanoGPT train.py defaults

SIZES: dict[str, dict[str, Any]] = {
    # OpenAI GPT-2 (HF gpt2*). Pretraining used dropout 0.1; nanoGPT fine-tunes with 0.0.
    "gpt2": dict(_GPT2, n_layer=12, n_head=12, n_embd=768),            # 124M
    "gpt2-medium": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),    # 350M
    "gpt2-large": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),     # 774M
    "gpt2-xl": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),        # 1558M
    # minGPT model_type table (vocab and block size come from the task).
    "gpt-nano": dict(_MINGPT, n_layer=3, n_head=3, n_embd=48),
    "gpt-micro": dict(_MINGPT, n_layer=4, n_head=4, n_embd=128),
    "gpt-mini": dict(_MINGPT, n_layer=6, n_head=6, n_embd=192),
    "gopher-44m": dict(_MINGPT, n_layer=8, n_head=16, n_embd=512),
    # nanoGPT README's CPU "baby GPT" and config/train_shakespeare_char.py.
    "baby-shakespeare": dict(_NANOGPT_CHAR, n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
    "shakespeare-char": dict(_NANOGPT_CHAR, n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
}


def build(cfg: Mapping[str, Any]) -> "GPT":
    """The GPT module for a config's `model` section (optional `size` + field overrides)."""
    from jaxmodels.models import sized_config

    return GPT(sized_config(Config, SIZES, cfg, "gpt"))


def num_params(cfg: Config, include_positions: bool = True, active: bool = False) -> int:
    """Parameter count from the config (the tied head is counted once, with wte). With MoE:
    all experts, or with active=True the top_k experts a token uses (FLOPs)."""
    C, L, b = cfg.n_embd, cfg.n_layer, int(cfg.bias)
    ln = C * (1 + b)
    per_layer = 2 * ln + (3 * C * C + 3 * C * b) + (C * C + C * b) + (4 * C * C + 4 * C * b) + (4 * C * C + C * b)
    total = cfg.vocab_size * C + L * per_layer + ln
    if cfg.is_moe:
        # MoE layers: the dense MLP (8C^2 + 5C biases) becomes E experts (+ router).
        moe_total, moe_active = moe_ffn_params("gelu", C, cfg.moe_hidden or 4 * C, cfg.moe_experts,
                                               cfg.moe_top_k, cfg.bias)
        total += (L // cfg.moe_every) * ((moe_active if active else moe_total) - (8 * C * C + 5 * C * b))
    return total + (cfg.block_size * C if include_positions else 0)


def _init(std: float):
    return nn.initializers.normal(stddev=std)


class CausalSelfAttention(nn.Module):
    cfg: Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BTC: jax.Array, cache: Optional[dict] = None,
                 pos: Optional[jax.Array] = None):
        cfg = self.cfg
        B, T, C = x_BTC.shape
        H, D = cfg.n_head, cfg.head_dim
        dtype = cfg.compute_dtype
        qkv_BT3C = Dense(3 * C, use_bias=cfg.bias, dtype=dtype, kernel_init=_init(0.02),
                         name="c_attn")(x_BTC)
        q_BTHD, k_BTHD, v_BTHD = (a.reshape(B, T, H, D) for a in jnp.split(qkv_BT3C, 3, axis=-1))
        if cache is None:
            use_dropout = not self.deterministic and cfg.dropout > 0
            out_BTHD = attention(q_BTHD, k_BTHD, v_BTHD, causal=True,
                                 dropout_rate=cfg.dropout if use_dropout else 0.0,
                                 dropout_rng=self.make_rng("dropout") if use_dropout else None)
        else:
            cache = update_kv_cache(cache, k_BTHD, v_BTHD, pos)
            out_BTHD = attention(q_BTHD, cache["k"].astype(dtype), cache["v"].astype(dtype),
                                 causal=True, q_offset=pos, kv_len=pos + T)
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        y_BTC = Dense(C, use_bias=cfg.bias, dtype=dtype, kernel_init=_init(proj_std),
                      name="c_proj")(out_BTHD.reshape(B, T, C))
        return Dropout(cfg.dropout)(y_BTC, deterministic=self.deterministic), cache


class Block(nn.Module):
    """One pre-LN transformer block; `(x, cache, pos) -> (x, new cache)` for nn.scan."""
    cfg: Config
    deterministic: bool = True
    moe: bool = False               # this layer's FFN is the MoE (params h/moe/...)

    @nn.compact
    def __call__(self, x_BTC: jax.Array, cache: Optional[dict] = None,
                 pos: Optional[jax.Array] = None):
        cfg = self.cfg
        dtype = cfg.compute_dtype
        h_BTC = LayerNorm(use_bias=cfg.bias, dtype=dtype, name="ln_1")(x_BTC)
        h_BTC, cache = CausalSelfAttention(cfg, self.deterministic, name="attn")(h_BTC, cache, pos)
        x_BTC = x_BTC + h_BTC.astype(x_BTC.dtype)
        h_BTC = LayerNorm(use_bias=cfg.bias, dtype=dtype, name="ln_2")(x_BTC)
        proj_init = _init(0.02 / math.sqrt(2 * cfg.n_layer))
        if self.moe:
            h_BTC = MoE(cfg.moe_experts, cfg.moe_top_k, cfg.moe_hidden or 4 * cfg.n_embd, kind="gelu",
                        gelu=cfg.gelu, use_bias=cfg.bias, router=cfg.moe_router,
                        dispatch=cfg.moe_dispatch, capacity_factor=cfg.moe_capacity_factor,
                        jitter=cfg.moe_jitter, dtype=dtype, kernel_init=_init(0.02),
                        proj_init=proj_init, name="moe")(h_BTC, deterministic=self.deterministic)
            h_BTC = Dropout(cfg.dropout)(h_BTC, deterministic=self.deterministic)
        else:
            h_BTC = GeluMLP(use_bias=cfg.bias, gelu=cfg.gelu, dropout=cfg.dropout, dtype=dtype,
                            kernel_init=_init(0.02), proj_init=proj_init,
                            name="mlp")(h_BTC, deterministic=self.deterministic)
        return x_BTC + h_BTC.astype(x_BTC.dtype), cache


class GPT(nn.Module):
    """GPT-2 causal LM following the contract in jaxmodels/models/__init__.py."""
    cfg: Config

    @adapters.scoped
    @nn.compact
    def __call__(self, tokens_BT: jax.Array, train: bool = False,
                 decode_state: Optional[dict] = None, pos: Optional[jax.Array] = None,
                 head_input: bool = False):
        """tokens_BT int32 -> logits_BTV f32; with decode_state -> (logits, new_state).
        head_input=True: a layers.lm_head.HeadInput in place of the logits."""
        cfg = self.cfg
        B, T = tokens_BT.shape
        C = cfg.n_embd
        wte_VC = self.param("wte", _init(0.02), (cfg.vocab_size, C), jnp.float32)
        wpe_PC = self.param("wpe", _init(0.02), (cfg.block_size, C), jnp.float32)
        start = jnp.zeros((), jnp.int32) if pos is None else jnp.asarray(pos, jnp.int32)
        pos_T = start + jnp.arange(T, dtype=jnp.int32)
        x_BTC = jnp.take(wte_VC, tokens_BT, axis=0) + jnp.take(wpe_PC, pos_T, axis=0)[None]
        x_BTC = Dropout(cfg.dropout)(x_BTC, deterministic=not train)

        unroll = layer_unroll(cfg.scan_layers, cfg.n_layer)
        if decode_state is None:
            blocks = moe_stack(Block, cfg.n_layer, cfg, cfg.remat, unroll=unroll, name="h",
                               cfg=cfg, deterministic=not train)
            x_BTC, _ = blocks(x_BTC)
        else:
            # The per-layer caches are scanned over (axis 0); the position is shared.
            blocks = moe_stack(Block, cfg.n_layer, cfg, "none", in_axes=(0, nn.broadcast),
                               unroll=unroll, name="h", cfg=cfg, deterministic=not train)
            x_BTC, decode_state = blocks(x_BTC, decode_state, start)

        x_BTC = LayerNorm(use_bias=cfg.bias, dtype=cfg.compute_dtype, name="ln_f")(x_BTC)
        # Tied head; logits accumulate in f32 whatever the compute dtype.
        dtype = cfg.compute_dtype
        logits_BTV = lm_head(x_BTC, wte_VC, dtype, head_input=head_input)
        if decode_state is None:
            return logits_BTV
        return logits_BTV, decode_state

    @property
    def max_context(self) -> int:
        """Learned positions end here; generate.py slides the window past it."""
        return self.cfg.block_size

    @nn.nowrap
    def init_decode_state(self, batch: int, max_len: int, dtype=None) -> dict:
        """An empty KV cache {"k", "v"}: [n_layer, batch, max_len, n_head, head_dim] each."""
        cfg = self.cfg
        if max_len > cfg.block_size:
            raise ValueError(f"max_len={max_len} exceeds the model's block_size={cfg.block_size} "
                             "(GPT-2 has no positions beyond it)")
        return init_stacked_kv_cache(cfg.n_layer, batch, max_len, cfg.block_size, cfg.n_head, cfg.head_dim,
                                     dtype or cfg.compute_dtype)

    @nn.nowrap
    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token: 6N + 12·L·H·Q·T (nanoGPT/PaLM).

        N counts every parameter except the position embeddings (the tied head once).
        """
        cfg = self.cfg
        n = num_params(cfg, include_positions=False, active=True)
        return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len
