"""One function per op for model code, and the config switch that picks its implementation.

Config (`kernels` section of every config, jaxmodels/train/defaults.py):

    kernels.<op> = "auto" | "pallas" | "xla"        (cross_entropy also "dense"; attention, norm "cpu")

- "xla": the plain-JAX form, on every backend (for cross_entropy: the chunked form).
- "pallas": the Pallas kernel; compiled (Triton) on GPU, run in interpret mode elsewhere
  (correct but slow: for tests and for checking the kernel itself).
- "dense" (cross_entropy only): the full-logits reference, i.e. the loss as it was before
  the chunked form existed.
- "auto": Pallas on a GPU for the ops in PALLAS_FASTER_ON_GPU (the ops whose kernel was
  measured faster than the XLA form there by benchmarks/gpu_kernels.py), the XLA form
  everywhere else. The set is empty until a GPU run has measured it.
  Four exceptions on a CPU. matmul: "auto" there is "cpu" (f32 Dense matmuls through MKL,
  jaxmodels/kernels/cpu_matmul.py) when the C++ kernels call MKL (on Intel CPUs), else XLA's
  dot. norm: "auto" there is "cpu" (f32 LayerNorm / RMSNorm, DiT's modulate fused in, as one
  C++ custom call each way, jaxmodels/kernels/cpu_norm.py) whenever the C++ kernels build.
  cross_entropy: "auto" there is "dense". attention: "auto" there is
  "cpu", the C++ custom call of jaxmodels/kernels/cpu_attention.py (2-3x faster than the
  einsum path, forward + backward; BENCHMARKS.md "CPU speed per machine type") whenever it
  builds on this machine (jaxmodels.kernels.cpu_ffi.available()), else the einsum path. The chunked form
  recomputes each chunk's logits in the backward pass (4 head matmuls instead of 3) and
  measured 1.15-1.3x slower for the head alone and 1.2x for a vocabulary-heavy train step
  (BENCHMARKS.md, "Chunked cross-entropy"); a CPU has the memory. Configs that need the
  memory (gpt2_124m.py) set kernels.cross_entropy="xla" themselves.

`configure(cfg.kernels)` is called when a task is built (jaxmodels.tasks.build_task); the
choice is read when a function is traced, so set it before jitting.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax

from jaxmodels.config import ConfigError

MODES = ("auto", "pallas", "xla")
OPS = {
    # "cpu": the C++ custom call of jaxmodels/kernels/cpu_attention.py (f32 on a CPU).
    "attention": MODES + ("cpu",),
    "cross_entropy": MODES + ("dense",),
    # "cpu": the C++ custom call of jaxmodels/kernels/cpu_norm.py (f32 on a CPU).
    "norm": MODES + ("cpu",),
    "selective_scan": MODES,
    "rwkv7": MODES,
    "nf4_matmul": MODES,
    # Dense matmuls on a CPU (jaxmodels.layers.dense): "bf16" rounds f32 operands to bf16 and
    # accumulates in f32 (the CPU's bf16 units: AMX on recent Xeons); "cpu": f32 through the
    # C++ custom call to MKL (jaxmodels/kernels/cpu_matmul.py); "xla": XLA's dot.
    "matmul": ("auto", "xla", "bf16", "cpu"),
}
DEFAULTS = {op: "auto" for op in OPS}
# Ops whose Pallas kernel beat the XLA form on a GPU in benchmarks/gpu_kernels.py. No GPU
# run has been recorded yet, so none: "auto" means the XLA form on every backend.
PALLAS_FASTER_ON_GPU: frozenset = frozenset()

_settings: dict = dict(DEFAULTS)


def configure(section: Any = None) -> None:
    """Sets the implementation per op from a config's `kernels` section (None: defaults)."""
    values = dict(DEFAULTS)
    if section is not None:
        given = section.to_dict() if hasattr(section, "to_dict") else dict(section)
        unknown = sorted(set(given) - set(OPS))
        if unknown:
            raise ConfigError(f"unknown kernels op(s) {unknown}; valid: {', '.join(OPS)}")
        for op, mode in given.items():
            if mode not in OPS[op]:
                raise ConfigError(f"kernels.{op}={mode!r}; valid: {', '.join(OPS[op])}")
        values.update(given)
    _settings.clear()
    _settings.update(values)


def settings() -> Mapping[str, str]:
    return dict(_settings)


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def choice(op: str) -> str:
    """The implementation `op` runs with now: "pallas", "xla", "dense" (cross_entropy), "cpu"
    (attention, norm, matmul) or "bf16" (matmul)."""
    mode = _settings.get(op, "auto")
    if mode != "auto":
        return mode
    if on_gpu() and op in PALLAS_FASTER_ON_GPU:
        return "pallas"
    if op == "cross_entropy" and jax.default_backend() == "cpu":
        return "dense"
    if op in ("attention", "norm", "matmul") and jax.default_backend() == "cpu":
        from jaxmodels.kernels import cpu_ffi
        # The C++ kernels where they build; the dense matmuls only through MKL (via OpenBLAS
        # that route measured slower than XLA's dot).
        ok = cpu_ffi.available() and (op != "matmul" or cpu_ffi.blas_kind() == "mkl")
        return "cpu" if ok else "xla"
    return "xla"


def interpret() -> bool:
    """Pallas kernels run compiled on GPU and interpreted on every other backend."""
    return not on_gpu()


# ----------------------------------------------------------------------------- ops
def cross_entropy(hidden_NC, weight_VC, targets_N, *, bias_V=None, softcap: float = 0.0, dtype=None):
    """(nll_N, correct_N) from final hidden states and the head weight: kernels/cross_entropy.py."""
    from jaxmodels.kernels import cross_entropy as ce

    impl = choice("cross_entropy")
    kwargs = dict(bias_V=bias_V, softcap=softcap, dtype=dtype)
    if impl == "pallas":
        return ce.cross_entropy_pallas(hidden_NC, weight_VC, targets_N, interpret=interpret(), **kwargs)
    if impl == "dense":
        return ce.cross_entropy_dense(hidden_NC, weight_VC, targets_N, **kwargs)
    return ce.cross_entropy_chunked(hidden_NC, weight_VC, targets_N, **kwargs)


def attention(q_BTHD, k_BSKD, v_BSKD, *, causal: bool = True, window=None, softcap: float = 0.0, scale=None):
    """Aligned self-attention (no cache, no dropout): kernels/attention.py."""
    from jaxmodels.kernels import attention as attn

    kwargs = dict(causal=causal, window=window, softcap=softcap, scale=scale)
    if choice("attention") == "pallas":
        return attn.flash_attention(q_BTHD, k_BSKD, v_BSKD, interpret=interpret(), **kwargs)
    return attn.attention_xla(q_BTHD, k_BSKD, v_BSKD, **kwargs)


def norm(x, weight_C=None, bias_C=None, *, kind: str = "layer", eps: float = 1e-5, shift_BC=None,
         scale_BC=None, dtype=None):
    """LayerNorm / RMSNorm with optional adaLN modulate: kernels/norms.py."""
    from jaxmodels.kernels import norms

    kwargs = dict(kind=kind, eps=eps, shift_BC=shift_BC, scale_BC=scale_BC, dtype=dtype)
    impl = choice("norm")
    if impl == "cpu":
        from jaxmodels.kernels import cpu_norm
        if cpu_norm.supported(x, weight_C, bias_C, shift_BC=shift_BC, scale_BC=scale_BC, dtype=dtype):
            return cpu_norm.cpu_norm(x, weight_C, bias_C, **kwargs)
    if impl == "pallas":
        return norms.norm_pallas(x, weight_C, bias_C, interpret=interpret(), **kwargs)
    return norms.norm_xla(x, weight_C, bias_C, **kwargs)


def nf4_matmul(x, q, shape, dtype):
    """x @ W with W stored as NF4 (QLoRA's frozen base): kernels/nf4_matmul.py."""
    from jaxmodels.kernels import nf4_matmul as nf4

    if choice("nf4_matmul") == "pallas" and nf4.supported(shape):
        return nf4.nf4_matmul_pallas(x, q, shape, dtype, interpret=interpret())
    return nf4.nf4_matmul_xla(x, q, shape, dtype)


def selective_scan(x_BTE, dt_BTE, A_EN, B_BTN, C_BTN, h0_BEN, *, mode: str = "sequential", chunk: int = 64):
    """Mamba's selective scan -> (y_BTE, h_last_BEN): kernels/selective_scan.py. `mode` and
    `chunk` are the XLA form's (jaxmodels.scan modes); the kernel uses its own time chunks."""
    from jaxmodels.kernels import selective_scan as ss

    if choice("selective_scan") == "pallas" and x_BTE.shape[-1] % min(64, x_BTE.shape[-1]) == 0:
        return ss.selective_scan_pallas(x_BTE, dt_BTE, A_EN, B_BTN, C_BTN, h0_BEN, interpret=interpret())
    return ss.selective_scan_xla(x_BTE, dt_BTE, A_EN, B_BTN, C_BTN, h0_BEN, mode=mode, chunk=chunk)


def rwkv7_wkv(r, w, k, v, alpha, beta, S0, *, chunk: int = 16, recurrent: bool = False):
    """RWKV-7's WKV state update -> (y, S_T): kernels/rwkv7.py. `chunk` / `recurrent` pick
    the XLA form (models/rwkv7.py's chunked closed form or its step-by-step scan)."""
    from jaxmodels.kernels import rwkv7

    if choice("rwkv7") == "pallas":
        return rwkv7.wkv7_pallas(r, w, k, v, alpha, beta, S0, interpret=interpret())
    return rwkv7.wkv7_xla(r, w, k, v, alpha, beta, S0, chunk=chunk, recurrent=recurrent)
