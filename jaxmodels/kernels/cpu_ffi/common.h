// Shared by the CPU custom calls in this folder: the BLAS sgemm NumPy ships (handed over from
// Python at load time) and a parallel-for over XLA's own intra-op thread pool.
//
// Why XLA's pool and not the BLAS's threads: the BLAS's own threads compete with the XLA thunks
// that run beside a custom call (a DiT-S/2 train step with its dense matmuls sent to a
// multi-threaded OpenBLAS measured 1.3x slower than with XLA's own dots). So the
// BLAS runs single-threaded and each call splits its work into parts over XLA's pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace jaxmodels {

namespace ffi = xla::ffi;

// cblas_sgemm with 64-bit or 32-bit integers; the CBLAS enums are C ints.
using Sgemm64 = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                         const float*, int64_t, float, float*, int64_t);
using Sgemm32 = void (*)(int, int, int, int32_t, int32_t, int32_t, float, const float*, int32_t,
                         const float*, int32_t, float, float*, int32_t);
extern Sgemm64 sgemm64;
extern Sgemm32 sgemm32;

inline bool HaveSgemm() { return sgemm64 != nullptr || sgemm32 != nullptr; }

// Row-major C[m, n] = alpha * op(A) @ op(B) + beta * C, single-threaded BLAS.
inline void Sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
  const int fa = ta ? kTrans : kNoTrans, fb = tb ? kTrans : kNoTrans;
  if (sgemm64 != nullptr) {
    sgemm64(kRowMajor, fa, fb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    sgemm32(kRowMajor, fa, fb, static_cast<int32_t>(m), static_cast<int32_t>(n),
            static_cast<int32_t>(k), alpha, a, static_cast<int32_t>(lda), b,
            static_cast<int32_t>(ldb), beta, c, static_cast<int32_t>(ldc));
  }
}

// Runs body(p) for p in [0, count) on the calling thread and up to pool.num_threads() - 1
// tasks scheduled on XLA's intra-op pool. Each part is claimed once; whoever finds nothing left
// to claim waits only for parts already claimed, which running threads are computing, so a
// busy pool (every thread inside some other call) cannot deadlock: the caller then runs all the
// parts itself.
inline void ParallelFor(ffi::ThreadPool& pool, int64_t count,
                        const std::function<void(int64_t)>& body) {
  struct Shared {
    std::atomic<int64_t> next{0};
    int64_t count = 0, done = 0;
    std::mutex mu;
    std::condition_variable cv;
    std::function<void(int64_t)> body;
  };
  if (count <= 0) return;
  auto shared = std::make_shared<Shared>();
  shared->count = count;
  shared->body = body;
  auto work = [shared] {
    int64_t finished = 0;
    for (int64_t p; (p = shared->next.fetch_add(1)) < shared->count;) {
      shared->body(p);
      ++finished;
    }
    if (finished > 0) {
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->done += finished;
      if (shared->done == shared->count) shared->cv.notify_all();
    }
  };
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t helpers = std::min(threads, count) - 1;
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done == shared->count; });
}

}  // namespace jaxmodels
