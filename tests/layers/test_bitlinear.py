"""BitLinear (b1.58) against the paper's formulas on hand-built tensors, its straight-through
gradients, dtype independence of the quantisation, and the 4-per-byte ternary packing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.layers.bitlinear import (BitLinear, act_quant, bitlinear, fake_quant_act,
                                        fake_quant_weight, packed_bitlinear, weight_quant)
from jaxmodels.layers.ternary_pack import pack_ternary, unpack_ternary, unpack_ternary_np


def test_weight_quant_is_absmean_roundclip():
    # gamma = mean|W| = (0.5 + 0.2 + 0.05 + 1.0) / 4 = 0.4375; W / gamma = 1.14, -0.46, 0.11, -2.29
    w = jnp.array([[0.5, -0.2], [0.05, -1.0]])
    w_q, s_w = weight_quant(w)
    np.testing.assert_array_equal(np.asarray(w_q), [[1, 0], [0, -1]])
    assert float(s_w) == pytest.approx(1 / 0.4375, rel=1e-7)
    np.testing.assert_allclose(np.asarray(fake_quant_weight(w)), [[0.4375, 0], [0, -0.4375]], rtol=1e-7)
    # An all-zero tensor: the 1e-5 floor keeps the scale finite and the weights zero.
    w_q0, s0 = weight_quant(jnp.zeros((3, 3)))
    assert np.all(np.asarray(w_q0) == 0) and np.isfinite(float(s0))


def test_act_quant_is_per_token_absmax_8bit():
    x = jnp.array([[0.1, -0.3, 0.25, 1.0],     # absmax 1:  x * 127  = 12.7, -38.1, 31.75, 127
                   [3.0, 0.0, -4.0, 1.0]])     # absmax 4:  x * 31.75 = 95.25, 0, -127, 31.75
    x_q, s_x = act_quant(x)
    np.testing.assert_array_equal(np.asarray(x_q), [[13, -38, 32, 127], [95, 0, -127, 32]])
    np.testing.assert_allclose(np.asarray(s_x)[:, 0], [127.0, 127.0 / 4.0], rtol=1e-7)
    np.testing.assert_allclose(np.asarray(fake_quant_act(x)), np.asarray(x_q) / np.asarray(s_x), rtol=1e-7)


def test_bitlinear_forward_equals_quantised_matmul():
    x = jnp.array([[[0.1, -0.3, 0.25, 1.0], [3.0, 0.0, -4.0, 1.0]]])
    w = jnp.array([[0.5, -0.2, 0.3], [0.05, -1.0, 0.0], [0.4, 0.4, -0.6], [-0.1, 0.9, 0.2]])
    x_q, s_x = (np.asarray(a) for a in act_quant(x))
    w_q, s_w = (np.asarray(a) for a in weight_quant(w))
    expected = (x_q @ w_q) / (s_x * s_w)
    np.testing.assert_allclose(np.asarray(bitlinear(x, w)), expected, rtol=1e-6)


def test_ste_gradients_are_identity_through_the_rounding():
    """dL/dx = g W~^T and dL/dW = x~^T g: the gradient of the quantised matmul with both
    rounding steps replaced by the identity (the FAQ's x + (q(x) - x).detach())."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    w = jax.random.normal(jax.random.key(1), (16, 8)) * 0.05
    g = jax.random.normal(jax.random.key(2), (2, 5, 8))
    _, vjp = jax.vjp(bitlinear, x, w)
    dx, dw = vjp(g)
    x_t = np.asarray(fake_quant_act(x)).reshape(-1, 16)
    w_t = np.asarray(fake_quant_weight(w))
    g2 = np.asarray(g).reshape(-1, 8)
    np.testing.assert_allclose(np.asarray(dx).reshape(-1, 16), g2 @ w_t.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dw), x_t.T @ g2, rtol=1e-5, atol=1e-6)
    # The same as autodiff through the stop_gradient formulation.
    dx2, dw2 = jax.grad(lambda a, b: jnp.sum((fake_quant_act(a) @ fake_quant_weight(b)) * g), (0, 1))(x, w)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(dx2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(dw2), rtol=1e-5, atol=1e-6)
    # Not the gradient of the latent matmul: the quantised operands appear.
    assert not np.allclose(np.asarray(dw), np.asarray(x).reshape(-1, 16).T @ g2, rtol=1e-3)


def test_quantisation_in_f32_whatever_the_compute_dtype():
    """bf16 inputs that round differently in bf16 give the same integers: the rounding is f32,
    and the integer-valued matmul is exact in bf16 with f32 accumulation."""
    x = jax.random.normal(jax.random.key(3), (4, 64))
    w = jax.random.normal(jax.random.key(4), (64, 32)) * 0.02
    y32 = bitlinear(x, w, jnp.float32)
    y16 = bitlinear(x, w, jnp.bfloat16)
    assert y16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y16), np.asarray(y32), rtol=1e-6, atol=1e-6)
    layer = BitLinear(32, dtype="bfloat16")
    params = layer.init(jax.random.key(0), x)["params"]
    assert params["kernel"].dtype == jnp.float32  # latent weights stay f32
    out = layer.apply({"params": params}, x.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16


def test_full_precision_switch_is_a_plain_matmul():
    x = jax.random.normal(jax.random.key(5), (3, 16))
    layer = BitLinear(8, quantize=False)
    params = layer.init(jax.random.key(0), x)["params"]
    np.testing.assert_allclose(np.asarray(layer.apply({"params": params}, x)),
                               np.asarray(x @ params["kernel"]), rtol=1e-6)


def test_pack_unpack_bit_exact_and_hf_bit_layout():
    # transformers' unpack_weights docstring: byte 0b10100001 in row 0 of a [2, C] packed
    # tensor gives rows 0, 2, 4, 6 of column 0 = 0, -1, 1, 1.
    packed = np.array([[0b10100001, 0b00011000], [0b10010000, 0b00001010]], np.uint8)
    expected = np.array([[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]])
    np.testing.assert_array_equal(unpack_ternary_np(packed, 8), expected)
    np.testing.assert_array_equal(pack_ternary(expected), packed)
    rng = np.random.default_rng(0)
    for rows in (8, 12, 13, 1):  # also rows not divisible by 4 (padded, trimmed)
        q = rng.integers(-1, 2, size=(rows, 7))
        p = pack_ternary(q)
        assert p.dtype == np.uint8 and p.shape == (-(-rows // 4), 7)
        np.testing.assert_array_equal(unpack_ternary_np(p, rows), q)
        np.testing.assert_array_equal(np.asarray(jax.jit(unpack_ternary, static_argnums=1)(p, rows)), q)
    with pytest.raises(ValueError, match="values in"):
        pack_ternary(np.array([[2, 0]]))


def test_packed_layer_equals_latent_layer():
    x = jax.random.normal(jax.random.key(6), (2, 3, 16))
    w = jax.random.normal(jax.random.key(7), (16, 12)) * 0.05
    w_q, s_w = weight_quant(w)
    packed = pack_ternary(np.asarray(w_q).T)  # HF order [out, in]
    y = packed_bitlinear(x, jnp.asarray(packed), 1.0 / s_w, 12)
    np.testing.assert_allclose(np.asarray(y), np.asarray(bitlinear(x, w)), rtol=1e-6, atol=1e-7)
    layer = BitLinear(12, packed=True)
    out = layer.apply({"params": {"packed": jnp.asarray(packed), "weight_scale": 1.0 / s_w}}, x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(y), rtol=1e-6)
    # The gradient w.r.t. x is the latent layer's straight-through one (LoRA trains before it).
    r = jax.random.normal(jax.random.key(8), y.shape)
    dx_packed = jax.grad(lambda v: jnp.sum(packed_bitlinear(v, jnp.asarray(packed), 1.0 / s_w, 12) * r))(x)
    dx_latent = jax.grad(lambda v: jnp.sum(bitlinear(v, w) * r))(x)
    np.testing.assert_allclose(np.asarray(dx_packed), np.asarray(dx_latent), rtol=1e-5, atol=1e-6)


def test_added_term_joins_before_the_rescale():
    """bitlinear / packed_bitlinear with `add`: a zero add gives the plain layer bit for bit
    even when a residual add follows in the same jitted fusion (added after the rescale it
    split XLA's multiply-add FMA and moved the result by an ulp); a nonzero add is a plain
    sum and its gradient is the output gradient."""
    x = jax.random.normal(jax.random.key(1), (2, 12, 32))
    w = jax.random.normal(jax.random.key(2), (32, 32)) * 0.05
    w_q, s_w = weight_quant(w)
    packed, scale = jnp.asarray(pack_ternary(np.asarray(w_q).T)), 1.0 / s_w
    zero = jnp.zeros((2, 12, 32))
    h = jax.random.normal(jax.random.key(3), (2, 12, 32)) * 0.1
    latent = lambda v, a=None: bitlinear(v, w, add=a)  # noqa: E731
    packed_layer = lambda v, a=None: packed_bitlinear(v, packed, scale, 32, add=a)  # noqa: E731
    for layer in (latent, packed_layer):
        plain = np.asarray(jax.jit(lambda v: v + layer(v))(x))
        np.testing.assert_array_equal(np.asarray(jax.jit(lambda v, a: v + layer(v, a))(x, zero)), plain)
        np.testing.assert_allclose(np.asarray(layer(x, h)), np.asarray(layer(x) + h), rtol=1e-6, atol=1e-6)
        dh = jax.grad(lambda a: jnp.sum(layer(x, a) * x))(h)
        np.testing.assert_allclose(np.asarray(dh), np.asarray(x), rtol=1e-6)
