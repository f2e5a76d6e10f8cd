// Row reductions shared by the CUDA row kernels (masked cross-entropy and softmax, KD loss): an
// online (max, sum of exp) accumulator, its merge, and the all-reduce of a pair over the threads
// that own a row. `Exp` is the caller's exponential (a functor for float and double), so each op
// keeps its own speed/accuracy choice.
#pragma once

#include <cstdint>
#include <limits>

namespace pyfastlab::cuda_rows {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__host__ __device__ constexpr T inf() {
  return std::numeric_limits<T>::infinity();
}
template <typename T>
__host__ __device__ constexpr T qnan() {
  return std::numeric_limits<T>::quiet_NaN();
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Adds x to a running (max m, sum s of exp(v - m)). -inf-safe: nothing is rescaled while the max
// is -inf, so a row of -inf values ends as (-inf, 0), never NaN. NaN-propagating: a NaN value
// makes both NaN (the CPU's NaN max), so such a row stays counted with a NaN loss. A +inf max
// leaves a finite s here; callers turn it into NaN, as the CPU's exp(inf - inf) does.
template <typename Exp, typename T>
__device__ __forceinline__ void online_add(T& m, T& s, T x) {
  if (x > m) {
    s = s * Exp{}(m - x) + T(1);
    m = x;
  } else if (x <= m) {
    if (m != -inf<T>()) s += Exp{}(x - m);
  } else {
    m = s = qnan<T>();
  }
}

// Merges two (max, sum) partials. Symmetric bit for bit (the larger max always absorbs the
// smaller), so a butterfly leaves every lane with the same result. Identity: (-inf, 0).
template <typename Exp>
struct MaxSumOp {
  template <typename T>
  __device__ __forceinline__ void operator()(T& m, T& s, T m2, T s2) const {
    if (isnan(m) || isnan(m2)) {
      m = s = qnan<T>();
      return;
    }
    if (m2 > m) {
      const T tm = m, ts = s;
      m = m2, s = s2, m2 = tm, s2 = ts;
    }
    if (m2 != -inf<T>()) s += s2 * Exp{}(m2 - m);
  }
};

// All-reduce of a pair over the kRowThreads threads that share a row; every thread ends with the
// same bits. Above a warp, warp 0 combines the per-warp partials once and broadcasts through smem
// (2 * (kRowThreads / 32 + 1) values). Between two calls no extra barrier is needed: a warp can
// only rewrite its partial after the second barrier, which warp 0 passes after reading them, and
// warp 0 rewrites the result only after the first barrier, which every reader passes after reading.
template <int kRowThreads, typename T, typename Op>
__device__ __forceinline__ void row_allreduce(T& a, T& b, Op op, T* smem) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const T a2 = __shfl_xor_sync(kFullMask, a, off);
    const T b2 = __shfl_xor_sync(kFullMask, b, off);
    op(a, b, a2, b2);
  }
  if constexpr (kRowThreads > kWarp) {
    constexpr int kWarps = kRowThreads / kWarp;
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    if (lane == 0) {
      smem[warp] = a;
      smem[kWarps + warp] = b;
    }
    __syncthreads();
    if (warp == 0) {
      a = lane < kWarps ? smem[lane] : -inf<T>();
      b = lane < kWarps ? smem[kWarps + lane] : T(0);
#pragma unroll
      for (int off = kWarp / 2; off > 0; off >>= 1) {
        const T a2 = __shfl_xor_sync(kFullMask, a, off);
        const T b2 = __shfl_xor_sync(kFullMask, b, off);
        op(a, b, a2, b2);
      }
      if (lane == 0) {
        smem[2 * kWarps] = a;
        smem[2 * kWarps + 1] = b;
      }
    }
    __syncthreads();
    a = smem[2 * kWarps];
    b = smem[2 * kWarps + 1];
  }
}

// Sum over a warp; lane 0 holds the result. Fixed order: deterministic.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_down_sync(kFullMask, v, off);
  return v;
}

}  // namespace pyfastlab::cuda_rows
