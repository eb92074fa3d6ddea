"""Trainer tests compile the same tiny steps in several runs and subprocesses: share one
persistent XLA compilation cache for this session (numbers are unaffected: same executables)."""
import os

import jax
import pytest


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("xla_cache"))
    old = {k: os.environ.get(k) for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path  # subprocesses (launch.train) inherit it
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_compilation_cache_dir", None)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
