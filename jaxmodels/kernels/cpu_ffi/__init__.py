"""Builds and loads the C++ custom calls for XLA:CPU in this folder (attention.cc, matmul.cc,
norm.cc; blas.cc).

Why C++ on a CPU: XLA:CPU (jax 0.10) runs some transformer hot paths far below what the CPU
can do, where PyTorch calls oneDNN/MKL kernels (BENCHMARKS.md, "CPU speed per machine type").
These handlers are the CPU's counterpart of the Pallas kernels: each calls a BLAS sgemm
single-threaded and spreads its parts over XLA's own intra-op threads (common.h says why).

Which BLAS (`blas_kind()`): Intel's MKL (the `mkl` wheel, a dependency on Linux x86-64) on an
Intel CPU, NumPy's own OpenBLAS everywhere else. On the Intel Xeon dev VM MKL's sequential
sgemm ran the attention kernel 1.3x faster than OpenBLAS, and the dense matmuls 1.15x faster
than XLA's own dot (BENCHMARKS.md); MKL was not measured on an AMD CPU (it is known to take
slower code paths on non-Intel CPUs), so there the kernels keep OpenBLAS. The environment
variable JAXMODELS_CPU_BLAS=mkl|openblas overrides the choice.

The sources are compiled on first use with the system C++ compiler (`CXX`, else c++ / g++ /
clang++) against the FFI headers jaxlib ships (jax.ffi.include_dir()), with -march=native,
into ~/.cache/jaxmodels/kernels ($JAXMODELS_CACHE respected, as for the other caches), keyed
by the sources, the flags, the jax version and the CPU, so a second run loads the cached
library. The library is handed the BLAS's cblas_sgemm address; that BLAS is set to one thread
(the parts are the parallelism).

`available()` says whether this works here; when it does not (no compiler, no BLAS with a
CBLAS sgemm), `reason()` says why. The "auto" kernels then keep XLA's own ops, and asking
for a C++ kernel by name fails with that sentence.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from typing import Optional

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("blas.cc", "attention.cc", "matmul.cc", "norm.cc")
HEADERS = ("common.h",)
# Handler symbol in the library -> the name XLA knows the target by (the same).
TARGETS = ("jaxmodels_cpu_attention_fwd", "jaxmodels_cpu_attention_bwd", "jaxmodels_cpu_matmul",
           "jaxmodels_cpu_norm_fwd", "jaxmodels_cpu_norm_bwd")
# CBLAS sgemm symbols tried in NumPy's BLAS, with their integer width.
_SGEMM = (("scipy_cblas_sgemm64_", 64), ("cblas_sgemm64_", 64), ("scipy_cblas_sgemm", 32),
          ("cblas_sgemm", 32))
_SET_THREADS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                "scipy_openblas_set_num_threads", "openblas_set_num_threads")

_state: dict = {}


def _cache_dir() -> str:
    from jaxmodels.train.flops import cache_dir
    return os.path.join(cache_dir(), "kernels")


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() + platform.machine()


def _numpy_blas_libraries() -> list:
    """Shared libraries NumPy carries (the wheel's numpy.libs / .dylibs) or its own module."""
    here = os.path.dirname(np.__file__)
    found = sorted(glob.glob(os.path.join(here, os.pardir, "numpy.libs", "*blas*.so*")))
    found += sorted(glob.glob(os.path.join(here, ".dylibs", "*blas*.dylib")))
    found += sorted(glob.glob(os.path.join(here, "_core", "_multiarray_umath*.so")))
    return found


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _mkl_runtime() -> Optional[str]:
    """Path of libmkl_rt from the installed `mkl` wheel, or None."""
    try:
        import importlib.metadata as metadata
        dist = metadata.distribution("mkl")
    except Exception:  # noqa: BLE001 - not installed (or unreadable metadata): no MKL
        return None
    for f in dist.files or ():
        if os.path.basename(str(f)).startswith("libmkl_rt.so"):
            path = os.path.realpath(str(dist.locate_file(f)))
            if os.path.exists(path):
                return path
    return None


_MKL_SEQUENTIAL = 1  # MKL_THREADING_SEQUENTIAL for MKL_Set_Threading_Layer


def _find_mkl():
    """(sgemm address, integer width, library path, thread setter) from MKL, or None."""
    path = _mkl_runtime()
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    # Sequential MKL: no OpenMP/TBB threads of its own beside XLA's (the parts are the
    # parallelism). Must be set before MKL's first call.
    lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
    lib.MKL_Set_Threading_Layer(_MKL_SEQUENTIAL)
    return ctypes.cast(lib.cblas_sgemm, ctypes.c_void_p).value, 32, path, lib.MKL_Set_Num_Threads


def _find_blas():
    """(kind, sgemm address, integer width, library path, thread setter), or None: MKL on an
    Intel CPU when the `mkl` wheel is installed, NumPy's OpenBLAS otherwise
    (JAXMODELS_CPU_BLAS=mkl|openblas overrides)."""
    wanted = os.environ.get("JAXMODELS_CPU_BLAS", "").strip().lower()
    if wanted not in ("", "mkl", "openblas"):
        raise RuntimeError(f"JAXMODELS_CPU_BLAS={wanted!r}; valid: mkl, openblas (or unset)")
    if wanted == "mkl" or (not wanted and _cpu_vendor() == "GenuineIntel"):
        found = _find_mkl()
        if found is not None:
            return ("mkl",) + found
        if wanted == "mkl":
            raise RuntimeError("JAXMODELS_CPU_BLAS=mkl but the mkl package is not installed "
                               "(pip install mkl)")
    found = _find_sgemm()
    return None if found is None else ("openblas",) + found


def _find_sgemm():
    """(sgemm address, integer width, library path, thread setter) from NumPy's BLAS, or None."""
    for path in _numpy_blas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol, width in _SGEMM:
            fn = getattr(lib, symbol, None)
            if fn is None:
                continue
            setter = next((getattr(lib, s) for s in _SET_THREADS if hasattr(lib, s)), None)
            if setter is not None:
                return ctypes.cast(fn, ctypes.c_void_p).value, width, path, setter
    return None


# No -ffast-math: its reassociated sums and libm's vector expf (which rounds differently from
# the scalar one used on a row's unaligned ends) made results depend on buffer alignment, so the
# same inputs could give different bits in two calls. attention.cc vectorises without it.
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-mprefer-vector-width=512", "-std=c++17",
         "-shared", "-fPIC")


def _compile() -> str:
    """Builds the sources once per (sources, flags, jax version, CPU); returns the library path."""
    digest = hashlib.sha256(" ".join((jax.__version__, _cpu_id()) + FLAGS).encode())
    for name in SOURCES + HEADERS:
        with open(os.path.join(HERE, name), "rb") as f:
            digest.update(f.read())
    out = os.path.join(_cache_dir(), f"cpu_ffi_{digest.hexdigest()[:16]}.so")
    if os.path.exists(out):
        return out
    compiler = (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
                or shutil.which("clang++"))
    if compiler is None:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    os.makedirs(_cache_dir(), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=_cache_dir())
    os.close(fd)
    cmd = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), *[os.path.join(HERE, s) for s in SOURCES],
           "-o", tmp, "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(tmp)
        lines = done.stderr.strip().splitlines()
        first = next((l for l in lines if "error" in l), lines[-1] if lines else "?")
        raise RuntimeError(f"compiling the CPU kernels failed: {first.strip()}")
    os.replace(tmp, out)  # atomic: a concurrent process sees no file or the whole file
    return out


def _load() -> None:
    if "ok" in _state:
        return
    try:
        found = _find_blas()
        if found is None:
            raise RuntimeError("no MKL and NumPy's libraries hold no cblas_sgemm with a thread "
                               "setter (a NumPy built without its bundled OpenBLAS)")
        kind, address, width, blas, set_threads = found
        lib = ctypes.CDLL(_compile())
        setter = lib.jaxmodels_set_sgemm64 if width == 64 else lib.jaxmodels_set_sgemm32
        setter.argtypes = [ctypes.c_void_p]
        setter(address)
        set_threads.argtypes = [ctypes.c_int]
        set_threads(1)  # single-threaded BLAS: the handlers split their work over XLA's threads
        for target in TARGETS:
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)), platform="cpu")
        _state.update(ok=True, lib=lib, blas=blas, kind=kind, reason="")
    except Exception as e:  # noqa: BLE001 - any failure means "not available", with the reason
        _state.update(ok=False, blas=None, kind=None, reason=f"{type(e).__name__}: {e}")
        if "JAXMODELS_CPU_BLAS" in str(e):  # the user's setting is wrong: say so, do not just fall back
            warnings.warn(f"C++ CPU kernels off: {e}", RuntimeWarning, stacklevel=2)


def available() -> bool:
    """Whether the C++ CPU kernels can run here (compiles them on the first call)."""
    _load()
    return _state["ok"]


def reason() -> str:
    """Why they cannot run here ("" when they can)."""
    _load()
    return _state["reason"]


def blas_library() -> Optional[str]:
    _load()
    return _state.get("blas")


def blas_kind() -> Optional[str]:
    """"mkl" or "openblas": the BLAS the kernels call (None when they cannot run here)."""
    _load()
    return _state.get("kind")


def require(what: str) -> None:
    """Raises the one-line reason when the kernels cannot run here."""
    if not available():
        raise RuntimeError(f"{what} needs the C++ CPU kernels, which cannot run here: {reason()}")
