"""Four ternary values per byte, in the layout of transformers' BitNet quantizer.

A ternary matrix W_q [R, C] (values -1, 0, +1; R = out features, HF's [out, in] order)
is stored as uint8 [ceil(R/4), C]: with r = ceil(R/4), byte row j holds rows j, r + j,
2r + j, 3r + j of W_q in bits 0-1, 2-3, 4-5, 6-7, each as W_q + 1 in {0, 1, 2}. (Not four
consecutive rows: the row blocks are strided by r, so unpacking is four shifts and one
concatenation along the row axis.)

`pack_ternary` / `unpack_ternary_np` run on host (conversion, export); `unpack_ternary`
(the whole matrix) and `unpack_ternary_block` (one bit pair = one block of r rows, what a
packed BitLinear unpacks before each of its four dots) are the jnp versions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

VALUES_PER_BYTE = 4


def packed_rows(rows: int) -> int:
    return -(-rows // VALUES_PER_BYTE)


def pack_ternary(w_q: np.ndarray) -> np.ndarray:
    """Ternary [R, ...] (any numeric dtype, values in {-1, 0, 1}) -> uint8 [ceil(R/4), ...]."""
    w_q = np.asarray(w_q)
    values = np.unique(w_q)
    if not np.all(np.isin(values, (-1, 0, 1))):
        raise ValueError(f"pack_ternary needs values in {{-1, 0, 1}}; got {values[:8]}")
    rows = w_q.shape[0]
    r = packed_rows(rows)
    padded = np.zeros((VALUES_PER_BYTE * r,) + w_q.shape[1:], np.uint8)
    padded[:rows] = (w_q + 1).astype(np.uint8)
    packed = np.zeros((r,) + w_q.shape[1:], np.uint8)
    for i in range(VALUES_PER_BYTE):
        packed |= padded[i * r:(i + 1) * r] << np.uint8(2 * i)
    return packed


def unpack_ternary_np(packed: np.ndarray, rows: int) -> np.ndarray:
    """uint8 [ceil(R/4), ...] -> int8 ternary [R, ...] (host)."""
    packed = np.asarray(packed, np.uint8)
    parts = [(packed >> np.uint8(2 * i)) & np.uint8(3) for i in range(VALUES_PER_BYTE)]
    return (np.concatenate(parts, axis=0)[:rows].astype(np.int8) - 1).astype(np.int8)


def unpack_ternary(packed: jax.Array, rows: int, dtype=jnp.float32) -> jax.Array:
    """uint8 [ceil(R/4), C] -> ternary [R, C] in `dtype` (inside jit: XLA fuses the shifts
    into the consumer's operand read)."""
    parts = [jnp.right_shift(packed, jnp.uint8(2 * i)) & jnp.uint8(3) for i in range(VALUES_PER_BYTE)]
    w = jnp.concatenate(parts, axis=0)[:rows]
    return (w.astype(jnp.int8) - 1).astype(dtype)


def unpack_ternary_block(packed: jax.Array, i: int, dtype=jnp.float32) -> jax.Array:
    """Rows i*r .. i*r + r - 1 of the unpacked matrix (bit pair i of every byte), in `dtype`."""
    return ((jnp.right_shift(packed, jnp.uint8(2 * i)) & jnp.uint8(3)).astype(dtype) - 1).astype(dtype)
