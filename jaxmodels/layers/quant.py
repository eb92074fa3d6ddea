"""NF4 4-bit weights with double-quantised block scales (QLoRA, Dettmers et al. 2023).

A weight matrix W[in, out] is flattened row-major and cut into blocks of 64 values. Each
block keeps its absmax s_b (f32) and each value the index (4 bits) of the nearest of the 16
NormalFloat levels to w / s_b. Two indices are packed per uint8 (first value in the high
nibble). Double quantisation: the block scales s_b are themselves stored in 8 bits: subtract
their mean m, cut into blocks of 256, keep one f32 absmax a_c per scale block and
round((s_b - m) / a_c * 127) as int8. (QLoRA stores the scales as 8-bit floats; a linear
int8 code of the mean-centred scales has the same size and is simpler to read.)

Memory per weight: 4 bits + 8/64 bits (scales) + 32/(64*256) bits (scale absmaxes)
= 0.5 byte + 0.127 bit.

The frozen weight is de-quantised on the fly inside the matmul (`nf4_matmul`): an XLA
reference that fuses gather + scale + dot; jaxmodels/kernels/nf4_matmul.py has the Pallas
kernel that de-quantises tile by tile (config kernels.nf4_matmul=pallas).

Every function takes `xp` (numpy or jax.numpy) so a converter can quantise on the host
tensor by tensor while `init` quantises under jit.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.layers.dense import linear

# The 16 NF4 levels: quantiles of N(0, 1) normalised to [-1, 1], with an exact 0
# (QLoRA paper, appendix; the values bitsandbytes uses).
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
# Nearest level by bisection on the midpoints (no [n, 16] distance matrix on the host).
NF4_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
NF4_MAX_GAP = float(np.max(np.diff(NF4_LEVELS)))

BLOCK = 64          # values per absmax block
SCALE_BLOCK = 256   # block scales per second-level block


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def nf4_layout(shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shapes and dtypes of the quantised leaves of a weight of `shape`."""
    n = int(np.prod(shape))
    n_pad = _ceil_to(n, BLOCK)
    nb_pad = _ceil_to(n_pad // BLOCK, SCALE_BLOCK)
    return {
        "nf4": ((n_pad // 2,), np.uint8),
        "scale_q": ((nb_pad,), np.int8),
        "scale_absmax": ((nb_pad // SCALE_BLOCK,), np.float32),
        "scale_mean": ((), np.float32),
    }


def nf4_quantize(w, xp=jnp) -> dict:
    """Quantises an array of any shape; returns {"nf4", "scale_q", "scale_absmax", "scale_mean"}."""
    layout = nf4_layout(w.shape)
    flat = xp.reshape(w.astype(xp.float32), (-1,))
    n_pad = layout["nf4"][0][0] * 2
    flat = xp.pad(flat, (0, n_pad - flat.shape[0]))
    blocks_NB = xp.reshape(flat, (-1, BLOCK))
    absmax_N = xp.max(xp.abs(blocks_NB), axis=1)
    safe_N = xp.where(absmax_N > 0, absmax_N, 1.0)
    codes = xp.searchsorted(xp.asarray(NF4_MIDPOINTS), (blocks_NB / safe_N[:, None]).reshape(-1))
    codes = codes.astype(xp.uint8).reshape(-1, 2)
    packed = (codes[:, 0] << 4) | codes[:, 1]
    # Double quantisation of the block scales.
    nb_pad = layout["scale_q"][0][0]
    mean = xp.mean(absmax_N)
    centred = xp.pad(absmax_N - mean, (0, nb_pad - absmax_N.shape[0])).reshape(-1, SCALE_BLOCK)
    amax_C = xp.max(xp.abs(centred), axis=1)
    amax_C = xp.where(amax_C > 0, amax_C, 1.0)
    scale_q = xp.clip(xp.round(centred / amax_C[:, None] * 127), -127, 127).astype(xp.int8)
    return {"nf4": packed.astype(xp.uint8), "scale_q": scale_q.reshape(-1),
            "scale_absmax": amax_C.astype(xp.float32), "scale_mean": xp.asarray(mean, xp.float32)}


def nf4_block_scales(q: dict, xp=jnp):
    """The de-quantised absmax of every 64-value block (f32, padded length)."""
    centred = q["scale_q"].astype(xp.float32).reshape(-1, SCALE_BLOCK) / 127
    return (centred * q["scale_absmax"][..., None]).reshape(-1) + q["scale_mean"]


def nf4_dequantize(q: dict, shape: tuple[int, ...], dtype=jnp.float32, xp=jnp):
    """The weight of `shape` back from its NF4 leaves, in `dtype`."""
    packed = q["nf4"]
    codes = xp.stack([packed >> 4, packed & 15], axis=-1).reshape(-1, BLOCK)
    # Straight to `dtype` (bf16 on GPU): no f32 copy of the weight is materialised.
    values_NB = xp.asarray(NF4_LEVELS).astype(dtype)[codes]
    scales_N = nf4_block_scales(q, xp)[: codes.shape[0]].astype(dtype)
    flat = (values_NB * scales_N[:, None]).reshape(-1)
    return flat[: int(np.prod(shape))].reshape(shape)


def nf4_matmul(x: jax.Array, q: dict, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """x[..., in] @ W[in, out] with W de-quantised on the fly (XLA reference)."""
    w_IO = nf4_dequantize(q, shape, dtype)
    return linear(x.astype(dtype), w_IO)


def nf4_bytes(shape: tuple[int, ...]) -> int:
    """Bytes the NF4 leaves of a weight of `shape` take."""
    return sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in nf4_layout(shape).values())
