// Dense matmul for XLA:CPU as an XLA FFI custom call: c[M, N] = op(a) @ op(b), row-major,
// op = transpose or not per operand (jaxmodels/kernels/cpu_matmul.py).
//
// Why: see cpu_matmul.py. The BLAS runs single-threaded; the output's rows (or columns,
// when it has few rows) are split into parts over XLA's intra-op pool (common.h).
#include "common.h"

namespace jaxmodels {
namespace {

constexpr int64_t kMinPart = 64;

ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                  ffi::ResultBuffer<ffi::F32> c, int32_t ta, int32_t tb) {
  if (!HaveSgemm()) return ffi::Error::InvalidArgument("jaxmodels cpu_matmul: no sgemm registered");
  auto da = a.dimensions(), db = b.dimensions();
  if (da.size() != 2 || db.size() != 2) return ffi::Error::InvalidArgument("jaxmodels cpu_matmul: 2-D operands");
  const int64_t M = ta ? da[1] : da[0], K = ta ? da[0] : da[1];
  const int64_t N = tb ? db[0] : db[1], Kb = tb ? db[1] : db[0];
  if (K != Kb) return ffi::Error::InvalidArgument("jaxmodels cpu_matmul: contracting sizes differ");
  const float *pa = a.typed_data(), *pb = b.typed_data();
  float* pc = c->typed_data();
  if (M == 0 || N == 0) return ffi::Error::Success();
  const int64_t lda = da[1], ldb = db[1];
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const bool by_rows = M >= N || M >= threads * 4 * kMinPart;
  const int64_t extent = by_rows ? M : N;
  const int64_t parts = std::max<int64_t>(1, std::min(threads, extent / kMinPart));
  const int64_t step = (extent + parts - 1) / parts;
  ParallelFor(pool, parts, [&](int64_t p) {
    const int64_t lo = p * step, hi = std::min(extent, lo + step);
    if (lo >= hi) return;
    if (by_rows) {  // rows lo..hi of c: rows of a (or columns, when a is transposed)
      const float* a0 = ta ? pa + lo : pa + lo * lda;
      Sgemm(ta, tb, hi - lo, N, K, 1.0f, a0, lda, pb, ldb, 0.0f, pc + lo * N, N);
    } else {        // columns lo..hi of c: columns of b (or rows, when b is transposed)
      const float* b0 = tb ? pb + lo * ldb : pb + lo;
      Sgemm(ta, tb, M, hi - lo, K, 1.0f, pa, lda, b0, ldb, 0.0f, pc + lo, N);
    }
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxmodels

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxmodels_cpu_matmul, jaxmodels::Matmul,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Attr<int32_t>("ta")
                                  .Attr<int32_t>("tb"));
