"""NF4 + double quantisation: error bounds, packing, memory, and the fused matmul."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.layers import quant


def _blocks(x, n):
    flat = np.asarray(x, np.float32).reshape(-1)
    flat = np.pad(flat, (0, -len(flat) % quant.BLOCK))
    return flat.reshape(-1, quant.BLOCK)[:n]


@pytest.mark.parametrize("shape", [(96, 80), (7, 9)])  # 7x9: padding of blocks and scale blocks
def test_round_trip_within_nf4_bound(shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.01, 3, size=shape[-1]).astype(np.float32)
    q = quant.nf4_quantize(jnp.asarray(w))
    deq = np.asarray(quant.nf4_dequantize(q, shape))
    n_blocks = -(-w.size // quant.BLOCK)
    x_NB, err_NB = _blocks(w, n_blocks), _blocks(np.abs(w - deq), n_blocks)
    absmax_N = np.abs(x_NB).max(1)
    scales_N = np.asarray(quant.nf4_block_scales(q))[:n_blocks]
    # Double quantisation: each scale within half an int8 step of its block's range.
    step = np.repeat(np.asarray(q["scale_absmax"]), quant.SCALE_BLOCK)[:n_blocks] / 127
    assert np.all(np.abs(scales_N - absmax_N) <= step / 2 + 1e-6)
    # |x - level*s'| <= |x - level*s| + |s - s'| <= s*gap/2 + |s - s'|.
    bound_N = absmax_N * quant.NF4_MAX_GAP / 2 + np.abs(scales_N - absmax_N) + 1e-6
    assert np.all(err_NB.max(1) <= bound_N)
    # The bound is not vacuous: the worst block uses a good part of it.
    assert np.max(err_NB.max(1) / bound_N) > 0.5


def test_levels_round_trip_exactly_and_pack_two_per_byte():
    """Values on the NF4 grid of their block come back (up to the scale code) unchanged."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, size=(256 * 64,))
    codes[::64] = 15  # every block holds +1 so its absmax is exactly its scale
    w = quant.NF4_LEVELS[codes].reshape(256, 64) * 2.0
    q = quant.nf4_quantize(w, xp=np)
    assert q["nf4"].dtype == np.uint8 and q["nf4"].shape == (w.size // 2,)
    np.testing.assert_array_equal(q["nf4"][:4], (codes[0:8:2] << 4) | codes[1:8:2])
    np.testing.assert_allclose(quant.nf4_dequantize(q, w.shape, np.float32, xp=np), w, rtol=1e-6)


def test_numpy_and_jax_quantisers_agree():
    w = np.random.default_rng(2).standard_normal((64, 48)).astype(np.float32)
    q_np, q_jx = quant.nf4_quantize(w, xp=np), jax.jit(quant.nf4_quantize)(jnp.asarray(w))
    for k in q_np:
        np.testing.assert_allclose(np.asarray(q_jx[k]), q_np[k], rtol=1e-6, err_msg=k)
        assert np.asarray(q_jx[k]).dtype == q_np[k].dtype, k


def test_memory_is_half_a_byte_plus_scales():
    shape = (4096, 11008)
    bits = quant.nf4_bytes(shape) * 8 / np.prod(shape)
    assert 4.0 + 0.126 < bits < 4.0 + 0.128, bits


def test_matmul_equals_dequantised_reference():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    x = jnp.asarray(rng.standard_normal((2, 5, 64)).astype(np.float32))
    q = quant.nf4_quantize(jnp.asarray(w))
    ref = jnp.einsum("bti,io->bto", x, quant.nf4_dequantize(q, w.shape), precision="highest")
    out = jax.jit(lambda x, q: quant.nf4_matmul(x, q, w.shape))(x, q)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # bf16 compute stays close to the f32 reference.
    out16 = quant.nf4_matmul(x, q, w.shape, jnp.bfloat16)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(out16.astype(jnp.float32), ref, atol=0.15 * float(jnp.abs(ref).max()))
