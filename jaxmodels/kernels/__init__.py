"""Pallas kernels for the hot paths, each beside a plain-XLA reference with the same signature.

  attention.py       flash attention fwd + bwd (causal, GQA/MQA, sliding window, soft-cap)
  cross_entropy.py   the LM loss from hidden states + head weight: dense reference, chunked
                     plain-JAX form (any backend), Pallas form
  norms.py           fused LayerNorm / RMSNorm fwd + bwd with DiT's adaLN modulate
  selective_scan.py  Mamba's selective scan, chunked over time, state in registers
  rwkv7.py           RWKV-7's WKV state update
  nf4_matmul.py      QLoRA's NF4 dequantise-matmul, de-quantised tile by tile
  cpu_attention.py   attention on a CPU as a C++ XLA custom call (cpu_ffi/attention.cc), the
                     CPU counterpart of the flash kernel; cpu_ffi/ builds and loads it
  dispatch.py        config `kernels.<op>` = auto | pallas | xla, and the one function per op
                     that model code calls

Every Pallas kernel has a `custom_vjp` (jax cannot differentiate a raw pallas_call) and runs in
Pallas interpret mode on CPU, which is how tests/kernels checks it against its reference. The
C++ CPU kernel has one too, and tests/kernels/test_cpu_attention.py checks it against the
einsum path.
"""
