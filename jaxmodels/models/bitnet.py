"""BitNet b1.58 causal LM: ternary-weight (W1.58 A8) transformer, as transformers'
`BitNetForCausalLM` (model_type "bitnet", BitNet b1.58 2B4T) defines it.

Block (pre-norm, no biases anywhere):
  h = attn_norm(x);  q, k, v = BitLinear(h);  rope(q, k);  a = attention(q, k, v) (GQA)
  x += o_proj(attn_sub_norm(a))                               <- SubLN before o_proj
  h = mlp_norm(x)
  x += down_proj(ffn_sub_norm(act(gate_proj(h)) * up_proj(h)))  <- SubLN before down_proj
with act = relu(.)^2 (2B4T, "relu2") or silu (the LLaMA-alike models of the b1.58 paper).
Every projection in the blocks is a BitLinear (jaxmodels.layers.bitlinear): f32 latent
weights, ternary per-tensor absmean weights and per-token 8-bit absmax activations in the
forward, straight-through gradients. Each BitLinear is preceded by an RMSNorm (the input
norms for q/k/v/gate/up, the sub-norms for o/down), which is where the paper's BitLinear
puts its own norm. The embedding and the LM head stay full precision (f32).

quant: "b1.58" (BitLinear) or "none" (the same architecture in full precision: the
baseline the paper compares against). packed=True: the inference layout, every block
projection held as uint8 (4 ternary values per byte, transformers' layout) + one f32
scale (jaxmodels.convert.bitnet.pack_params makes it from trained params).

Param layout (HF name -> ours; kernels [in, out], HF stores [out, in]):
  model.embed_tokens.weight                      embed                         [V, D]
  model.layers.i.input_layernorm.weight          layers/attn_norm/scale        [L, D]
  model.layers.i.self_attn.{q,k,v,o}_proj        layers/attn/{q,k,v,o}_proj/kernel
  model.layers.i.self_attn.attn_sub_norm         layers/attn/sub_norm/scale    [L, D]
  model.layers.i.post_attention_layernorm        layers/mlp_norm/scale         [L, D]
  model.layers.i.mlp.{gate,up,down}_proj         layers/mlp/{gate,up,down}_proj/kernel
  model.layers.i.mlp.ffn_sub_norm                layers/mlp/sub_norm/scale     [L, F]
  model.norm.weight                              norm/scale
  lm_head.weight                                 lm_head/kernel  [D, V]  (absent when tied)
Packed: .../{name}/packed uint8 [L, ceil(out/4), in] and .../{name}/weight_scale f32 [L].
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError, check_choice
from jaxmodels.layers import adapters
from jaxmodels.layers.attention import attention, init_stacked_kv_cache, update_kv_cache
from jaxmodels.layers.bitlinear import BitLinear
from jaxmodels.layers.dense import linear, project_out
from jaxmodels.layers.norms import RMSNorm
from jaxmodels.layers.rope import apply_rope, rope_cos_sin, rope_inv_freq
from jaxmodels.layers.stack import layer_unroll, scan_blocks

QUANT_KINDS = ("b1.58", "none")
ACTIVATIONS = ("relu2", "silu")


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 128256
    dim: int = 2560               # hidden_size
    n_layers: int = 30
    n_heads: int = 20
    n_kv_heads: int = 5           # < n_heads: grouped-query attention
    head_dim: int = 0             # 0: dim // n_heads
    hidden_dim: int = 6912        # intermediate_size
    hidden_act: str = "relu2"     # "relu2" (2B4T) | "silu" (the paper's LLaMA-alike sizes)
    norm_eps: float = 1e-5
    max_len: int = 4096           # max_position_embeddings (decode cache limit)
    rope_theta: float = 500000.0
    tie_embeddings: bool = True
    init_std: float = 0.02
    quant: str = "b1.58"          # "b1.58" | "none" (full-precision baseline)
    packed: bool = False          # inference layout: uint8 ternary + scale per projection
    dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True
    adapters: Any = None          # LoRA beside the BitLinear layers (jaxmodels.layers.adapters)

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        check_choice("bitnet", "quant", self.quant, QUANT_KINDS)
        check_choice("bitnet", "hidden_act", self.hidden_act, ACTIVATIONS)
        if self.packed and self.quant != "b1.58":
            raise ConfigError("packed=True holds ternary weights: it needs quant='b1.58'")

    @property
    def dh(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


# The b1.58 paper's sizes ("The Era of 1-bit LLMs", Table 1; hidden / GLU / heads / layers as
# in its public reproductions, 1bitLLM/bitnet_b1_58-{large,xl,3B}): LLaMA-alike (SwiGLU,
# LLaMA tokenizer, rope 1e4, tied embeddings as in those configs), here with BitNet's
# sub-norms. Parameters: 0.73B, 1.27B, 3.32B. "2b-4t" is the released
# microsoft/bitnet-b1.58-2B-4T (config.json of the HF repo).
_PAPER = dict(vocab_size=32000, hidden_act="silu", max_len=2048, rope_theta=10000.0,
              tie_embeddings=True)
SIZES = {
    # BitNet (Wang et al. 2023, Table: 350M = 1024 wide, 24 layers, 16 heads) with a GLU of
    # ~8/3 x 1024: 0.34B, the largest named size whose b1.58 training fits 12 GB
    # (f32 latent weights + Adam: 16-20 bytes per parameter before activations).
    "350m": dict(_PAPER, dim=1024, n_layers=24, n_heads=16, n_kv_heads=16, hidden_dim=2736),
    "700m": dict(_PAPER, dim=1536, n_layers=24, n_heads=16, n_kv_heads=16, hidden_dim=4096),
    "1.3b": dict(_PAPER, dim=2048, n_layers=24, n_heads=32, n_kv_heads=32, hidden_dim=5460),
    "3b": dict(_PAPER, dim=3200, n_layers=26, n_heads=32, n_kv_heads=32, hidden_dim=8640),
    "2b-4t": dict(vocab_size=128256, dim=2560, n_layers=30, n_heads=20, n_kv_heads=5, hidden_dim=6912,
                  hidden_act="relu2", max_len=4096, rope_theta=500000.0, tie_embeddings=True),
}

PROJECTIONS = (("attn", "q_proj"), ("attn", "k_proj"), ("attn", "v_proj"), ("attn", "o_proj"),
               ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


def build(cfg: Mapping[str, Any]) -> "BitNet":
    from jaxmodels.models import sized_config

    return BitNet(sized_config(Config, SIZES, cfg, "bitnet"))


def projection_shapes(cfg: Config) -> dict[tuple[str, str], tuple[int, int]]:
    """(in, out) of every block projection, keyed like PROJECTIONS."""
    D, F, H, K, Dh = cfg.dim, cfg.hidden_dim, cfg.n_heads, cfg.n_kv_heads, cfg.dh
    return {("attn", "q_proj"): (D, H * Dh), ("attn", "k_proj"): (D, K * Dh),
            ("attn", "v_proj"): (D, K * Dh), ("attn", "o_proj"): (H * Dh, D),
            ("mlp", "gate_proj"): (D, F), ("mlp", "up_proj"): (D, F), ("mlp", "down_proj"): (F, D)}


def num_params(cfg: Config, include_embedding: bool = True) -> int:
    """Parameter count (latent weights); the tied head counts once."""
    blocks = sum(i * o for i, o in projection_shapes(cfg).values()) + 3 * cfg.dim + cfg.hidden_dim
    total = cfg.n_layers * blocks + cfg.dim + cfg.vocab_size * cfg.dim * (1 if cfg.tie_embeddings else 2)
    if not include_embedding and not cfg.tie_embeddings:
        total -= cfg.vocab_size * cfg.dim
    return total


def _proj(cfg: Config, features: int, name: str) -> BitLinear:
    return BitLinear(features, quantize=cfg.quant == "b1.58", packed=cfg.packed, dtype=cfg.dtype,
                     kernel_init=nn.initializers.normal(cfg.init_std), name=name)


class Attention(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BTD: jax.Array, cache: Optional[dict], pos: jax.Array):
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        H, K, Dh = cfg.n_heads, cfg.n_kv_heads, cfg.dh
        q_BTHD = _proj(cfg, H * Dh, "q_proj")(x_BTD).reshape(B, T, H, Dh)
        k_BTKD = _proj(cfg, K * Dh, "k_proj")(x_BTD).reshape(B, T, K, Dh)
        v_BTKD = _proj(cfg, K * Dh, "v_proj")(x_BTD).reshape(B, T, K, Dh)
        cos_TD, sin_TD = rope_cos_sin(pos + jnp.arange(T, dtype=jnp.int32), rope_inv_freq(Dh, cfg.rope_theta))
        q_BTHD = apply_rope(q_BTHD, cos_TD, sin_TD)
        k_BTKD = apply_rope(k_BTKD, cos_TD, sin_TD)
        if cache is None:
            out_BTHD = attention(q_BTHD, k_BTKD, v_BTKD, causal=True)
        else:
            cache = update_kv_cache(cache, k_BTKD, v_BTKD, pos)
            out_BTHD = attention(q_BTHD, cache["k"].astype(q_BTHD.dtype), cache["v"].astype(q_BTHD.dtype),
                                 causal=True, q_offset=pos, kv_len=pos + T)
        h_BTD = RMSNorm(eps=cfg.norm_eps, dtype=cfg.compute_dtype, name="sub_norm")(
            out_BTHD.reshape(B, T, H * Dh))
        return _proj(cfg, cfg.dim, "o_proj")(h_BTD), cache


class MLP(nn.Module):
    """down(ffn_sub_norm(act(gate(x)) * up(x)))."""
    cfg: Config

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        cfg = self.cfg
        gate_BTF = _proj(cfg, cfg.hidden_dim, "gate_proj")(x_BTD)
        up_BTF = _proj(cfg, cfg.hidden_dim, "up_proj")(x_BTD)
        act_BTF = jnp.square(nn.relu(gate_BTF)) if cfg.hidden_act == "relu2" else nn.silu(gate_BTF)
        h_BTF = RMSNorm(eps=cfg.norm_eps, dtype=cfg.compute_dtype, name="sub_norm")(act_BTF * up_BTF)
        return _proj(cfg, cfg.dim, "down_proj")(h_BTF)


class Block(nn.Module):
    """One pre-norm block; `(x, cache, pos) -> (x, new cache)` for nn.scan."""
    cfg: Config

    @nn.compact
    def __call__(self, x_BTD: jax.Array, cache: Optional[dict] = None, pos: Optional[jax.Array] = None):
        cfg = self.cfg
        dtype = cfg.compute_dtype
        pos = jnp.zeros((), jnp.int32) if pos is None else pos
        h_BTD = RMSNorm(eps=cfg.norm_eps, dtype=dtype, name="attn_norm")(x_BTD)
        h_BTD, cache = Attention(cfg, name="attn")(h_BTD, cache, pos)
        x_BTD = x_BTD + h_BTD.astype(x_BTD.dtype)
        h_BTD = MLP(cfg, name="mlp")(RMSNorm(eps=cfg.norm_eps, dtype=dtype, name="mlp_norm")(x_BTD))
        return x_BTD + h_BTD.astype(x_BTD.dtype), cache


class Head(nn.Module):
    """Untied LM head: x @ kernel [D, V] in the compute dtype with f32 accumulation."""
    cfg: Config

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        cfg = self.cfg
        kernel_DV = self.param("kernel", nn.initializers.normal(cfg.init_std), (cfg.dim, cfg.vocab_size),
                               jnp.float32)
        dtype = cfg.compute_dtype
        return linear(x_BTD.astype(dtype), kernel_DV.astype(dtype), preferred_element_type=jnp.float32)


class BitNet(nn.Module):
    """BitNet b1.58 causal LM following the contract in jaxmodels/models/__init__.py."""
    cfg: Config

    @adapters.scoped
    @nn.compact
    def __call__(self, tokens_BT: jax.Array, train: bool = False,
                 decode_state: Optional[dict] = None, pos: Optional[jax.Array] = None):
        """tokens_BT int32 -> logits_BTV f32; with decode_state -> (logits, new_state)."""
        cfg = self.cfg
        dtype = cfg.compute_dtype
        embed_VD = self.param("embed", nn.initializers.normal(cfg.init_std), (cfg.vocab_size, cfg.dim),
                              jnp.float32)
        x_BTD = jnp.take(embed_VD, tokens_BT, axis=0).astype(dtype)
        unroll = layer_unroll(cfg.scan_layers, cfg.n_layers)
        if decode_state is None:
            blocks = scan_blocks(Block, cfg.n_layers, cfg.remat, unroll=unroll, name="layers", cfg=cfg)
            x_BTD, _ = blocks(x_BTD)
        else:
            start = jnp.zeros((), jnp.int32) if pos is None else jnp.asarray(pos, jnp.int32)
            blocks = scan_blocks(Block, cfg.n_layers, "none", in_axes=(0, nn.broadcast), unroll=unroll,
                                 name="layers", cfg=cfg)
            x_BTD, decode_state = blocks(x_BTD, decode_state, start)
        x_BTD = RMSNorm(eps=cfg.norm_eps, dtype=dtype, name="norm")(x_BTD)
        # The head is full precision (as in every BitNet): f32 weights, f32 accumulation.
        if cfg.tie_embeddings:
            logits_BTV = project_out(x_BTD, embed_VD, dtype)
        else:
            logits_BTV = Head(cfg, name="lm_head")(x_BTD)
        logits_BTV = logits_BTV.astype(jnp.float32)
        if decode_state is None:
            return logits_BTV
        return logits_BTV, decode_state

    @nn.nowrap
    def init_decode_state(self, batch: int, max_len: int, dtype=None) -> dict:
        """An empty KV cache {"k", "v"}: [n_layers, batch, max_len, n_kv_heads, head_dim] each."""
        cfg = self.cfg
        return init_stacked_kv_cache(cfg.n_layers, batch, max_len, cfg.max_len, cfg.n_kv_heads, cfg.dh,
                                     dtype or cfg.compute_dtype)

    @nn.nowrap
    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, 6N + 12·L·H·Dh·T (the usual count: the ternary matmuls
        are counted as full matmuls, which is what they cost on today's tensor cores)."""
        cfg = self.cfg
        n = num_params(cfg, include_embedding=False)
        return 6.0 * n + 12.0 * cfg.n_layers * cfg.n_heads * cfg.dh * seq_len

    @nn.nowrap
    def trainable_mask(self, params) -> Optional[Any]:
        """model.adapters' mask (only LoRA trains), else None (everything). A packed base has
        no latent weights to train: only adapters train over it."""
        mask = adapters.trainable_mask(self, params)
        if self.cfg.packed and mask is None:
            raise ConfigError("packed=True is the inference layout (uint8 ternary weights): train the "
                              "latent weights with packed=False (e.g. init_from the bf16 master checkpoint), "
                              "or LoRA adapters over it with model.adapters")
        return mask
