"""Mixture-of-Experts feed-forward: a router and E stacked experts, shared by every decoder
family (GPT: GELU experts, LLaMA/Mixtral: SwiGLU experts).

Router (always f32, whatever the compute dtype): logits = x @ W_router [d, E], softmax over
the E experts, top-k. "mixtral" renormalises the k kept probabilities to sum to 1 (Mixtral,
Qwen2-MoE norm_topk_prob); "switch" keeps them as they are (Switch Transformer, top-1:
the output is scaled by the router's confidence). Optional jitter at train time multiplies
the router input by U(1 - eps, 1 + eps) (Switch Transformer, section 2.4).

Experts are stored stacked, [E, d, f] and [E, f, d], so all of them run as one grouped
matmul. Two dispatch paths compute the same function when nothing is dropped:
  dropless  (default) the T*k (token, expert) assignments are sorted by expert and fed to
            a grouped matmul, one contiguous group per expert: `jax.lax.ragged_dot` on
            GPU/TPU, a block-padded batched einsum on CPU (see grouped_matmul). No token is
            ever dropped.
  capacity  GShard / Switch / gpt-neox: each expert has a buffer of
            C = ceil(capacity_factor * T * k / E) slots; assignments fill it in priority
            order (every token's 1st choice before any 2nd choice, then token order), and
            the one-hot dispatch / combine tensors [T, E, C] move tokens with einsums.
            An assignment that finds its expert full is DROPPED: it contributes nothing,
            so a token whose every choice was dropped gets a zero FFN output and the block's
            residual connection carries it through unchanged (x + 0). The fraction of
            dropped assignments is logged as `moe_dropped`.

Losses and metrics, per MoE layer (sown into the "moe" collection, which the LM task
collects with `model.apply(..., mutable=["moe"])`; a plain apply skips them):
  aux      Switch load balancing  E * sum_i f_i * P_i, where f_i is the fraction of the T*k
           assignments routed to expert i (before any drop) and P_i the mean router
           probability of expert i. 1.0 at perfect balance for any k (HF's Mixtral loss sums
           over the k choices instead, i.e. k times this).
  z        ST-MoE router z-loss  mean_t logsumexp(logits_t)^2.
  load     f_i, [E]: the expert-load table.
  dropped  fraction of assignments dropped (0 for dropless).
  entropy  mean router entropy  -sum_i p_i log p_i  (log E = uniform).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError, check_choice
from jaxmodels.layers import quant
from jaxmodels.layers.mlp import gelu

DISPATCH = ("dropless", "capacity")
ROUTER_NORMS = ("mixtral", "switch")
STAT_NAMES = ("aux", "z", "load", "dropped", "entropy")


@dataclasses.dataclass(frozen=True)
class MoEFields:
    """The MoE fields a family Config inherits (so GPT and LLaMA share one definition).

    moe_experts = 0 keeps the family dense. With E > 0, every `moe_every`-th layer (layers
    moe_every-1, 2*moe_every-1, ...: Qwen2-MoE's decoder_sparse_step convention) has an MoE
    FFN in place of the dense one.
    """
    moe_experts: int = 0            # E; 0: dense model
    moe_top_k: int = 2              # experts per token
    moe_every: int = 1              # MoE FFN every n-th layer (1: every layer, as Mixtral)
    moe_hidden: int = 0             # expert intermediate size; 0: the family's dense FFN size
    moe_router: str = "mixtral"     # "mixtral": renormalise the top-k weights | "switch": raw probs
    moe_dispatch: str = "dropless"  # "dropless" (ragged_dot) | "capacity" (drops on overflow)
    moe_capacity_factor: float = 1.25
    moe_jitter: float = 0.0         # train-time router-input noise U(1-eps, 1+eps)
    moe_aux_weight: float = 0.01    # Switch load-balancing loss weight (summed over MoE layers)
    moe_z_weight: float = 0.001     # ST-MoE router z-loss weight (summed over MoE layers)

    def check_moe(self, what: str, n_layers: int) -> None:
        if self.moe_experts == 0:
            return
        check_choice(what, "moe_router", self.moe_router, ROUTER_NORMS)
        check_choice(what, "moe_dispatch", self.moe_dispatch, DISPATCH)
        if self.moe_experts < 0 or not 1 <= self.moe_top_k <= self.moe_experts:
            raise ConfigError(f"{what} model.moe_top_k={self.moe_top_k} must be in 1..moe_experts="
                              f"{self.moe_experts}")
        if self.moe_every < 1 or n_layers % self.moe_every:
            raise ConfigError(f"{what} model.moe_every={self.moe_every} must divide the number of "
                              f"layers ({n_layers}): the stack scans over groups of moe_every layers")
        if self.moe_capacity_factor <= 0:
            raise ConfigError(f"{what} model.moe_capacity_factor must be > 0")

    @property
    def is_moe(self) -> bool:
        return self.moe_experts > 0


def route(logits_TE: jax.Array, top_k: int, normalize: bool):
    """Softmax router in f32: (weights_TK, experts_TK int32, probs_TE)."""
    probs_TE = jax.nn.softmax(logits_TE.astype(jnp.float32), axis=-1)
    weights_TK, experts_TK = jax.lax.top_k(probs_TE, top_k)
    if normalize:
        weights_TK = weights_TK / jnp.sum(weights_TK, axis=-1, keepdims=True)
    return weights_TK, experts_TK.astype(jnp.int32), probs_TE


def router_stats(logits_TE: jax.Array, probs_TE: jax.Array, experts_TK: jax.Array) -> dict:
    """aux (Switch), z (ST-MoE), load f_i and entropy for one layer's routing."""
    E = probs_TE.shape[-1]
    load_E = jnp.mean(jax.nn.one_hot(experts_TK, E, dtype=jnp.float32), axis=(0, 1))
    importance_E = jnp.mean(probs_TE, axis=0)
    logz_T = jax.nn.logsumexp(logits_TE.astype(jnp.float32), axis=-1)
    entropy_T = -jnp.sum(probs_TE * jnp.log(jnp.maximum(probs_TE, 1e-30)), axis=-1)
    return {"aux": E * jnp.sum(load_E * importance_E), "z": jnp.mean(jnp.square(logz_T)),
            "load": load_E, "entropy": jnp.mean(entropy_T)}


# --------------------------------------------------------------------------- experts
def expert_ffn(x_ND: jax.Array, w: dict, matmul: Callable, kind: str, gelu_kind: str,
               bias: Callable) -> jax.Array:
    """The expert MLP written once for both dispatch paths.

    matmul(x, W[E, a, b]) applies each row's own expert; bias(b[E, f]) gives each row's bias.
    SwiGLU: down(silu(gate x) * up x); GELU: proj(gelu(fc x + b) ) + b.
    """
    if kind == "swiglu":
        h = nn.silu(matmul(x_ND, w["gate_proj"])) * matmul(x_ND, w["up_proj"])
        return matmul(h, w["down_proj"])
    h = matmul(x_ND, w["fc"])
    if "fc_bias" in w:
        h = h + bias(w["fc_bias"])
    y = matmul(gelu(h, gelu_kind), w["proj"])
    if "proj_bias" in w:
        y = y + bias(w["proj_bias"])
    return y


GROUPED_IMPLS = ("auto", "ragged_dot", "blocked")


@jax.custom_vjp
def gather_rows(x_NA: jax.Array, index_M: jax.Array, inverse_N: jax.Array) -> jax.Array:
    """x[index] (an out-of-range index gives a zero row) for an injective index, whose
    transpose is again a gather, by the inverse map (inverse[j] = the i with index[i] = j,
    out of range where none). Why: autodiff would transpose the gather into a scatter-add,
    which XLA:CPU runs row by row (it was 3/4 of the MoE layer's CPU time)."""
    return jnp.take(x_NA, index_M, axis=0, mode="fill", fill_value=0)


def _gather_rows_fwd(x_NA, index_M, inverse_N):
    return gather_rows(x_NA, index_M, inverse_N), (index_M, inverse_N)


def _gather_rows_bwd(res, g_MA):
    index_M, inverse_N = res
    return jnp.take(g_MA, inverse_N, axis=0, mode="fill", fill_value=0), None, None


gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


def inverse_index(index_M: jax.Array, n: int) -> jax.Array:
    """inverse[j] = i where index[i] = j (n rows; out of range, i.e. M, where no i maps to j)."""
    M = index_M.shape[0]
    return jnp.full((n,), M, jnp.int32).at[index_M].set(jnp.arange(M, dtype=jnp.int32), mode="drop")


def grouped_matmul(x_ND: jax.Array, w_EAB: jax.Array, group_sizes_E: jax.Array,
                   impl: str = "auto") -> jax.Array:
    """Rows sorted by expert, group e = the next group_sizes_E[e] rows: y_r = x_r @ w[e(r)].

    "ragged_dot": jax.lax.ragged_dot, a native grouped GEMM on GPU/TPU. On XLA:CPU (jax 0.10)
    it lowers to E dense matmuls over all N rows (measured 18x one dense matmul of the same
    FLOPs for E=8), so "auto" uses it on accelerators and "blocked" on CPU.
    "blocked": MegaBlocks-style: each group is padded to whole blocks of b rows, every block
    has one expert, and one batched einsum over blocks does all of them; the padding
    (< E * b rows) is the only waste. Same values as ragged_dot (tested).
    """
    if impl == "auto":
        impl = "ragged_dot" if jax.default_backend() != "cpu" else "blocked"
    if impl == "ragged_dot":
        return jax.lax.ragged_dot(x_ND, w_EAB, group_sizes_E, preferred_element_type=jnp.float32)
    N, A = x_ND.shape
    E = w_EAB.shape[0]
    b = int(min(128, max(8, 2 ** math.ceil(math.log2(max(1, N / (2 * E)))))))
    nb = -(-N // b) + E                                   # static upper bound on blocks used
    blocks_E = -(-group_sizes_E // b)                     # ceil(size / b) blocks per expert
    block_end_E = jnp.cumsum(blocks_E)
    group_end_E = jnp.cumsum(group_sizes_E)
    expert_N = jnp.searchsorted(group_end_E, jnp.arange(N), side="right")
    rank_N = jnp.arange(N) - (group_end_E - group_sizes_E)[expert_N]
    row_N = ((block_end_E - blocks_E)[expert_N] * b + rank_N).astype(jnp.int32)  # padded row
    source_P = inverse_index(row_N, nb * b)                # padded row -> sorted row (N: padding)
    x_pad = gather_rows(x_ND, source_P, row_N)
    block_expert = jnp.minimum(jnp.searchsorted(block_end_E, jnp.arange(nb), side="right"), E - 1)
    y_pad = jnp.einsum("nba,nac->nbc", x_pad.reshape(nb, b, A), w_EAB[block_expert],
                       preferred_element_type=jnp.float32)
    return gather_rows(y_pad.reshape(nb * b, -1), row_N, source_P)


def dropless_dispatch(x_TD: jax.Array, weights_TK: jax.Array, experts_TK: jax.Array, w: dict,
                      kind: str, gelu_kind: str, dtype, impl: str = "auto") -> jax.Array:
    """Sort the T*k assignments by expert, one ragged_dot per projection, unsort, combine."""
    T, D = x_TD.shape
    K = experts_TK.shape[1]
    E = next(iter(w.values())).shape[0]
    expert_N = experts_TK.reshape(-1)                     # N = T*K assignments, token-major
    order_N = jnp.argsort(expert_N, stable=True).astype(jnp.int32)
    inverse_N = inverse_index(order_N, T * K)
    sorted_expert_N = expert_N[order_N]
    group_sizes_E = jnp.bincount(expert_N, length=E).astype(jnp.int32)
    # Sorted row r is assignment order_N[r], i.e. token order_N[r] // K.
    xs_ND = gather_rows(jnp.repeat(x_TD.astype(dtype), K, axis=0), order_N, inverse_N)

    def matmul(a, kernel):
        return grouped_matmul(a.astype(dtype), kernel.astype(dtype), group_sizes_E, impl)

    def bias(b_EF):
        return b_EF[sorted_expert_N].astype(jnp.float32)

    ys_ND = expert_ffn(xs_ND, w, matmul, kind, gelu_kind, bias)
    y_ND = gather_rows(ys_ND, inverse_N, order_N)          # undo the sort
    y_TKD = y_ND.reshape(T, K, D)
    return jnp.einsum("tk,tkd->td", weights_TK, y_TKD.astype(jnp.float32))


def capacity_slots(experts_TK: jax.Array, num_experts: int, capacity: int):
    """(position_TK, keep_TK): each assignment's slot in its expert's buffer, and whether it
    fits. Priority: all first choices in token order, then all second choices, ..."""
    onehot_KTE = jax.nn.one_hot(experts_TK.T, num_experts, dtype=jnp.int32)
    K, T, E = onehot_KTE.shape
    flat_NE = onehot_KTE.reshape(K * T, E)
    position_NE = jnp.cumsum(flat_NE, axis=0) - 1
    position_KT = jnp.sum(position_NE * flat_NE, axis=-1).reshape(K, T)
    return position_KT.T, position_KT.T < capacity


def capacity_dispatch(x_TD: jax.Array, weights_TK: jax.Array, experts_TK: jax.Array, w: dict,
                      kind: str, gelu_kind: str, dtype, capacity_factor: float):
    """GShard/Switch dispatch with a per-expert capacity; returns (y_TD, dropped fraction)."""
    T, D = x_TD.shape
    K = experts_TK.shape[1]
    E = next(iter(w.values())).shape[0]
    capacity = max(1, int(math.ceil(capacity_factor * T * K / E)))
    position_TK, keep_TK = capacity_slots(experts_TK, E, capacity)
    # [T, K, E] x [T, K, C] -> [T, E, C] one-hot dispatch and weighted combine tensors.
    expert_TKE = jax.nn.one_hot(experts_TK, E, dtype=jnp.float32)
    slot_TKC = jax.nn.one_hot(jnp.where(keep_TK, position_TK, capacity), capacity, dtype=jnp.float32)
    dispatch_TEC = jnp.einsum("tke,tkc->tec", expert_TKE, slot_TKC)
    combine_TEC = jnp.einsum("tk,tke,tkc->tec", weights_TK, expert_TKE, slot_TKC)
    x_ECD = jnp.einsum("tec,td->ecd", dispatch_TEC.astype(dtype), x_TD.astype(dtype))

    def matmul(a_ECX, kernel_EXY):
        return jnp.einsum("ecx,exy->ecy", a_ECX.astype(dtype), kernel_EXY.astype(dtype),
                          preferred_element_type=jnp.float32)

    def bias(b_EF):
        return b_EF[:, None, :].astype(jnp.float32)

    y_ECD = expert_ffn(x_ECD, w, matmul, kind, gelu_kind, bias)
    y_TD = jnp.einsum("tec,ecd->td", combine_TEC, y_ECD.astype(jnp.float32))
    dropped = jnp.mean(jnp.logical_not(keep_TK).astype(jnp.float32))
    return y_TD, dropped


def expert_param_shapes(kind: str, d: int, f: int, num_experts: int, bias: bool) -> dict:
    """{name: shape} of the stacked expert params."""
    E = num_experts
    if kind == "swiglu":
        return {"gate_proj": (E, d, f), "up_proj": (E, d, f), "down_proj": (E, f, d)}
    shapes = {"fc": (E, d, f), "proj": (E, f, d)}
    if bias:
        shapes.update(fc_bias=(E, f), proj_bias=(E, d))
    return shapes


def moe_ffn_params(kind: str, d: int, f: int, num_experts: int, top_k: int, bias: bool) -> tuple[int, int]:
    """(total, active per token) parameter counts of one MoE FFN including the router."""
    one = sum(math.prod(s[1:]) for s in expert_param_shapes(kind, d, f, 1, bias).values())
    return num_experts * one + d * num_experts, top_k * one + d * num_experts


class MoE(nn.Module):
    """The MoE FFN: x[..., d] -> y[..., d] (f32), stats sown into the "moe" collection.

    kind: "swiglu" (gate_proj, up_proj, down_proj) or "gelu" (fc, proj and, with use_bias,
    fc_bias, proj_bias). proj_init: the init of the output projection (GPT-2 scales it).
    """
    num_experts: int
    top_k: int
    hidden: int
    kind: str = "swiglu"
    gelu: str = "tanh"
    use_bias: bool = False
    router: str = "mixtral"
    dispatch: str = "dropless"
    capacity_factor: float = 1.25
    jitter: float = 0.0
    grouped: str = "auto"           # dropless grouped matmul: "auto" | "ragged_dot" | "blocked"
    quant: str = "none"             # "nf4": frozen 4-bit experts (QLoRA), params <name>/kernel_nf4/...
    dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)
    proj_init: Optional[Callable] = None
    router_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x_BTD: jax.Array, deterministic: bool = True) -> jax.Array:
        check_choice("moe", "dispatch", self.dispatch, DISPATCH)
        check_choice("moe", "router", self.router, ROUTER_NORMS)
        lead, D = x_BTD.shape[:-1], x_BTD.shape[-1]
        x_TD = x_BTD.reshape(-1, D)
        w_router = self.param("router", self.router_init, (D, self.num_experts), jnp.float32)
        shapes = expert_param_shapes(self.kind, D, self.hidden, self.num_experts, self.use_bias)
        out_names = ("down_proj", "proj")
        w = {}
        for name, shape in shapes.items():
            if name.endswith("_bias"):
                init = nn.initializers.zeros
            elif name in out_names:
                init = self.proj_init or self.kernel_init
            else:
                init = self.kernel_init
            # Experts init like E independent dense layers: the init sees one [a, b] kernel.
            if self.quant == "nf4" and not name.endswith("_bias"):
                # Frozen 4-bit experts (jaxmodels.layers.quant), de-quantised for the matmuls;
                # stored like LoRADense's "kernel_nf4" so the converters fill them the same way.
                q = self.param(name, lambda key, s=shape, i=init: {
                    "kernel_nf4": quant.nf4_quantize(_stacked(i)(key, s, jnp.float32))})
                w[name] = quant.nf4_dequantize(jax.lax.stop_gradient(q["kernel_nf4"]), shape, self.dtype)
            else:
                w[name] = self.param(name, _stacked(init), shape, jnp.float32)

        router_in_TD = x_TD.astype(jnp.float32)
        if self.jitter > 0 and not deterministic:
            noise = jax.random.uniform(self.make_rng("dropout"), router_in_TD.shape, jnp.float32,
                                       1.0 - self.jitter, 1.0 + self.jitter)
            router_in_TD = router_in_TD * noise
        logits_TE = jnp.dot(router_in_TD, w_router, precision=jax.lax.Precision.HIGHEST)
        weights_TK, experts_TK, probs_TE = route(logits_TE, self.top_k, self.router == "mixtral")
        stats = router_stats(logits_TE, probs_TE, experts_TK)
        if self.dispatch == "dropless":
            y_TD = dropless_dispatch(x_TD, weights_TK, experts_TK, w, self.kind, self.gelu, self.dtype,
                                     self.grouped)
            stats["dropped"] = jnp.zeros((), jnp.float32)
        else:
            y_TD, stats["dropped"] = capacity_dispatch(x_TD, weights_TK, experts_TK, w, self.kind,
                                                       self.gelu, self.dtype, self.capacity_factor)
        for name, value in stats.items():
            self.sow("moe", name, value)
        return y_TD.reshape(*lead, D)


def _stacked(init: Callable) -> Callable:
    """An initializer for [E, a, b] that gives each expert init([a, b]) (fan-in of one expert)."""
    def stacked(key, shape, dtype=jnp.float32):
        keys = jax.random.split(key, shape[0])
        return jax.vmap(lambda k: init(k, shape[1:], dtype))(keys)
    return stacked


# --------------------------------------------------------------------------- task side
def collect(moe_vars: Any, aux_weight: float, z_weight: float) -> tuple[jax.Array, dict]:
    """The "moe" collection of one apply -> (loss term, scalar metrics).

    Every MoE layer's stats sit in the tree under some path with a leading layer axis (the
    scanned stack); the loss term is aux_weight * sum_layers aux + z_weight * sum_layers z.
    Metrics: moe_aux, moe_z (sums over layers), moe_dropped, moe_entropy (means over layers)
    and the per-layer load table moe_load/l{layer}_e{expert}.
    """
    per_name: dict = {name: [] for name in STAT_NAMES}
    for path, leaf in jax.tree_util.tree_flatten_with_path(moe_vars)[0]:
        names = [getattr(p, "key", None) for p in path]
        name = next((n for n in reversed(names) if n in per_name), None)
        if name is None:
            continue
        value = leaf
        per_name[name].append(value.reshape(-1, *value.shape[-1:]) if name == "load" else value.reshape(-1))
    if not per_name["aux"]:
        return jnp.zeros((), jnp.float32), {}
    stats = {n: jnp.concatenate(v, axis=0) for n, v in per_name.items()}
    aux, z = jnp.sum(stats["aux"]), jnp.sum(stats["z"])
    metrics = {"moe_aux": aux, "moe_z": z, "moe_dropped": jnp.mean(stats["dropped"]),
               "moe_entropy": jnp.mean(stats["entropy"])}
    load_LE = stats["load"]
    for layer in range(load_LE.shape[0]):
        for expert in range(load_LE.shape[1]):
            metrics[f"moe_load/l{layer}_e{expert}"] = load_LE[layer, expert]
    return aux_weight * aux + z_weight * z, metrics


# --------------------------------------------------------------------------- layer stacks
class BlockGroup(nn.Module):
    """`every` consecutive blocks, the last one with the MoE FFN: the unit that is scanned
    when MoE sits on every n-th layer (n > 1), so the stack is still one nn.scan (over
    n_layers / n groups) with params h/layer{j}/... of leading axis [n_layers / n].
    Per-layer caches arrive grouped as [n, ...] (see moe_stack)."""
    block: Any
    every: int
    block_kwargs: Any

    @nn.compact
    def __call__(self, x, cache=None, pos=None):
        new = []
        for j in range(self.every):
            c = None if cache is None else jax.tree.map(lambda a: a[j], cache)
            x, c = self.block(moe=(j == self.every - 1), name=f"layer{j}",
                                  **dict(self.block_kwargs))(x, c, pos)
            new.append(c)
        if cache is None:
            return x, None
        return x, jax.tree.map(lambda *a: jnp.stack(a), *new)


def moe_stack(block_cls, n_layers: int, fields: MoEFields, policy: str, *, in_axes=(),
              unroll: int = 1, name: Optional[str] = None, **block_kwargs) -> Callable:
    """The family's layer stack, `(x, *args) -> (x, ys)`, as one nn.scan in every case.

    Dense model or MoE on every layer: the scanned unit is block_cls(moe=fields.is_moe).
    MoE every n > 1 layers: the unit is a BlockGroup of n blocks; per-layer caches
    ([n_layers, ...], axis 0 of the scanned args) are regrouped to [n_layers / n, n, ...]
    on the way in and flattened back on the way out, so callers see the same layout.
    """
    from jaxmodels.layers.stack import scan_blocks

    every = fields.moe_every if fields.is_moe else 1
    if every == 1:
        return scan_blocks(block_cls, n_layers, policy, in_axes=in_axes, unroll=min(unroll, n_layers),
                           name=name, moe=fields.is_moe, **block_kwargs)
    groups = n_layers // every
    scanned = scan_blocks(BlockGroup, groups, policy, in_axes=in_axes, unroll=min(unroll, groups),
                          name=name, block=block_cls, every=every, block_kwargs=block_kwargs)
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,)

    def regroup(tree, shape_of):
        return jax.tree.map(lambda a: a.reshape(shape_of(a)), tree)

    def run(x, *args):
        args = [regroup(a, lambda t: (groups, every) + t.shape[1:]) if ax == 0 else a
                for a, ax in zip(args, axes)]
        x, ys = scanned(x, *args)
        if ys is not None:
            ys = regroup(ys, lambda t: (n_layers,) + t.shape[2:])
        return x, ys
    return run
