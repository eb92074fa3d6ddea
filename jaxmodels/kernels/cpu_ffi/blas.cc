// The BLAS sgemm the handlers call (common.h): NumPy's, handed over from Python at load time
// (jaxmodels/kernels/cpu_ffi/__init__.py) through these two setters.
#include "common.h"

namespace jaxmodels {
Sgemm64 sgemm64 = nullptr;
Sgemm32 sgemm32 = nullptr;
}  // namespace jaxmodels

extern "C" void jaxmodels_set_sgemm64(void* fn) {
  jaxmodels::sgemm64 = reinterpret_cast<jaxmodels::Sgemm64>(fn);
}
extern "C" void jaxmodels_set_sgemm32(void* fn) {
  jaxmodels::sgemm32 = reinterpret_cast<jaxmodels::Sgemm32>(fn);
}
