"""Logical axis names of each family's params, in one table per family.

A rule is (regex, names): the first regex that matches a param's path ("h/attn/c_attn/kernel";
optimizer-state and EMA copies end in the same path, so they match the same rule) names its
trailing dims. Leading dims the rule does not name (the [n_layers] axis of a scanned stack)
stay unsplit. The logical names map onto mesh axes in sharding.py:

    heads, kv_heads, mlp, vocab, inner  -> "tensor" (Megatron-style column/row splits)
    embed                               -> "fsdp" first choice (else the largest divisible dim)
    None                                -> never split by tensor

Params no rule names (norm scales, biases, small embeddings) and families without a table
(Mamba, RWKV, RetNet, U-Net, ...) are still FSDP-sharded on their largest divisible dim;
they just get no tensor parallelism.
"""
from __future__ import annotations

RULES: dict[str, list[tuple[str, tuple]]] = {
    # GPT-2: c_attn is the fused [D, 3*H*hd] q|k|v projection, c_proj its output.
    "gpt": [
        (r"attn/c_attn/kernel$", ("embed", "heads")),
        (r"attn/c_attn/bias$", ("heads",)),
        (r"attn/c_proj/kernel$", ("heads", "embed")),
        (r"mlp/fc/kernel$", ("embed", "mlp")),
        (r"mlp/fc/bias$", ("mlp",)),
        (r"mlp/proj/kernel$", ("mlp", "embed")),
        (r"(^|/)wte$", ("vocab", "embed")),
        (r"(^|/)wpe$", (None, "embed")),
        (r"(^|/)lm_head/kernel$", ("embed", "vocab")),
    ],
    # LLaMA / Mixtral: separate q/k/v projections, SwiGLU MLP.
    "llama": [
        (r"attn/q_proj/kernel$", ("embed", "heads")),
        (r"attn/(k|v)_proj/kernel$", ("embed", "kv_heads")),
        (r"attn/o_proj/kernel$", ("heads", "embed")),
        (r"mlp/(gate|up)_proj/kernel$", ("embed", "mlp")),
        (r"mlp/down_proj/kernel$", ("mlp", "embed")),
        (r"(^|/)embed$", ("vocab", "embed")),
        (r"(^|/)lm_head/kernel$", ("embed", "vocab")),
    ],
    # DiT / PixArt: fused qkv, adaLN modulation (D -> 6D) split like an MLP's first layer.
    "dit": [
        (r"attn/qkv/kernel$", ("embed", "heads")),
        (r"attn/qkv/bias$", ("heads",)),
        (r"attn/proj/kernel$", ("heads", "embed")),
        (r"cross_attn/(q|kv)/kernel$", ("embed", "heads")),
        (r"cross_attn/proj/kernel$", ("heads", "embed")),
        (r"mlp/fc/kernel$", ("embed", "mlp")),
        (r"mlp/fc/bias$", ("mlp",)),
        (r"mlp/proj/kernel$", ("mlp", "embed")),
        (r"adaLN_modulation/kernel$", ("embed", "mlp")),
        (r"adaLN_modulation/bias$", ("mlp",)),
    ],
    # Mamba: FSDP only (its in_proj/out_proj could split the inner width; not done yet).
    "mamba": [],
}

# Logical names split over the "tensor" mesh axis.
TENSOR_NAMES = frozenset({"heads", "kv_heads", "mlp", "vocab", "inner"})


def rules_for(family: str) -> list[tuple[str, tuple]]:
    """The family's rules ([] for families that are FSDP-only)."""
    return RULES.get(family, [])
