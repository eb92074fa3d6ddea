"""The C++ CPU matmul (jaxmodels/kernels/cpu_matmul.py, MKL's sgemm on Intel CPUs) against XLA's dot."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.kernels import cpu_ffi, dispatch
from jaxmodels.kernels.cpu_matmul import cpu_matmul, supported
from jaxmodels.layers.dense import Dense, flat_dot_general

pytestmark = pytest.mark.skipif(not cpu_ffi.available(), reason=f"C++ CPU kernels: {cpu_ffi.reason()}")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _normal(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# Row splits (N >= O), column splits (few rows, wide output), one row, sizes not multiples of 64.
@pytest.mark.parametrize("N,I,O", [(5, 3, 7), (300, 64, 20), (130, 40, 200), (1, 8, 9), (257, 129, 131)])
def test_matches_xla_dot_forward_and_backward(N, I, O):
    x, w, c = _normal(0, N, I), _normal(1, I, O), _normal(2, N, O)
    loss = lambda mm: jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.tanh(mm(x, w)) * c), (0, 1)))
    want, want_grads = loss(jnp.matmul)(x, w)
    got, got_grads = loss(cpu_matmul)(x, w)
    np.testing.assert_allclose(cpu_matmul(x, w), x @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    for g, r in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * max(1.0, float(jnp.max(jnp.abs(r)))))


def test_same_bits_in_every_call():
    """Two separately compiled programs, same inputs: identical outputs."""
    x, w = _normal(3, 200, 96), _normal(4, 96, 150)
    a = jax.jit(cpu_matmul)(x, w)
    b = jax.jit(lambda x, w: cpu_matmul(x + 0.0, w) * 1.0)(x, w)
    np.testing.assert_array_equal(a, b)


def test_dense_layers_take_it_when_asked_and_auto_follows_the_blas():
    """kernels.matmul="cpu" sends f32 Dense matmuls (3-D inputs, transposed weights too) through
    the custom call; "xla" keeps XLA's dot; "auto" is "cpu" exactly when the kernels call MKL."""
    x, w = _normal(5, 2, 7, 16), _normal(6, 24, 16)
    nt = (((2,), (1,)), ((), ()))  # x @ w^T, as a tied output head does
    layer = Dense(24)
    params = layer.init(jax.random.key(0), x)
    trace = lambda: str(jax.make_jaxpr(lambda p: layer.apply(p, x))(params)) + str(
        jax.make_jaxpr(lambda w: flat_dot_general(x, w, nt))(w))
    assert dispatch.choice("matmul") == ("cpu" if cpu_ffi.blas_kind() == "mkl" else "xla")
    dispatch.configure({"matmul": "cpu"})
    assert trace().count("jaxmodels_cpu_matmul") == 2
    got = layer.apply(params, x), flat_dot_general(x, w, nt)
    dispatch.configure({"matmul": "xla"})
    assert "jaxmodels_cpu_matmul" not in trace()
    want = layer.apply(params, x), flat_dot_general(x, w, nt)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
    # bf16 operands never take it
    dispatch.configure({"matmul": "cpu"})
    xb = x.astype(jnp.bfloat16)
    assert "jaxmodels_cpu_matmul" not in str(jax.make_jaxpr(lambda w: flat_dot_general(xb, w, nt))(w.astype(jnp.bfloat16)))


def test_unsupported_operands_are_refused():
    assert supported(_normal(7, 4, 3), _normal(8, 3, 2))
    assert not supported(_normal(7, 4, 3).astype(jnp.bfloat16), _normal(8, 3, 2).astype(jnp.bfloat16))
    assert not supported(_normal(7, 2, 4, 3), _normal(8, 3, 2))
    with pytest.raises(ValueError, match="2-D f32"):
        cpu_matmul(_normal(7, 4, 3), _normal(8, 4, 2))


@pytest.mark.parametrize("policy,forwards", [("dots_with_no_batch_dims_saveable", 1), ("nothing_saveable", 2)])
def test_dot_saving_remat_keeps_its_output(policy, forwards):
    """The dot-saving policies keep the custom call's output as they keep a dot's: the backward
    pass does not run the forward matmul again (one forward + two backward calls per matmul)."""
    from jaxmodels.layers import stack

    x, w = _normal(9, 6, 8), _normal(10, 8, 8)
    block = lambda x: jnp.sum(jnp.tanh(cpu_matmul(jnp.tanh(x), w)))
    f = jax.checkpoint(block, policy=stack.REMAT_POLICIES[policy], prevent_cse=False)
    jaxpr = str(jax.make_jaxpr(jax.grad(f))(x))
    assert jaxpr.count("jaxmodels_cpu_matmul") == forwards + 2
    np.testing.assert_allclose(jax.grad(f)(x), jax.grad(block)(x), rtol=1e-5, atol=1e-6)


def _blas_in_subprocess(value: str) -> str:
    code = ("from jaxmodels.kernels import cpu_ffi, dispatch; "
            "print(cpu_ffi.blas_kind(), dispatch.choice('matmul'), cpu_ffi.reason())")
    env = dict(os.environ, JAXMODELS_CPU_BLAS=value, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1] + "\n" + done.stderr


def test_blas_override_and_a_bad_value():
    """JAXMODELS_CPU_BLAS=openblas keeps NumPy's BLAS, and "auto" matmuls then stay on XLA's dot
    (the OpenBLAS route measured slower); a bad value turns the kernels off with a reason."""
    assert _blas_in_subprocess("openblas").startswith("openblas xla")
    out = _blas_in_subprocess("atlas")
    assert out.startswith("None xla") and "JAXMODELS_CPU_BLAS='atlas'; valid: mkl, openblas" in out
    assert "RuntimeWarning: C++ CPU kernels off: JAXMODELS_CPU_BLAS='atlas'" in out  # told, not silent
