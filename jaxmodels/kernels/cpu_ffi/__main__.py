"""python -m jaxmodels.kernels.cpu_ffi: builds the C++ CPU kernels and says whether they run here."""
import sys

from jaxmodels.kernels import cpu_ffi

ok = cpu_ffi.available()
print(f"C++ CPU kernels available: {ok}; BLAS: {cpu_ffi.blas_kind()} ({cpu_ffi.blas_library()})"
      + ("" if ok else f"; {cpu_ffi.reason()}"))
sys.exit(0 if ok else 1)
