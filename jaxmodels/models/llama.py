"""LLaMA-family causal LM: LLaMA 1/2/3, TinyLlama, Mistral (sliding window), Qwen2 (q/k/v biases).

Pre-norm blocks: x += o_proj(attn(rope(q), rope(k), v)) on RMSNorm(x); x += SwiGLU(RMSNorm(x)).
Grouped-query attention (n_kv_heads < n_heads) through jaxmodels.layers.attention; RoPE
in the HF rotate-half convention with optional llama3 / linear frequency scaling.

Every projection is a LoRADense (jaxmodels.layers.lora): with lora_rank = 0 and quant =
"none" it is a plain Dense; lora_rank > 0 adds adapters to the projections named in
lora_targets (q, k, v, o, gate, up, down, head) and freezes everything else; quant = "nf4"
stores the frozen block projections in 4 bits (QLoRA). The head and the embedding stay f32.

Param layout (HF name -> ours; kernels are [in, out], HF stores [out, in]):
  model.embed_tokens.weight            embed                        [V, D]
  model.layers.i.input_layernorm       layers/attn_norm/scale       [L, D]
  model.layers.i.self_attn.q_proj      layers/attn/q_proj/kernel    [L, D, H*Dh]   (+ bias)
  ... k_proj, v_proj, o_proj; post_attention_layernorm -> layers/mlp_norm
  model.layers.i.mlp.gate_proj         layers/mlp/gate_proj/kernel  [L, D, F]  (up, down)
  model.norm.weight                    norm/scale
  lm_head.weight                       lm_head/kernel               [D, V]   (absent when tied)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError
from jaxmodels.layers.attention import attention, init_stacked_kv_cache, update_kv_cache
from jaxmodels.layers.lm_head import HeadInput, lm_head
from jaxmodels.layers.lora import QUANT_KINDS, LoRADense, lora_trainable_mask
from jaxmodels.layers.mlp import SwiGLUMLP
from jaxmodels.layers.moe import MoE, MoEFields, moe_ffn_params, moe_stack
from jaxmodels.layers.norms import RMSNorm
from jaxmodels.layers.rope import ROPE_TYPES, apply_rope, rope_cos_sin, rope_inv_freq
from jaxmodels.layers.stack import layer_unroll

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down", "head")


@dataclasses.dataclass(frozen=True)
class Config(MoEFields):  # moe_* fields: jaxmodels.layers.moe (SwiGLU experts: Mixtral)
    vocab_size: int = 32000
    dim: int = 4096               # hidden_size
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32          # < n_heads: grouped-query attention
    head_dim: int = 0             # 0: dim // n_heads
    hidden_dim: int = 11008       # SwiGLU intermediate_size
    norm_eps: float = 1e-5
    max_len: int = 4096           # max_position_embeddings (decode cache limit)
    rope_theta: float = 10000.0
    rope_type: str = "default"    # "default" | "linear" | "llama3"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    sliding_window: int = 0       # Mistral: key j visible to query i iff i - j < window; 0: off
    tie_embeddings: bool = False
    qkv_bias: bool = False        # Qwen2
    o_bias: bool = False          # LLaMA attention_bias=True puts biases on q, k, v and o
    mlp_bias: bool = False
    init_std: float = 0.02
    # LoRA / QLoRA
    lora_rank: int = 0            # 0: no adapters, everything trains
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple = ("q", "v")
    quant: str = "none"           # frozen base projections: "none" | "nf4"
    # execution
    dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.rope_type not in ROPE_TYPES:
            raise ConfigError(f"unknown rope_type {self.rope_type!r}; valid: {', '.join(ROPE_TYPES)}")
        if self.quant not in QUANT_KINDS:
            raise ConfigError(f"unknown quant {self.quant!r}; valid: {', '.join(QUANT_KINDS)}")
        bad = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if bad:
            raise ConfigError(f"unknown lora_targets {bad}; valid: {', '.join(LORA_TARGETS)}")
        if self.tie_embeddings and "head" in self.lora_targets and self.lora_rank > 0:
            raise ConfigError("LoRA on the head needs an untied lm_head (tie_embeddings=False)")
        self.check_moe("llama", self.n_layers)
        if self.is_moe and self.mlp_bias:
            raise ConfigError("llama MoE experts have no biases (Mixtral): set mlp_bias=False")

    @property
    def dh(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def rope_scaling(self) -> dict:
        return {"rope_type": self.rope_type, "factor": self.rope_factor,
                "low_freq_factor": self.rope_low_freq_factor,
                "high_freq_factor": self.rope_high_freq_factor,
                "original_max_position_embeddings": self.rope_original_max_len}


_LLAMA3_ROPE = dict(rope_theta=500000.0, rope_type="llama3", rope_factor=32.0,
                    rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_len=8192)
SIZES = {
    # karpathy/llama2.c TinyStories model (tied classifier).
    "stories15M": dict(vocab_size=32000, dim=288, n_layers=6, n_heads=6, n_kv_heads=6,
                       hidden_dim=768, max_len=256, tie_embeddings=True),
    "tinyllama-1.1b": dict(vocab_size=32000, dim=2048, n_layers=22, n_heads=32, n_kv_heads=4,
                           hidden_dim=5632, max_len=2048),
    "llama-3.2-1b": dict(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                         head_dim=64, hidden_dim=8192, max_len=131072, tie_embeddings=True,
                         **_LLAMA3_ROPE),
    "llama-3.2-3b": dict(vocab_size=128256, dim=3072, n_layers=28, n_heads=24, n_kv_heads=8,
                         head_dim=128, hidden_dim=8192, max_len=131072, tie_embeddings=True,
                         **_LLAMA3_ROPE),
    "llama-2-7b": dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                       hidden_dim=11008, max_len=4096),
    "mistral-7b": dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       hidden_dim=14336, max_len=32768, sliding_window=4096),
    "llama-3-8b": dict(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       hidden_dim=14336, max_len=8192, rope_theta=500000.0),
}


def build(cfg: Mapping[str, Any]) -> "Llama":
    from jaxmodels.models import sized_config

    return Llama(sized_config(Config, SIZES, cfg, "llama"))


def num_params(cfg: Config, include_embedding: bool = True, active: bool = False) -> int:
    """Parameter count of the base model (no adapters); the tied head counts once. With MoE:
    all experts, or with active=True the top_k experts a token uses (FLOPs)."""
    D, F, Dh = cfg.dim, cfg.hidden_dim, cfg.dh
    attn = D * Dh * (cfg.n_heads * 2 + cfg.n_kv_heads * 2)
    if cfg.qkv_bias or cfg.o_bias:
        attn += Dh * (cfg.n_heads + 2 * cfg.n_kv_heads)
    if cfg.o_bias:
        attn += D
    mlp = 3 * D * F + (2 * F + D if cfg.mlp_bias else 0)
    total = cfg.n_layers * (attn + mlp + 2 * D) + D
    if cfg.is_moe:
        moe_total, moe_active = moe_ffn_params("swiglu", D, cfg.moe_hidden or F, cfg.moe_experts,
                                               cfg.moe_top_k, False)
        total += (cfg.n_layers // cfg.moe_every) * ((moe_active if active else moe_total) - mlp)
    total += cfg.vocab_size * D * (1 if cfg.tie_embeddings else 2)
    if not include_embedding and not cfg.tie_embeddings:
        total -= cfg.vocab_size * D
    return total


def _dense(cfg: Config, target: str, deterministic: bool, quantize: bool = True):
    """The LoRADense constructor for one projection, with this target's LoRA settings bound."""
    rank = cfg.lora_rank if target in cfg.lora_targets else 0
    frozen_base = cfg.lora_rank > 0  # with LoRA on, non-target projections are frozen too
    return functools.partial(
        LoRADense, lora_rank=rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        quant=cfg.quant if quantize else "none", deterministic=deterministic,
        freeze=frozen_base)


class Attention(nn.Module):
    cfg: Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BTD: jax.Array, cache: Optional[dict], pos: jax.Array):
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        H, K, Dh = cfg.n_heads, cfg.n_kv_heads, cfg.dh
        dtype = cfg.compute_dtype
        init = nn.initializers.normal(cfg.init_std)

        def proj(target, features, bias, name):
            return _dense(cfg, target, self.deterministic)(features, use_bias=bias, dtype=dtype,
                                                           kernel_init=init, name=name)

        q_BTHD = proj("q", H * Dh, cfg.qkv_bias or cfg.o_bias, "q_proj")(x_BTD).reshape(B, T, H, Dh)
        k_BTKD = proj("k", K * Dh, cfg.qkv_bias or cfg.o_bias, "k_proj")(x_BTD).reshape(B, T, K, Dh)
        v_BTKD = proj("v", K * Dh, cfg.qkv_bias or cfg.o_bias, "v_proj")(x_BTD).reshape(B, T, K, Dh)
        inv_freq = rope_inv_freq(Dh, cfg.rope_theta, cfg.rope_scaling)
        cos_TD, sin_TD = rope_cos_sin(pos + jnp.arange(T, dtype=jnp.int32), inv_freq)
        q_BTHD = apply_rope(q_BTHD, cos_TD, sin_TD)
        k_BTKD = apply_rope(k_BTKD, cos_TD, sin_TD)
        window = cfg.sliding_window or None
        if cache is None:
            out_BTHD = attention(q_BTHD, k_BTKD, v_BTKD, causal=True, window=window)
        else:
            cache = update_kv_cache(cache, k_BTKD, v_BTKD, pos)
            out_BTHD = attention(q_BTHD, cache["k"].astype(dtype), cache["v"].astype(dtype),
                                 causal=True, q_offset=pos, kv_len=pos + T, window=window)
        y_BTD = proj("o", cfg.dim, cfg.o_bias, "o_proj")(out_BTHD.reshape(B, T, H * Dh))
        return y_BTD, cache


class Block(nn.Module):
    """One pre-norm block; `(x, cache, pos) -> (x, new cache)` for nn.scan."""
    cfg: Config
    deterministic: bool = True
    moe: bool = False       # this layer's FFN is the MoE (params layers/moe/...; Mixtral's block_sparse_moe)

    @nn.compact
    def __call__(self, x_BTD: jax.Array, cache: Optional[dict] = None,
                 pos: Optional[jax.Array] = None):
        cfg = self.cfg
        dtype = cfg.compute_dtype
        pos = jnp.zeros((), jnp.int32) if pos is None else pos
        h_BTD = RMSNorm(eps=cfg.norm_eps, dtype=dtype, name="attn_norm")(x_BTD)
        h_BTD, cache = Attention(cfg, self.deterministic, name="attn")(h_BTD, cache, pos)
        x_BTD = x_BTD + h_BTD.astype(x_BTD.dtype)
        h_BTD = RMSNorm(eps=cfg.norm_eps, dtype=dtype, name="mlp_norm")(x_BTD)
        if self.moe:
            h_BTD = MoE(cfg.moe_experts, cfg.moe_top_k, cfg.moe_hidden or cfg.hidden_dim, kind="swiglu",
                        router=cfg.moe_router, dispatch=cfg.moe_dispatch,
                        capacity_factor=cfg.moe_capacity_factor, jitter=cfg.moe_jitter, dtype=dtype,
                        quant=cfg.quant,
                        kernel_init=nn.initializers.normal(cfg.init_std),
                        router_init=nn.initializers.normal(cfg.init_std),
                        name="moe")(h_BTD, deterministic=self.deterministic)
        else:
            dense = _mlp_dense(cfg, self.deterministic)
            h_BTD = SwiGLUMLP(hidden=cfg.hidden_dim, use_bias=cfg.mlp_bias, dtype=dtype,
                              kernel_init=nn.initializers.normal(cfg.init_std), dense=dense,
                              name="mlp")(h_BTD)
        return x_BTD + h_BTD.astype(x_BTD.dtype), cache


def _mlp_dense(cfg: Config, deterministic: bool):
    """SwiGLUMLP calls dense(..., name="gate_proj" | "up_proj" | "down_proj"): route each
    name to its LoRA target."""
    def make(features, *, name, **kwargs):
        target = name.split("_")[0]
        return _dense(cfg, target, deterministic)(features, name=name, **kwargs)
    return make


class Llama(nn.Module):
    """LLaMA-family causal LM following the contract in jaxmodels/models/__init__.py."""
    cfg: Config

    @nn.compact
    def __call__(self, tokens_BT: jax.Array, train: bool = False,
                 decode_state: Optional[dict] = None, pos: Optional[jax.Array] = None,
                 head_input: bool = False):
        """tokens_BT int32 -> logits_BTV f32; with decode_state -> (logits, new_state).
        head_input=True: a layers.lm_head.HeadInput in place of the logits (logits all the
        same when the head carries a LoRA adapter, which no single weight matrix describes)."""
        cfg = self.cfg
        dtype = cfg.compute_dtype
        frozen = cfg.lora_rank > 0
        embed_VD = self.param("embed", nn.initializers.normal(cfg.init_std),
                              (cfg.vocab_size, cfg.dim), jnp.float32)
        if frozen:
            embed_VD = jax.lax.stop_gradient(embed_VD)
        x_BTD = jnp.take(embed_VD, tokens_BT, axis=0).astype(dtype)
        start = jnp.zeros((), jnp.int32) if pos is None else jnp.asarray(pos, jnp.int32)
        unroll = layer_unroll(cfg.scan_layers, cfg.n_layers)
        if decode_state is None:
            blocks = moe_stack(Block, cfg.n_layers, cfg, cfg.remat, unroll=unroll, name="layers",
                               cfg=cfg, deterministic=not train)
            x_BTD, _ = blocks(x_BTD)
        else:
            # Per-layer caches are scanned over (axis 0); the position is shared.
            blocks = moe_stack(Block, cfg.n_layers, cfg, "none", in_axes=(0, nn.broadcast),
                               unroll=unroll, name="layers", cfg=cfg, deterministic=not train)
            x_BTD, decode_state = blocks(x_BTD, decode_state, start)
        x_BTD = RMSNorm(eps=cfg.norm_eps, dtype=dtype, name="norm")(x_BTD)
        if cfg.tie_embeddings:
            logits_BTV = lm_head(x_BTD, embed_VD, dtype, head_input=head_input)
        else:
            # The head stays f32-stored (never NF4): it is small next to the blocks and
            # quantising it costs the most quality.
            head = _dense(cfg, "head", not train, quantize=False)(
                cfg.vocab_size, use_bias=False, dtype=dtype,
                kernel_init=nn.initializers.normal(cfg.init_std), name="lm_head")
            lora_head = cfg.lora_rank > 0 and "head" in cfg.lora_targets
            if head_input and not lora_head and not self.is_initializing():
                kernel_DV = self.variables["params"]["lm_head"]["kernel"]
                kernel_DV = jax.lax.stop_gradient(kernel_DV) if frozen else kernel_DV
                logits_BTV = lm_head(x_BTD, kernel_DV.T, dtype, head_input=True)
            else:
                logits_BTV = head(x_BTD)
        if not isinstance(logits_BTV, HeadInput):
            logits_BTV = logits_BTV.astype(jnp.float32)
        if decode_state is None:
            return logits_BTV
        return logits_BTV, decode_state

    @property
    def max_context(self) -> int:
        """The trained context (max_position_embeddings); generate.py slides the window past it."""
        return self.cfg.max_len

    @nn.nowrap
    def init_decode_state(self, batch: int, max_len: int, dtype=None) -> dict:
        """An empty KV cache {"k", "v"}: [n_layers, batch, max_len, n_kv_heads, head_dim] each."""
        cfg = self.cfg
        return init_stacked_kv_cache(cfg.n_layers, batch, max_len, cfg.max_len, cfg.n_kv_heads, cfg.dh,
                                     dtype or cfg.compute_dtype)

    @nn.nowrap
    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token: 6N + 12·L·H·Dh·T (PaLM appendix B).

        N counts the matmul params (blocks + head, the tied head once; not the embedding
        lookup). With LoRA the frozen weights still cost forward and input-gradient FLOPs
        (4N instead of 6N); this keeps the usual 6N for comparability.
        """
        cfg = self.cfg
        n = num_params(cfg, include_embedding=False, active=True)
        return 6.0 * n + 12.0 * cfg.n_layers * cfg.n_heads * cfg.dh * seq_len

    @nn.nowrap
    def load_pretrained(self, params, path: str):
        """`params` with the base weights read from `path` (HF folder or launch.convert
        output), NF4-quantised where the model is; LoRA leaves keep their values."""
        from jaxmodels.convert.llama import load_into

        return jax.tree.map(jnp.asarray, load_into(params, path, self.cfg))

    @nn.nowrap
    def trainable_mask(self, params) -> Optional[Any]:
        """With lora_rank > 0: True only on LoRA leaves. Otherwise None (all train)."""
        if self.cfg.lora_rank > 0:
            return lora_trainable_mask(params)
        if self.cfg.quant != "none":
            raise ConfigError("quant='nf4' freezes the base weights: set lora_rank > 0 to train "
                              "adapters (QLoRA)")
        return None
