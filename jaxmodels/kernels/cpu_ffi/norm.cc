// LayerNorm / RMSNorm for XLA:CPU, forward and backward, as XLA FFI custom calls
// (jaxmodels/kernels/cpu_norm.py: config kernels.norm="cpu", the CPU default), with DiT's
// adaLN modulate fused in.
//
// Why: XLA:CPU turns one LayerNorm into a chain of small thunks (two row reductions and the
// elementwise passes around them in the forward pass, four reductions and as many passes in the
// backward pass, each a separate trip through memory and through XLA's thunk executor). Here
// each call is one pass per row block, the blocks spread over XLA's intra-op threads (small
// calls stay on one thread). Whole train steps on the 2-core Intel VM: DiT-S/2 f32 recipe
// 0.96x, nanoGPT 6/6/384 0.99x the time with the jnp norm, the nanoGPT baby level
// (BENCHMARKS.md, "CPU speed per machine type", fifth run).
//
// Shapes: x [B, T, C] f32; w, b [C] (the affine; has_w / has_b say whether they exist, else a
// one-element dummy is passed); shift, scale [B, C] (the modulate; has_mod). Math as
// jaxmodels/kernels/norms.py's reference:
//   layer: x̂ = (x - mean) / sqrt(var + eps)      rms: x̂ = x / sqrt(mean(x²) + eps)
//   y = (x̂ w + b) (1 + scale[b]) + shift[b]
// Backward, with dpre = dy (1 + scale[b]) and g = dpre w:
//   dx = rstd (g - x̂ mean(g x̂) - mean(g))      (rms drops the mean(g) term)
//   dw = Σ dpre x̂, db = Σ dpre, dscale[b] = Σ_t dy (x̂ w + b), dshift[b] = Σ_t dy.
// The column sums are taken per block of rows (blocks never straddle two examples) into a
// scratch row each, then added in block order: the same bits whichever thread ran which block.
#include <cmath>
#include <type_traits>
#include <vector>

#include "common.h"

namespace jaxmodels {
namespace {

using ffi::Buffer;
using ffi::F32;
using ffi::ResultBuffer;

constexpr int64_t kBlockRows = 64;
// Row sums keep kLanes independent partial sums: 4 AVX-512 registers' worth, so the adds are
// not one dependent chain (a single-register accumulator ran at a quarter of the speed), and
// vectorised without -ffast-math. The lane of element i is i % kLanes and the lanes are
// combined in a fixed tree, so the order depends only on the row length, never on alignment.
constexpr int kLanes = 64;

// Handing a part to XLA's pool costs the caller ~20-35 us on the 2-core dev VM (measured:
// a 768 x 128 LayerNorm took 31 us on one thread and ~100 us split over two), so work
// below this many elements runs on the calling thread.
constexpr int64_t kMinParallelElements = int64_t{1} << 18;

template <typename F>
void SmallParallelFor(ffi::ThreadPool& pool, int64_t count, int64_t elements, F&& body) {
  if (elements < kMinParallelElements || count == 1) {
    for (int64_t i = 0; i < count; ++i) body(i);
  } else {
    ParallelFor(pool, count, body);
  }
}

inline float Combine(float* acc) {
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0];
}

// Sum of (p[i] - c) over the row (c = 0: the plain sum).
inline float Sum(const float* __restrict p, float c, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += p[i + j] - c;
  for (int j = 0; i < n; ++i, ++j) acc[j] += p[i] - c;
  return Combine(acc);
}

// Sum of (p[i] - c)^2.
inline float Squares(const float* __restrict p, float c, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += (p[i + j] - c) * (p[i + j] - c);
  for (int j = 0; i < n; ++i, ++j) acc[j] += (p[i] - c) * (p[i] - c);
  return Combine(acc);
}

// Sum of p[i] * q[i].
inline float Dot(const float* __restrict p, const float* __restrict q, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += p[i + j] * q[i + j];
  for (int j = 0; i < n; ++i, ++j) acc[j] += p[i] * q[i];
  return Combine(acc);
}

// Calls f(kRms, kW, kB, kMod) with the four flags as compile-time constants, so every inner
// loop is specialised (no branches in it) and vectorises.
template <typename F>
void WithFlags(bool rms, bool w, bool b, bool mod, F&& f) {
  auto pick = [](bool v, auto&& g) {
    if (v) g(std::true_type{}); else g(std::false_type{});
  };
  pick(rms, [&](auto R) { pick(w, [&](auto W) { pick(b, [&](auto B) { pick(mod, [&](auto M) {
    f(R, W, B, M); }); }); }); });
}

struct Shape {
  int64_t B = 0, T = 0, C = 0, blocks_per_example = 0;
  int64_t blocks() const { return B * blocks_per_example; }
};

// (mean, rstd) of one row.
template <bool kRms>
inline void Stats(const float* x, int64_t C, float eps, float* mean, float* rstd) {
  const float inv_c = 1.0f / static_cast<float>(C);
  const float m = kRms ? 0.0f : Sum(x, 0.0f, C) * inv_c;
  *mean = m;
  *rstd = 1.0f / std::sqrt(Squares(x, m, C) * inv_c + eps);
}

ffi::Error CheckShapes(const Buffer<F32>& x, const Buffer<F32>& w, const Buffer<F32>& b,
                       const Buffer<F32>& shift, const Buffer<F32>& scale, bool has_w, bool has_b,
                       bool has_mod, Shape* s) {
  auto dx = x.dimensions();
  if (dx.size() != 3) return ffi::Error::InvalidArgument("jaxmodels cpu_norm: x must be [B, T, C]");
  s->B = dx[0], s->T = dx[1], s->C = dx[2];
  if ((has_w && w.element_count() != s->C) || (has_b && b.element_count() != s->C))
    return ffi::Error::InvalidArgument("jaxmodels cpu_norm: weight / bias must have C elements");
  if (has_mod && (shift.element_count() != s->B * s->C || scale.element_count() != s->B * s->C))
    return ffi::Error::InvalidArgument("jaxmodels cpu_norm: shift / scale must be [B, C]");
  s->blocks_per_example = (s->T + kBlockRows - 1) / kBlockRows;
  return ffi::Error::Success();
}

// Rows [t0, t1) of example ex.
template <bool kRms, bool kW, bool kB, bool kMod>
void ForwardRows(const Shape& s, int64_t ex, int64_t t0, int64_t t1, const float* px,
                 const float* __restrict pw, const float* __restrict pb, const float* __restrict sh,
                 const float* __restrict sc, float* py, float eps) {
  const int64_t C = s.C;
  for (int64_t t = t0; t < t1; ++t) {
    const float* __restrict xr = px + (ex * s.T + t) * C;
    float* __restrict yr = py + (ex * s.T + t) * C;
    float mean, rstd;
    Stats<kRms>(xr, C, eps, &mean, &rstd);
    for (int64_t c = 0; c < C; ++c) {
      float v = (xr[c] - mean) * rstd;
      if constexpr (kW) v *= pw[c];
      if constexpr (kB) v += pb[c];
      if constexpr (kMod) v = v * (1.0f + sc[c]) + sh[c];
      yr[c] = v;
    }
  }
}

ffi::Error Forward(ffi::ThreadPool pool, Buffer<F32> x, Buffer<F32> w, Buffer<F32> b,
                   Buffer<F32> shift, Buffer<F32> scale, ResultBuffer<F32> y, int32_t rms,
                   float eps, int32_t has_w, int32_t has_b, int32_t has_mod) {
  Shape s;
  if (auto e = CheckShapes(x, w, b, shift, scale, has_w, has_b, has_mod, &s); e.failure()) return e;
  const int64_t C = s.C;
  const float *px = x.typed_data(), *pw = w.typed_data(), *pb = b.typed_data();
  const float *psh = shift.typed_data(), *psc = scale.typed_data();
  float* py = y->typed_data();
  if (s.B * s.T == 0 || C == 0) return ffi::Error::Success();
  WithFlags(rms, has_w, has_b, has_mod, [&](auto R, auto W, auto B, auto M) {
    SmallParallelFor(pool, s.blocks(), s.B * s.T * C, [&](int64_t blk) {
      const int64_t ex = blk / s.blocks_per_example;
      const int64_t t0 = (blk % s.blocks_per_example) * kBlockRows;
      const int64_t t1 = std::min(s.T, t0 + kBlockRows);
      ForwardRows<decltype(R)::value, decltype(W)::value, decltype(B)::value, decltype(M)::value>(
          s, ex, t0, t1, px, pw, pb, psh + (has_mod ? ex * C : 0), psc + (has_mod ? ex * C : 0), py, eps);
    });
  });
  return ffi::Error::Success();
}

// Rows [t0, t1) of example ex: dx, and this block's column sums in part (4 rows of C:
// d weight, d bias, d scale, d shift), which start at zero.
template <bool kRms, bool kW, bool kB, bool kMod>
void BackwardRows(const Shape& s, int64_t ex, int64_t t0, int64_t t1, const float* px,
                  const float* __restrict pw, const float* __restrict pb,
                  const float* __restrict sc, const float* pdy, float* pdx, float* __restrict part,
                  float* __restrict xhat, float* __restrict g, float eps) {
  const int64_t C = s.C;
  const float inv_c = 1.0f / static_cast<float>(C);
  float* __restrict p_dw = part;
  float* __restrict p_db = part + C;
  float* __restrict p_dsc = part + 2 * C;
  float* __restrict p_dsh = part + 3 * C;
  for (int64_t t = t0; t < t1; ++t) {
    const float* __restrict xr = px + (ex * s.T + t) * C;
    const float* __restrict dyr = pdy + (ex * s.T + t) * C;
    float* __restrict dxr = pdx + (ex * s.T + t) * C;
    float mean, rstd;
    Stats<kRms>(xr, C, eps, &mean, &rstd);
    for (int64_t c = 0; c < C; ++c) {
      const float xh = (xr[c] - mean) * rstd;
      const float dpre = kMod ? dyr[c] * (1.0f + sc[c]) : dyr[c];
      xhat[c] = xh;
      g[c] = kW ? dpre * pw[c] : dpre;
      if constexpr (kW) p_dw[c] += dpre * xh;
      if constexpr (kB) p_db[c] += dpre;
      if constexpr (kMod) {
        p_dsc[c] += dyr[c] * ((kW ? xh * pw[c] : xh) + (kB ? pb[c] : 0.0f));
        p_dsh[c] += dyr[c];
      }
    }
    const float proj = Dot(g, xhat, C) * inv_c;
    const float gmean = kRms ? 0.0f : Sum(g, 0.0f, C) * inv_c;
    for (int64_t c = 0; c < C; ++c) dxr[c] = (g[c] - xhat[c] * proj - gmean) * rstd;
  }
}

ffi::Error Backward(ffi::ThreadPool pool, Buffer<F32> x, Buffer<F32> w, Buffer<F32> b,
                    Buffer<F32> shift, Buffer<F32> scale, Buffer<F32> dy, ResultBuffer<F32> dx,
                    ResultBuffer<F32> dw, ResultBuffer<F32> db, ResultBuffer<F32> dshift,
                    ResultBuffer<F32> dscale, int32_t rms, float eps, int32_t has_w, int32_t has_b,
                    int32_t has_mod) {
  Shape s;
  if (auto e = CheckShapes(x, w, b, shift, scale, has_w, has_b, has_mod, &s); e.failure()) return e;
  if (dy.element_count() != x.element_count())
    return ffi::Error::InvalidArgument("jaxmodels cpu_norm: dy must have x's shape");
  const int64_t C = s.C, nb = s.blocks();
  const float *px = x.typed_data(), *pw = w.typed_data(), *pb = b.typed_data();
  const float *psc = scale.typed_data(), *pdy = dy.typed_data();
  float* pdx = dx->typed_data();
  // Per block: partial column sums (4 rows of C), then xhat and g scratch rows per block.
  std::vector<float> part(static_cast<size_t>(nb) * 4 * C, 0.0f);
  std::vector<float> rows(static_cast<size_t>(nb) * 2 * C);
  WithFlags(rms, has_w, has_b, has_mod, [&](auto R, auto W, auto B, auto M) {
    SmallParallelFor(pool, nb, s.B * s.T * C, [&](int64_t blk) {
      const int64_t ex = blk / s.blocks_per_example;
      const int64_t t0 = (blk % s.blocks_per_example) * kBlockRows;
      const int64_t t1 = std::min(s.T, t0 + kBlockRows);
      float* scratch = rows.data() + blk * 2 * C;
      BackwardRows<decltype(R)::value, decltype(W)::value, decltype(B)::value, decltype(M)::value>(
          s, ex, t0, t1, px, pw, pb, psc + (has_mod ? ex * C : 0), pdy, pdx,
          part.data() + blk * 4 * C, scratch, scratch + C, eps);
    });
  });
  // Column sums in block order (deterministic). Outputs that do not exist are one-element
  // dummies: zero them.
  float* out_dw = dw->typed_data();
  float* out_db = db->typed_data();
  float* out_dsh = dshift->typed_data();
  float* out_dsc = dscale->typed_data();
  out_dw[0] = out_db[0] = out_dsh[0] = out_dsc[0] = 0.0f;
  if (has_w) std::fill(out_dw, out_dw + C, 0.0f);
  if (has_b) std::fill(out_db, out_db + C, 0.0f);
  if (has_mod) {
    std::fill(out_dsh, out_dsh + s.B * C, 0.0f);
    std::fill(out_dsc, out_dsc + s.B * C, 0.0f);
  }
  for (int64_t blk = 0; blk < nb; ++blk) {
    const float* p = part.data() + blk * 4 * C;
    const int64_t ex = blk / s.blocks_per_example;
    if (has_w) for (int64_t c = 0; c < C; ++c) out_dw[c] += p[c];
    if (has_b) for (int64_t c = 0; c < C; ++c) out_db[c] += p[C + c];
    if (has_mod) {
      for (int64_t c = 0; c < C; ++c) out_dsc[ex * C + c] += p[2 * C + c];
      for (int64_t c = 0; c < C; ++c) out_dsh[ex * C + c] += p[3 * C + c];
    }
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxmodels

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxmodels_cpu_norm_fwd, jaxmodels::Forward,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Attr<int32_t>("rms")
                                  .Attr<float>("eps")
                                  .Attr<int32_t>("has_w")
                                  .Attr<int32_t>("has_b")
                                  .Attr<int32_t>("has_mod"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxmodels_cpu_norm_bwd, jaxmodels::Backward,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Attr<int32_t>("rms")
                                  .Attr<float>("eps")
                                  .Attr<int32_t>("has_w")
                                  .Attr<int32_t>("has_b")
                                  .Attr<int32_t>("has_mod"));
