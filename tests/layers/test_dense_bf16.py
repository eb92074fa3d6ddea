"""The bf16 CPU matmul (jaxmodels.layers.dense.bf16_matmul) against f32 math on the same operands."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.kernels import dispatch
from jaxmodels.layers import stack
from jaxmodels.layers.dense import BF16_DOT_NAME, bf16_matmul, linear, project_out

bf16, f32 = jnp.bfloat16, jnp.float32
HI = jax.lax.Precision.HIGHEST


def _round(x):
    return x.astype(bf16).astype(f32)


@pytest.fixture
def operands():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(24, 48)), f32), jnp.asarray(rng.normal(size=(48, 40)), f32),
            jnp.asarray(rng.normal(size=(24, 40)), f32))


@pytest.fixture(autouse=True)
def default_kernels():
    dispatch.configure(None)
    yield
    dispatch.configure(None)


def test_forward_and_vjp_are_f32_math_on_bf16_operands(operands):
    x, w, g = operands
    y, vjp = jax.vjp(bf16_matmul, x.astype(bf16), w.astype(bf16))
    assert y.dtype == f32
    np.testing.assert_allclose(y, jnp.dot(_round(x), _round(w), precision=HI), rtol=1e-5, atol=1e-5)
    dx, dw = vjp(g)
    assert dx.dtype == dw.dtype == bf16
    # The gradient is rounded to bf16 once, the dots accumulate in f32, the results round to bf16.
    want_dx = jnp.dot(_round(g), _round(w).T, precision=HI).astype(bf16)
    want_dw = jnp.dot(_round(x).T, _round(g), precision=HI).astype(bf16)
    np.testing.assert_allclose(dx.astype(f32), want_dx.astype(f32), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(dw.astype(f32), want_dw.astype(f32), rtol=1e-2, atol=1e-2)
    # ...and no coarser than one bf16 rounding of the exact f32 result on nearly every entry.
    assert float(jnp.mean(dx.astype(f32) == want_dx.astype(f32))) > 0.95


def test_config_switch_rounds_only_the_matmul_operands(operands):
    x, w, _ = operands
    x3 = x.reshape(4, 6, 48)
    plain = linear(x3, w)
    np.testing.assert_allclose(plain, jnp.dot(x3, w, precision=HI), rtol=1e-5, atol=1e-4)
    dispatch.configure({"matmul": "bf16"})
    rounded = linear(x3, w)
    assert rounded.dtype == f32 and rounded.shape == (4, 6, 40)
    np.testing.assert_allclose(rounded, jnp.dot(_round(x3), _round(w), precision=HI), rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(rounded - plain))) > 1e-3  # it really did round
    # The tied head (contracting the table's last axis) takes the same path.
    table = w.T
    np.testing.assert_allclose(project_out(x3, table), jnp.dot(_round(x3), _round(table).T, precision=HI),
                               rtol=1e-5, atol=1e-5)


def test_grad_through_the_switch_matches_rounded_reference(operands):
    x, w, _ = operands
    dispatch.configure({"matmul": "bf16"})
    gx, gw = jax.grad(lambda a, b: jnp.sum(jnp.sin(linear(a, b))), (0, 1))(x, w)
    assert gx.dtype == gw.dtype == f32
    dispatch.configure(None)
    rx, rw = jax.grad(lambda a, b: jnp.sum(jnp.sin(linear(a, b))), (0, 1))(_round(x), _round(w))
    np.testing.assert_allclose(gx, rx, rtol=3e-2, atol=3e-2)
    np.testing.assert_allclose(gw, rw, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("policy,dots", [("dots_with_no_batch_dims_saveable", 3), ("nothing_saveable", 4)])
def test_dot_saving_remat_policies_keep_the_bf16_output(operands, policy, dots):
    """Saved: 1 forward dot + 2 backward dots; recomputed (nothing_saveable): one more."""
    x, w, _ = operands
    f = jax.checkpoint(lambda a, b: jnp.sum(jnp.tanh(linear(a, b)) ** 2),
                       policy=stack.REMAT_POLICIES[policy], prevent_cse=False)
    dispatch.configure({"matmul": "bf16"})
    jaxpr = str(jax.make_jaxpr(jax.grad(f, (0, 1)))(x, w))
    assert jaxpr.count("dot_general[") == dots
    assert f"name={BF16_DOT_NAME}" in jaxpr


def test_tiny_gpt_learns_the_same_with_bf16_matmuls():
    """Memorising one batch: the bf16-matmul run's loss curve follows the f32 run's."""
    import optax

    from jaxmodels.models import build_model

    model = build_model(dict(name="gpt", vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=64,
                             remat="dots_with_no_batch_dims_saveable"))
    tokens = jax.random.randint(jax.random.key(1), (8, 33), 0, 64, dtype=jnp.int32)
    params0 = model.init(jax.random.key(0), tokens[:, :-1])["params"]
    opt = optax.adam(3e-3)

    def loss_fn(p):
        logits = model.apply({"params": p}, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    def train(mode):
        dispatch.configure({"matmul": mode})

        @jax.jit
        def step(p, s):
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, s = opt.update(g, s)
            return optax.apply_updates(p, u), s, loss

        p, s, losses = params0, opt.init(params0), []
        for _ in range(40):
            p, s, loss = step(p, s)
            losses.append(float(loss))
        return np.array(losses)

    f32_losses, bf16_losses = train("xla"), train("bf16")
    assert f32_losses[-1] < 0.5 * f32_losses[0]  # it did learn
    np.testing.assert_allclose(bf16_losses, f32_losses, rtol=0.05, atol=0.02)
    assert not np.array_equal(bf16_losses, f32_losses)  # and the bf16 path was taken
