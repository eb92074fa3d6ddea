// Scaled dot-product attention for XLA:CPU, forward and backward, as XLA FFI custom calls
// (jaxmodels/kernels/cpu_attention.py: config kernels.attention="cpu", the CPU default).
//
// Why: XLA:CPU runs attention as batched dots over [batch * heads] small matrices plus
// separate softmax, mask and transpose passes; at DiT-S/2's shape (8 x 6 heads x 256 x 64)
// forward + backward took 32.7 ms where PyTorch's scaled_dot_product_attention took 15.7
// (BENCHMARKS.md, "CPU speed per machine type"). Here each (batch, head, query block) is three
// single-threaded sgemm calls and one softmax pass over a block of logits that stays in cache,
// read straight from the [B, T, H, D] layout (sgemm's leading dimensions do the strides; no
// transposes), the parts spread over XLA's intra-op threads.
//
// Shapes: q [B, T, H, D]; k, v [B, S, K, D] with H % K == 0 (grouped-query: query head h reads
// key/value head h / (H / K)); out [B, T, H, D]; lse [B, H, T], the log-sum-exp of each query's
// scaled logits, kept for the backward pass. causal: query t sees keys s <= t (the queries and
// keys start at the same position, as jaxmodels.layers.attention.attention_mask without an
// offset). The backward pass recomputes the probabilities from q, k and lse (flash-attention
// style), so nothing of size T x S is saved between the two.
#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"

namespace jaxmodels {
namespace {

constexpr int64_t kRowBlock = 128;
constexpr int64_t kNoDropout = int64_t{1} << 32;

// jaxmodels.layers.dropout._mix32 (Wellons' lowbias32).
inline uint32_t Mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7FEB352Du;
  h ^= h >> 15;
  h *= 0x846CA68Bu;
  return h ^ (h >> 16);
}

struct Dropout {
  bool on = false;
  uint32_t w0 = 0, w1 = 0, threshold = 0;
  float keep = 1.0f;
  // row[j] for keys j < n of the row whose flat index of key 0 is `base`: kept * (1 / keep),
  // or 0. uint32 arithmetic throughout (the indices wrap at 2^32 as the JAX mask's do), so
  // the loop vectorises.
  void Apply(float* __restrict row, int64_t n, uint32_t base) const {
    const float inv = 1.0f / keep;
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t h = Mix32(Mix32((base + static_cast<uint32_t>(j)) ^ w0) + w1);
      row[j] = h < threshold ? row[j] * inv : 0.0f;
    }
  }
};

Dropout MakeDropout(ffi::Buffer<ffi::U32>& words, int64_t threshold, float keep) {
  Dropout drop;
  if (threshold < kNoDropout) {
    drop.on = true;
    drop.w0 = words.typed_data()[0];
    drop.w1 = words.typed_data()[1];
    drop.threshold = static_cast<uint32_t>(threshold);
    drop.keep = keep;
  }
  return drop;
}

struct Dims {
  int64_t B, T, H, D, S, K, G;
};

ffi::Error ReadDims(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k, Dims* d) {
  auto dq = q.dimensions(), dk = k.dimensions();
  if (dq.size() != 4 || dk.size() != 4 || dq[0] != dk[0] || dq[3] != dk[3] || dk[2] == 0 ||
      dq[2] % dk[2] != 0) {
    return ffi::Error::InvalidArgument("jaxmodels cpu_attention: q [B,T,H,D], k/v [B,S,K,D], H % K == 0");
  }
  *d = Dims{dq[0], dq[1], dq[2], dq[3], dk[1], dk[2], dq[2] / dk[2]};
  return ffi::Error::Success();
}

// Row reductions and exp, written so the compiler vectorises them without -ffast-math and
// every result is the same whatever the row's alignment: sums go to 16 fixed lanes (lane =
// index % 16) added up in a fixed order, and Exp is plain float arithmetic (no libm call whose
// vector and scalar versions round differently). Same inputs, same bits, in every call.
constexpr int kLanes = 16;

inline float RowMax(const float* x, int64_t n) {
  float lane[kLanes];
  for (int i = 0; i < kLanes; ++i) lane[i] = x[0];
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int i = 0; i < kLanes; ++i) lane[i] = x[j + i] > lane[i] ? x[j + i] : lane[i];
  }
  for (int i = 0; j + i < n; ++i) lane[i] = x[j + i] > lane[i] ? x[j + i] : lane[i];
  float m = lane[0];
  for (int i = 1; i < kLanes; ++i) m = std::max(m, lane[i]);
  return m;
}

inline float Dot(const float* a, const float* b, int64_t n) {
  float lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int i = 0; i < kLanes; ++i) lane[i] += a[j + i] * b[j + i];
  }
  for (int i = 0; j + i < n; ++i) lane[i] += a[j + i] * b[j + i];
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += lane[i];
  return s;
}

// exp(x) for the softmax's arguments (x <= ~0): 2^n * p(r) with n = round(x / ln 2),
// r = x - n ln 2 (ln 2 in two parts), p the degree-7 Taylor-like polynomial of Cephes' expf
// (relative error ~1e-7). Below -87 it returns 2^-126 * p, i.e. ~0, never a denormal.
inline float Exp(float x) {
  x = x > -87.0f ? x : -87.0f;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);  // 2^n
}

// row[j] = exp(row[j] - shift) for j < n; returns their sum (16 fixed lanes).
inline float ExpShifted(float* row, int64_t n, float shift) {
  for (int64_t j = 0; j < n; ++j) row[j] = Exp(row[j] - shift);
  float lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int i = 0; i < kLanes; ++i) lane[i] += row[j + i];
  }
  for (int i = 0; j + i < n; ++i) lane[i] += row[j + i];
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += lane[i];
  return s;
}

// Keys a query row sees: [0, limit).
inline int64_t Visible(bool causal, int64_t t, int64_t S) { return causal ? std::min(S, t + 1) : S; }

// Flat index of key 0 of query row t of head h in the einsum path's [B, K, G*T, S] layout.
inline uint32_t MaskBase(const Dims& d, int64_t b, int64_t h, int64_t t) {
  const int64_t kvh = h / d.G, g = h % d.G;
  return static_cast<uint32_t>(static_cast<uint64_t>(((b * d.K + kvh) * d.G * d.T + g * d.T + t) * d.S));
}

// logits[rows, n] (row stride n) <- scale * q_rows @ k[0:n]^T.
inline void Logits(const Dims& d, const float* q_rows, const float* k0, int64_t rows, int64_t n,
                   float scale, float* logits) {
  Sgemm(false, true, rows, n, d.D, scale, q_rows, d.H * d.D, k0, d.K * d.D, 0.0f, logits, n);
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::U32> words,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse,
                   int32_t causal, float scale, int64_t threshold, float keep) {
  if (!HaveSgemm()) return ffi::Error::InvalidArgument("jaxmodels cpu_attention: no sgemm registered");
  Dims d;
  if (auto e = ReadDims(q, k, &d); e.failure()) return e;
  if (d.B * d.T * d.H == 0 || d.D == 0) return ffi::Error::Success();
  const float *pq = q.typed_data(), *pk = k.typed_data(), *pv = v.typed_data();
  float *po = out->typed_data(), *pl = lse->typed_data();
  const Dropout drop = MakeDropout(words, threshold, keep);
  const int64_t blocks = (d.T + kRowBlock - 1) / kRowBlock;
  ParallelFor(pool, d.B * d.H * blocks, [&](int64_t p) {
    const int64_t b = p / (d.H * blocks), h = (p / blocks) % d.H, t0 = (p % blocks) * kRowBlock;
    const int64_t rows = std::min(kRowBlock, d.T - t0), kvh = h / d.G;
    const int64_t n = Visible(causal, t0 + rows - 1, d.S);
    const float* q_rows = pq + ((b * d.T + t0) * d.H + h) * d.D;
    const float* k0 = pk + (b * d.S * d.K + kvh) * d.D;
    const float* v0 = pv + (b * d.S * d.K + kvh) * d.D;
    float* o_rows = po + ((b * d.T + t0) * d.H + h) * d.D;
    float* lse_rows = pl + (b * d.H + h) * d.T + t0;
    thread_local std::vector<float> scratch;
    scratch.resize(rows * n);
    float* s = scratch.data();
    Logits(d, q_rows, k0, rows, n, scale, s);
    for (int64_t r = 0; r < rows; ++r) {
      float* row = s + r * n;
      const int64_t lim = Visible(causal, t0 + r, d.S);
      const float mx = RowMax(row, lim);
      const float sum = ExpShifted(row, lim, mx);
      const float inv = 1.0f / sum;
      for (int64_t j = 0; j < lim; ++j) row[j] *= inv;
      std::memset(row + lim, 0, sizeof(float) * (n - lim));
      lse_rows[r] = mx + std::log(sum);
      if (drop.on) drop.Apply(row, lim, MaskBase(d, b, h, t0 + r));
    }
    Sgemm(false, false, rows, d.D, n, 1.0f, s, n, v0, d.K * d.D, 0.0f, o_rows, d.H * d.D);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> dout, ffi::Buffer<ffi::U32> words,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv, int32_t causal, float scale,
                    int64_t threshold, float keep) {
  if (!HaveSgemm()) return ffi::Error::InvalidArgument("jaxmodels cpu_attention: no sgemm registered");
  Dims d;
  if (auto e = ReadDims(q, k, &d); e.failure()) return e;
  const float *pq = q.typed_data(), *pk = k.typed_data(), *pv = v.typed_data();
  const float *pl = lse.typed_data(), *pdo = dout.typed_data();
  float *pdq = dq->typed_data(), *pdk = dk->typed_data(), *pdv = dv->typed_data();
  const Dropout drop = MakeDropout(words, threshold, keep);
  if (d.D == 0) return ffi::Error::Success();
  // One part per (batch, key/value head): it owns that head's dk and dv rows, which every
  // query head of its group and every query block adds into.
  ParallelFor(pool, d.B * d.K, [&](int64_t p) {
    const int64_t b = p / d.K, kvh = p % d.K, kv_ld = d.K * d.D, q_ld = d.H * d.D;
    const float* k0 = pk + (b * d.S * d.K + kvh) * d.D;
    const float* v0 = pv + (b * d.S * d.K + kvh) * d.D;
    float* dk0 = pdk + (b * d.S * d.K + kvh) * d.D;
    float* dv0 = pdv + (b * d.S * d.K + kvh) * d.D;
    for (int64_t s = 0; s < d.S; ++s) {
      std::memset(dk0 + s * kv_ld, 0, sizeof(float) * d.D);
      std::memset(dv0 + s * kv_ld, 0, sizeof(float) * d.D);
    }
    thread_local std::vector<float> probs, grads;
    for (int64_t g = 0; g < d.G; ++g) {
      const int64_t h = kvh * d.G + g;
      for (int64_t t0 = 0; t0 < d.T; t0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, d.T - t0);
        const int64_t n = Visible(causal, t0 + rows - 1, d.S);
        const int64_t row0 = (b * d.T + t0) * d.H + h;
        const float* q_rows = pq + row0 * d.D;
        const float* do_rows = pdo + row0 * d.D;
        float* dq_rows = pdq + row0 * d.D;
        const float* lse_rows = pl + (b * d.H + h) * d.T + t0;
        probs.resize(rows * n);
        grads.resize(rows * n);
        float* P = probs.data();
        float* dS = grads.data();
        Logits(d, q_rows, k0, rows, n, scale, P);
        for (int64_t r = 0; r < rows; ++r) {
          float* row = P + r * n;
          const int64_t lim = Visible(causal, t0 + r, d.S);
          ExpShifted(row, lim, lse_rows[r]);
          std::memset(row + lim, 0, sizeof(float) * (n - lim));
        }
        // dv[0:n] += P'^T @ dout_rows, P' the probabilities after dropout (built in dS first)
        const float* P_used = P;
        if (drop.on) {
          std::memcpy(dS, P, sizeof(float) * rows * n);
          for (int64_t r = 0; r < rows; ++r) {
            drop.Apply(dS + r * n, Visible(causal, t0 + r, d.S), MaskBase(d, b, h, t0 + r));
          }
          P_used = dS;
        }
        Sgemm(true, false, n, d.D, rows, 1.0f, P_used, n, do_rows, q_ld, 1.0f, dv0, kv_ld);
        // dP' = dout_rows @ v[0:n]^T; dP = dP' through the same mask; dS = P * (dP - sum(P * dP))
        Sgemm(false, true, rows, n, d.D, 1.0f, do_rows, q_ld, v0, kv_ld, 0.0f, dS, n);
        for (int64_t r = 0; r < rows; ++r) {
          float* srow = dS + r * n;
          const float* prow = P + r * n;
          const int64_t lim = Visible(causal, t0 + r, d.S);
          if (drop.on) drop.Apply(srow, lim, MaskBase(d, b, h, t0 + r));
          const float delta = Dot(prow, srow, lim);
          for (int64_t j = 0; j < n; ++j) srow[j] = prow[j] * (srow[j] - delta);
        }
        // dq_rows = scale * dS @ k[0:n];  dk[0:n] += scale * dS^T @ q_rows
        Sgemm(false, false, rows, d.D, n, scale, dS, n, k0, kv_ld, 0.0f, dq_rows, q_ld);
        Sgemm(true, false, n, d.D, rows, scale, dS, n, q_rows, q_ld, 1.0f, dk0, kv_ld);
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxmodels

using xla::ffi::Buffer;
using xla::ffi::F32;

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxmodels_cpu_attention_fwd, jaxmodels::Forward,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<Buffer<F32>>()
                                  .Arg<Buffer<F32>>()
                                  .Arg<Buffer<F32>>()
                                  .Arg<Buffer<xla::ffi::U32>>()
                                  .Ret<Buffer<F32>>()
                                  .Ret<Buffer<F32>>()
                                  .Attr<int32_t>("causal")
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("threshold")
                                  .Attr<float>("keep"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxmodels_cpu_attention_bwd, jaxmodels::Backward,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<Buffer<F32>>()
                                  .Arg<Buffer<F32>>()
                                  .Arg<Buffer<F32>>()
                                  .Arg<Buffer<F32>>()
                                  .Arg<Buffer<F32>>()
                                  .Arg<Buffer<xla::ffi::U32>>()
                                  .Ret<Buffer<F32>>()
                                  .Ret<Buffer<F32>>()
                                  .Ret<Buffer<F32>>()
                                  .Attr<int32_t>("causal")
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("threshold")
                                  .Attr<float>("keep"));
