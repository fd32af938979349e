// Native XLA:CPU kernels for the sparse TopK SAE, as XLA FFI custom calls.
//
// 1. SaeJaxTopKF32: exact row-wise top-k of (x + bias).
//
// XLA:CPU's own TopK is a single-threaded std::partial_sort over an index array with an
// indirect comparator. Here: rows split over threads; per row, block maxima bound the k-th
// value so only ~k blocks are examined (see Rows). Ties keep the lower index, as lax.top_k
// does. NaNs are never selected (lax.top_k ranks them highest); the train step treats
// non-finite inputs as an error anyway.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// fn(a, b) over [0, n) split in contiguous ranges, one per thread (the caller runs the first), at most
// one thread per 64 items. `threads` > 0 is the caller's share of the host (e.g. cores / devices when
// forced host devices run native calls at the same time), 0 every hardware thread.
template <typename F>
void Parallel(int64_t n, int64_t threads, F fn) {
  if (threads <= 0) threads = std::max<int64_t>(1, std::thread::hardware_concurrency());
  threads = std::min<int64_t>(threads, std::max<int64_t>(1, n / 64));
  const int64_t per = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t a = t * per, b = std::min(n, a + per);
    if (a < b) pool.emplace_back(fn, a, b);
  }
  fn(0, std::min(n, per));
  for (auto& th : pool) th.join();
}

constexpr int kBlock = 32;

struct Entry {
  float v;
  int32_t i;
};

// Total order of floats as XLA's TopK uses it (-0.0 ranks below +0.0).
inline int32_t Key(float v) {
  int32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits < 0 ? bits ^ 0x7fffffff : bits;
}

// a ranks before b: larger value, or equal value and lower index.
inline bool Before(const Entry& a, const Entry& b) {
  const int32_t ka = Key(a.v), kb = Key(b.v);
  return ka > kb || (ka == kb && a.i < b.i);
}

// Plain heap scan of one row (rows with fewer than k blocks).
void HeapRow(const float* row, const float* bias, int64_t n, int64_t k, bool sorted, std::vector<Entry>& heap,
             float* out_v, int32_t* out_i) {
  heap.resize(k);
  for (int64_t j = 0; j < k; ++j) heap[j] = {row[j] + bias[j], static_cast<int32_t>(j)};
  // With Before as the comparator, the heap's front is the entry ranked last.
  std::make_heap(heap.begin(), heap.end(), Before);
  for (int64_t j = k; j < n; ++j) {
    const float v = row[j] + bias[j];
    if (Key(v) > Key(heap.front().v)) {  // equal value, higher index than all kept: stays out
      std::pop_heap(heap.begin(), heap.end(), Before);
      heap.back() = {v, static_cast<int32_t>(j)};
      std::push_heap(heap.begin(), heap.end(), Before);
    }
  }
  if (sorted) std::sort_heap(heap.begin(), heap.end(), Before);  // best first
  for (int64_t j = 0; j < k; ++j) {
    out_v[j] = heap[j].v;
    out_i[j] = heap[j].i;
  }
}

// Per row: maxima of bw-wide blocks (vectorised); t0 = k-th largest block maximum is a
// lower bound of the row's k-th largest value (k blocks each hold an element >= t0), so the
// top k lie among the elements >= t0 of the blocks whose maximum is >= t0 (~k blocks).
// bw halves (down to 8) while a row has fewer than 2k blocks (short rows, e.g. a dictionary
// shard's), instead of falling back to the plain heap scan.
void Rows(const float* x, const float* bias, int64_t n, int64_t k, bool sorted, int64_t r0, int64_t r1,
          float* out_v, int32_t* out_i) {
  int64_t bw = kBlock;
  while (bw > 8 && (n + bw - 1) / bw < 2 * k) bw /= 2;
  const int64_t nblocks = (n + bw - 1) / bw;
  std::vector<float> bmax(nblocks), tmp(nblocks);
  std::vector<Entry> cand, found(n);  // found: the candidates of one row (at most n)
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = x + r * n;
    if (nblocks < 2 * k) {
      HeapRow(row, bias, n, k, sorted, cand, out_v + r * k, out_i + r * k);
      continue;
    }
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t j0 = b * bw, j1 = std::min(n, j0 + bw);
      // 8 independent lanes: no loop-carried dependency, and the compiler emits SIMD max.
      float lane[8];
      for (int t = 0; t < 8; ++t) lane[t] = -std::numeric_limits<float>::infinity();
      int64_t j = j0;
      for (; j + 8 <= j1; j += 8) {
        for (int t = 0; t < 8; ++t) {
          const float v = row[j + t] + bias[j + t];
          lane[t] = v > lane[t] ? v : lane[t];
        }
      }
      for (; j < j1; ++j) {
        const float v = row[j] + bias[j];
        lane[0] = v > lane[0] ? v : lane[0];
      }
      float m = lane[0];
      for (int t = 1; t < 8; ++t) m = lane[t] > m ? lane[t] : m;
      bmax[b] = m;
    }
    std::copy(bmax.begin(), bmax.end(), tmp.begin());
    std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
    const float t0 = tmp[k - 1];
    // Branch-free compaction: every examined entry is written, the count advances only for those
    // >= t0 (-0.0 == 0.0 here: a superset); rows that examine many blocks do not mispredict.
    Entry* c = found.data();
    int64_t m = 0;
    for (int64_t b = 0; b < nblocks; ++b) {
      if (!(bmax[b] >= t0)) continue;
      const int64_t j0 = b * bw, j1 = std::min(n, j0 + bw);
      for (int64_t j = j0; j < j1; ++j) {
        const float v = row[j] + bias[j];
        c[m] = {v, static_cast<int32_t>(j)};
        m += v >= t0;
      }
    }
    if (m < k) {  // only with NaNs/-inf in the way: be exact anyway
      HeapRow(row, bias, n, k, sorted, cand, out_v + r * k, out_i + r * k);
      continue;
    }
    // unsorted (a first stage whose candidates are ranked again later): a selection, no heap
    if (sorted) {
      std::partial_sort(c, c + k, c + m, Before);
    } else {
      std::nth_element(c, c + (k - 1), c + m, Before);
    }
    for (int64_t j = 0; j < k; ++j) {
      out_v[r * k + j] = c[j].v;
      out_i[r * k + j] = c[j].i;
    }
  }
}

ffi::Error TopKImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> bias,
                    ffi::ResultBuffer<ffi::F32> vals, ffi::ResultBuffer<ffi::S32> idx, bool sorted,
                    int64_t threads) {
  auto xd = x.dimensions();
  auto vd = vals->dimensions();
  if (xd.size() == 0 || vd.size() != xd.size()) {
    return ffi::Error::InvalidArgument("sae_jax_topk: x and values must have the same rank >= 1");
  }
  const int64_t n = xd.back();
  const int64_t k = vd.back();
  if (k < 1 || k > n || bias.element_count() != n) {
    return ffi::Error::InvalidArgument("sae_jax_topk: need 1 <= k <= n and bias of length n");
  }
  const int64_t rows = n ? static_cast<int64_t>(x.element_count()) / n : 0;
  const float* xp = x.typed_data();
  const float* bp = bias.typed_data();
  float* vp = vals->typed_data();
  int32_t* ip = idx->typed_data();
  Parallel(rows, threads, [&](int64_t r0, int64_t r1) { Rows(xp, bp, n, k, sorted, r0, r1, vp, ip); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SaeJaxTopKF32, TopKImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<bool>("sorted")
                                  .Attr<int64_t>("threads"));

// 2. SaeJaxSparseBwdF32: the backward of the sparse autoencoder in two passes.
//    gp[b,j]    = (vals[b,j] > 0) * (<g[b], W_dec[idx[b,j]]> + g_vals[b,j])
//    dWenc[:,f] = sum_{idx[b,j]=f} gp[b,j] * xc[b];  dWdec[f] = sum vals[b,j] * g[b];  db[f] = sum gp
// Threads split the latent range, so every thread owns its output rows (no atomics) and each
// row accumulates in (b, j) order (deterministic). dWenc
// rows are accumulated contiguously in a scratch buffer kept between calls (no page faults
// after the first step) and written out transposed, in cache-sized blocks, as W_enc's [d, F].
namespace {

// Scratch buffers kept between calls, one per concurrent call (dictionary shards on forced host
// devices run their backward at the same time): taken from and returned to a free list.
std::mutex g_scratch_mu;
std::vector<std::vector<float>> g_scratch_free;

struct Scratch {
  std::vector<float> buf;
  explicit Scratch(size_t n) {
    std::lock_guard<std::mutex> lock(g_scratch_mu);
    if (!g_scratch_free.empty()) {
      buf = std::move(g_scratch_free.back());
      g_scratch_free.pop_back();
    }
    if (buf.size() < n) buf.resize(n);
  }
  ~Scratch() {
    std::lock_guard<std::mutex> lock(g_scratch_mu);
    g_scratch_free.push_back(std::move(buf));
  }
};

inline float Dot(const float* __restrict a, const float* __restrict b, int64_t d) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 8 <= d; t += 8) {
    for (int u = 0; u < 8; ++u) lane[u] += a[t + u] * b[t + u];
  }
  float s = 0;
  for (; t < d; ++t) s += a[t] * b[t];
  for (int u = 0; u < 8; ++u) s += lane[u];
  return s;
}

inline void Axpy(float a, const float* __restrict x, float* __restrict y, int64_t d) {
  for (int64_t t = 0; t < d; ++t) y[t] += a * x[t];
}

ffi::Error SparseBwdImpl(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> g_vals,
                         ffi::Buffer<ffi::F32> vals, ffi::Buffer<ffi::S32> idx,
                         ffi::Buffer<ffi::F32> xc, ffi::Buffer<ffi::F32> w_dec,
                         ffi::ResultBuffer<ffi::F32> d_enc, ffi::ResultBuffer<ffi::F32> d_dec,
                         ffi::ResultBuffer<ffi::F32> d_b, ffi::ResultBuffer<ffi::F32> gp_out, int64_t threads) {
  auto gd = g.dimensions(), vd = vals.dimensions(), wd = w_dec.dimensions();
  if (gd.size() != 2 || vd.size() != 2 || wd.size() != 2 || gd[0] != vd[0] || gd[1] != wd[1]) {
    return ffi::Error::InvalidArgument("sae_jax_sparse_bwd: need g [B,d], vals [B,k], W_dec [F,d]");
  }
  const int64_t B = gd[0], d = gd[1], k = vd[1], F = wd[0];
  const float* gp_ = g.typed_data();
  const float* gv_ = g_vals.typed_data();
  const float* v_ = vals.typed_data();
  const int32_t* i_ = idx.typed_data();
  const float* x_ = xc.typed_data();
  const float* w_ = w_dec.typed_data();
  float* de = d_enc->typed_data();  // [d, F]
  Scratch scratch(static_cast<size_t>(F * d));
  float* sc = scratch.buf.data();  // [F, d] rows of dWenc^T
  float* dd = d_dec->typed_data();
  float* db = d_b->typed_data();
  float* gp = gp_out->typed_data();
  // idx -1 marks a selection owned by another dictionary shard: no update here, gp 0.
  for (int64_t e = 0; e < B * k; ++e) {
    if (i_[e] < -1 || i_[e] >= F) return ffi::Error::InvalidArgument("sae_jax_sparse_bwd: index out of range");
    if (i_[e] < 0) gp[e] = 0.0f;
  }
  // One pass over the latent range owned by each thread, updates grouped by latent (counting
  // sort): W_dec[f], dWenc^T[f] and dWdec[f] are loaded once per latent instead of once per
  // update, and the values' gradient is formed right where it is used.
  Parallel(F, threads, [&](int64_t f0, int64_t f1) {
    const int64_t nf = f1 - f0;
    std::vector<int32_t> start(nf + 1, 0);
    for (int64_t e = 0; e < B * k; ++e) {
      const int64_t f = i_[e];
      if (f >= f0 && f < f1) ++start[f - f0 + 1];
    }
    for (int64_t f = 0; f < nf; ++f) start[f + 1] += start[f];
    std::vector<int32_t> order(start[nf]);
    std::vector<int32_t> fill(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < B * k; ++e) {  // ascending e: each latent's updates stay in (b, j) order
      const int64_t f = i_[e];
      if (f >= f0 && f < f1) order[fill[f - f0]++] = static_cast<int32_t>(e);
    }
    for (int64_t f = f0; f < f1; ++f) {
      float* se = sc + f * d;
      float* sd = dd + f * d;
      std::fill(se, se + d, 0.0f);
      std::fill(sd, sd + d, 0.0f);
      float bsum = 0.0f;
      const float* wrow = w_ + f * d;
      for (int32_t u = start[f - f0]; u < start[f - f0 + 1]; ++u) {
        const int64_t e = order[u];
        const int64_t b = e / k;
        const float* grow = gp_ + b * d;
        const float g_e = v_[e] > 0 ? Dot(grow, wrow, d) + gv_[e] : 0.0f;
        gp[e] = g_e;
        Axpy(g_e, x_ + b * d, se, d);
        Axpy(v_[e], grow, sd, d);
        bsum += g_e;
      }
      db[f] = bsum;
    }
    constexpr int64_t kT = 64;  // 64 scratch rows (kT x d floats) stay in L2 while written out
    for (int64_t fb = f0; fb < f1; fb += kT) {
      const int64_t fe = std::min(f1, fb + kT);
      for (int64_t t = 0; t < d; ++t) {
        float* out = de + t * F;
        for (int64_t f = fb; f < fe; ++f) out[f] = sc[f * d + t];
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SaeJaxSparseBwdF32, SparseBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));

// 3. SaeJaxAdamF32: one Adam step of a [R, C] parameter in one pass over its rows, as optax's
//    chain [remove_parallel_component] -> scale_by_adam -> scale_by_learning_rate -> apply_updates
//    [-> project_rows] computes it in four to six passes. Per row (attributes turn the parts on):
//      tangent: g <- g - (<g, w> / <w, w>) w            (unit-norm decoder rows)
//      mu <- c1 g + b1 mu;  nu <- c2 g^2 + b2 nu;  w <- w + step * (mu / bc1) / (sqrt(nu / bc2) + eps)
//      (the bias corrections as multiplications by 1 / bc: float rounding differs from optax's division)
//      renorm:  w <- w / max(|w|, 1e-12)
//    and the sum of squares of the raw gradient (for the global gradient norm).
//    s = [b1, c1 = 1 - b1, b2, c2 = 1 - b2, eps, bc1, bc2, step = -lr]. w, mu, nu may alias the
//    outputs (updated in place): every row is read before it is written.
namespace {

ffi::Error AdamImpl(ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> mu,
                    ffi::Buffer<ffi::F32> nu, ffi::Buffer<ffi::F32> s, ffi::ResultBuffer<ffi::F32> w_out,
                    ffi::ResultBuffer<ffi::F32> mu_out, ffi::ResultBuffer<ffi::F32> nu_out,
                    ffi::ResultBuffer<ffi::F32> sumsq, bool tangent, bool renorm, int64_t threads) {
  auto wd = w.dimensions();
  if (wd.size() != 2 || g.element_count() != w.element_count() || mu.element_count() != w.element_count() ||
      nu.element_count() != w.element_count() || s.element_count() != 8) {
    return ffi::Error::InvalidArgument("sae_jax_adam: need w, g, mu, nu of one [R, C] shape and 8 scalars");
  }
  const int64_t R = wd[0], C = wd[1];
  const float* sp = s.typed_data();
  const float b1 = sp[0], c1 = sp[1], b2 = sp[2], c2 = sp[3], eps = sp[4], bc1 = sp[5], bc2 = sp[6],
              step = sp[7];
  const float* wi = w.typed_data();
  const float* gi = g.typed_data();
  const float* mi = mu.typed_data();
  const float* ni = nu.typed_data();
  float* wo = w_out->typed_data();
  float* mo = mu_out->typed_data();
  float* no = nu_out->typed_data();
  double total = 0.0;
  std::mutex mu_total;
  const float ibc1 = 1.0f / bc1, ibc2 = 1.0f / bc2;
  Parallel(R, threads, [&](int64_t r0, int64_t r1) {
    double acc = 0.0;
    std::vector<float> tg(C), row(C);
    float* __restrict t = tg.data();
    float* __restrict nw = row.data();
    for (int64_t r = r0; r < r1; ++r) {
      const float* wr = wi + r * C;
      const float* gr = gi + r * C;
      acc += Dot(gr, gr, C);
      const float* gt = gr;
      if (tangent) {
        const float coef = Dot(gr, wr, C) / Dot(wr, wr, C);
        for (int64_t c = 0; c < C; ++c) t[c] = gr[c] - coef * wr[c];
        gt = t;
      }
      const float* mr = mi + r * C;
      const float* nr = ni + r * C;
      float* mw = mo + r * C;
      float* vw = no + r * C;
      // mu/nu may be updated in place (same index read, then written): no loop-carried dependency
#pragma GCC ivdep
      for (int64_t c = 0; c < C; ++c) {
        const float gc = gt[c];
        const float m = c1 * gc + b1 * mr[c];
        const float v = c2 * (gc * gc) + b2 * nr[c];
        mw[c] = m;
        vw[c] = v;
        nw[c] = wr[c] + step * ((m * ibc1) / (std::sqrt(v * ibc2) + eps));
      }
      float* out = wo + r * C;
      if (renorm) {
        const float norm = std::max(std::sqrt(Dot(nw, nw, C)), 1e-12f);
        for (int64_t c = 0; c < C; ++c) out[c] = nw[c] / norm;
      } else {
        std::copy(nw, nw + C, out);
      }
    }
    std::lock_guard<std::mutex> lock(mu_total);
    total += acc;
  });
  sumsq->typed_data()[0] = static_cast<float>(total);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SaeJaxAdamF32, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("tangent")
                                  .Attr<bool>("renorm")
                                  .Attr<int64_t>("threads"));

// 4. SaeJaxDecodeF32: out[b] = sum_j vals[b,j] * W_dec[idx[b,j] - base] over the selections this
//    dictionary shard owns (base <= idx < base + F; others, and zero values, are skipped). Rows are
//    split over threads; each row accumulates in j order. A shard thus does only its share of the
//    decode, where the XLA form multiplied every non-owned slot by zero.
namespace {

ffi::Error DecodeImpl(ffi::Buffer<ffi::F32> vals, ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> base,
                      ffi::Buffer<ffi::F32> w_dec, ffi::ResultBuffer<ffi::F32> out, int64_t threads) {
  auto vd = vals.dimensions(), id = idx.dimensions(), wd = w_dec.dimensions();
  if (vd.size() != 2 || id.size() != 2 || wd.size() != 2 || vd[0] != id[0] || vd[1] != id[1] ||
      base.element_count() != 1) {
    return ffi::Error::InvalidArgument("sae_jax_decode: need vals and idx [B,k], base [1], W_dec [F,d]");
  }
  const int64_t B = vd[0], k = vd[1], F = wd[0], d = wd[1];
  const float* v_ = vals.typed_data();
  const int32_t* i_ = idx.typed_data();
  const int64_t b0 = base.typed_data()[0];
  const float* w_ = w_dec.typed_data();
  float* o_ = out->typed_data();
  Parallel(B, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* o = o_ + r * d;
      std::fill(o, o + d, 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t f = static_cast<int64_t>(i_[r * k + j]) - b0;
        const float v = v_[r * k + j];
        if (f >= 0 && f < F && v != 0.0f) Axpy(v, w_ + f * d, o, d);
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SaeJaxDecodeF32, DecodeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));
