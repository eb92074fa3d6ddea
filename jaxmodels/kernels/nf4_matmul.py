"""NF4 dequantise-matmul for QLoRA: x[..., in] @ W[in, out] with W stored as NF4
(jaxmodels/layers/quant.py: 4-bit codes, two per byte, one absmax per 64 consecutive values
of the row-major flattened W, the absmaxes double-quantised).

    y = f(x, q, shape=(in, out), dtype)          # q: the NF4 leaves of layers/quant.py

- `nf4_matmul_xla`: the reference, layers.quant.nf4_matmul (de-quantises the whole W in
  `dtype`, then one dot; XLA fuses what it can).
- `nf4_matmul_pallas`: one program per (block of rows of x, block of output columns) walks
  the input dimension in tiles; each weight tile is de-quantised where it is used (codes
  unpacked from the bytes, looked up among the 16 levels by selects, times the tile's
  block scales), so only bytes and block scales are read from memory and the full W never
  exists. The backward pass (a custom_vjp; W is frozen in QLoRA so only x gets a gradient)
  is the same tile walk for dx = dy @ W^T. Needs out % 64 == 0 (a 64-value block then never
  straddles two rows): true of every LLaMA projection; other shapes use the reference.
The block scales are de-quantised once per call (in x out / 64 floats, 1/32 of a bf16 W).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxmodels.layers import quant


def nf4_matmul_xla(x, q: dict, shape: tuple[int, int], dtype=jnp.float32):
    """The reference: layers.quant.nf4_matmul."""
    return quant.nf4_matmul(x, q, shape, dtype)


def supported(shape: tuple[int, int]) -> bool:
    return shape[1] % quant.BLOCK == 0


def _dequant_tile(codes_u8, scales, dtype):
    """[k, n/2] packed bytes + [k, n/64] block scales -> [k, n] weights in dtype."""
    k, half = codes_u8.shape
    codes = codes_u8.astype(jnp.int32)
    codes = jnp.stack([codes >> 4, codes & 15], axis=-1).reshape(k, 2 * half)
    values = jnp.zeros(codes.shape, jnp.float32)
    for level, v in enumerate(quant.NF4_LEVELS.tolist()):  # 16 selects: no gather needed
        values = jnp.where(codes == level, v, values)
    nb = scales.shape[1]
    scale = jnp.broadcast_to(scales[:, :, None], (k, nb, quant.BLOCK)).reshape(k, nb * quant.BLOCK)
    return (values.astype(dtype) * scale.astype(dtype))


def _fwd_kernel(x_ref, p_ref, s_ref, y_ref, *, bk, nk, dtype):
    from jax.experimental import pallas as pl

    def body(i, acc):
        x = x_ref[:, pl.ds(i * bk, bk)].astype(dtype)
        w = _dequant_tile(p_ref[pl.ds(i * bk, bk), :], s_ref[pl.ds(i * bk, bk), :], dtype)
        return acc + jnp.dot(x, w, preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, nk, body, jnp.zeros(y_ref.shape, jnp.float32))
    y_ref[...] = acc.astype(y_ref.dtype)


def _bwd_kernel(dy_ref, p_ref, s_ref, dx_ref, *, bn, nn_, dtype):
    from jax.experimental import pallas as pl

    def body(j, acc):
        dy = dy_ref[:, pl.ds(j * bn, bn)].astype(dtype)
        w = _dequant_tile(p_ref[:, pl.ds(j * bn // 2, bn // 2)],
                          s_ref[:, pl.ds(j * bn // quant.BLOCK, bn // quant.BLOCK)], dtype)
        return acc + jnp.dot(dy, w.T, preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, nn_, body, jnp.zeros(dx_ref.shape, jnp.float32))
    dx_ref[...] = acc.astype(dx_ref.dtype)


def _operands(q, shape, bk):
    """Packed codes as [in, out/2] bytes and block scales as [in, out/64], rows padded to bk
    (padded rows get scale 0: weight 0)."""
    n_in, n_out = shape
    packed = q["nf4"][: n_in * n_out // 2].reshape(n_in, n_out // 2)
    scales = quant.nf4_block_scales(q)[: n_in * n_out // quant.BLOCK].reshape(n_in, n_out // quant.BLOCK)
    extra = (-n_in) % bk
    if extra:
        packed = jnp.pad(packed, ((0, extra), (0, 0)))
        scales = jnp.pad(scales, ((0, extra), (0, 0)))
    return packed, scales


def _blocks(M, n_out, block_m, block_n):
    bm = min(block_m, max(16, 1 << (M - 1).bit_length()))
    bn = block_n if n_out % block_n == 0 else quant.BLOCK
    return bm, bn


def _forward(x2, q, shape, dtype, block_m, block_n, block_k, interpret):
    from jax.experimental import pallas as pl

    M, n_in = x2.shape
    n_out = shape[1]
    bm, bn = _blocks(M, n_out, block_m, block_n)
    packed, scales = _operands(q, shape, block_k)
    Kp = packed.shape[0]
    xp = jnp.pad(x2, ((0, (-M) % bm), (0, Kp - n_in)))
    Mp = xp.shape[0]
    y = pl.pallas_call(
        functools.partial(_fwd_kernel, bk=block_k, nk=Kp // block_k, dtype=dtype),
        grid=(Mp // bm, n_out // bn),
        in_specs=[pl.BlockSpec((bm, Kp), lambda i, j: (i, 0)),
                  pl.BlockSpec((Kp, bn // 2), lambda i, j: (0, j)),
                  pl.BlockSpec((Kp, bn // quant.BLOCK), lambda i, j: (0, j))],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((Mp, n_out), dtype), interpret=interpret, name="nf4_matmul_fwd",
    )(xp, packed, scales)
    return y[:M]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _nf4(x2, q, shape, dtype, block_m, block_n, block_k, interpret):
    return _forward(x2, q, shape, dtype, block_m, block_n, block_k, interpret)


def _nf4_fwd(x2, q, shape, dtype, block_m, block_n, block_k, interpret):
    return _forward(x2, q, shape, dtype, block_m, block_n, block_k, interpret), (x2, q)


def _nf4_bwd(shape, dtype, block_m, block_n, block_k, interpret, res, dy):
    from jax.experimental import pallas as pl

    x2, q = res
    M, n_in = x2.shape
    n_out = shape[1]
    bm, bn = _blocks(M, n_out, block_m, block_n)
    packed, scales = _operands(q, shape, block_k)
    Kp = packed.shape[0]
    dyp = jnp.pad(dy, ((0, (-M) % bm), (0, 0)))
    Mp = dyp.shape[0]
    dx = pl.pallas_call(
        functools.partial(_bwd_kernel, bn=bn, nn_=n_out // bn, dtype=dtype),
        grid=(Mp // bm, Kp // block_k),
        in_specs=[pl.BlockSpec((bm, n_out), lambda i, j: (i, 0)),
                  pl.BlockSpec((block_k, n_out // 2), lambda i, j: (j, 0)),
                  pl.BlockSpec((block_k, n_out // quant.BLOCK), lambda i, j: (j, 0))],
        out_specs=pl.BlockSpec((bm, block_k), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((Mp, Kp), jnp.float32), interpret=interpret, name="nf4_matmul_dx",
    )(dyp, packed, scales)
    # The NF4 leaves are frozen integers/constants: zero cotangents of their own types.
    zero_q = jax.tree.map(lambda a: jnp.zeros(a.shape, jax.dtypes.float0) if not jnp.issubdtype(a.dtype, jnp.floating)
                          else jnp.zeros_like(a), q)
    return dx[:M, :n_in].astype(x2.dtype), zero_q


_nf4.defvjp(_nf4_fwd, _nf4_bwd)


def nf4_matmul_pallas(x, q: dict, shape: tuple[int, int], dtype=jnp.float32, *, block_m: int = 32,
                      block_n: int = 128, block_k: int = 64, interpret: bool = False):
    """Pallas form; same signature and result as nf4_matmul_xla (needs out % 64 == 0)."""
    if not supported(shape):
        raise ValueError(f"nf4_matmul_pallas needs out % {quant.BLOCK} == 0, got shape {shape}")
    lead = x.shape[:-1]
    y = _nf4(x.reshape(-1, x.shape[-1]), q, tuple(shape), jnp.dtype(dtype), int(block_m), int(block_n),
             int(block_k), bool(interpret))
    return y.reshape(*lead, shape[1])
