// CUDA kernels of the continual ops, registered for the CUDA dispatch key. The CPU kernels
// (csrc/cpu/continual_kernels_impl.h) are the ground truth for semantics and output layout; the
// math is spec/continual.md section 3.
//
// Row kernels: a row of C <= 1024 belongs to one warp (8 rows per 256-thread block), a longer row
// to a 512-thread block. Each sweeps its row twice: an online (max, sum) pass, then the output
// pass, whose re-read is served from L1/L2. Nothing here waits on the device: the counts, the
// mean coefficient and the backward scale stay in device memory and kernels read them there.
//
// masked_cross_entropy's block rows, when C is a multiple of the 16-byte pack (8 half-type, 4
// float, 2 double values) and the logits, gradient and mask table are aligned for it, move whole
// packs: 16-byte loads and stores, a pack's mask bools in one load, no read of a pack whose
// classes are all const-masked. Rows of up to 8 packs a thread (32768 half-type columns; 4 packs
// for float, 2 for double) keep their raw packs in registers between the passes, two rows an SM
// so one row's reductions overlap the other's memory traffic: DRAM sees one read and one write.
// Longer rows stream chunks of 4 packs a thread and re-read them for the gradient from L2.
//
// Bad indices: device code cannot raise, so a target or row_group outside its range drops the
// row in masked_cross_entropy (not counted, zero gradient, excluded from n_pre) and is counted in
// counts[2]; the Python wrapper raises on it when PYFASTLAB_CHECK=1.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorIterator.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/detail/OffsetCalculator.cuh>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "pyfastlab/continual.h"
#include "pyfastlab/cuda_rows.cuh"

namespace pyfastlab::continual::cuda {
namespace {

namespace rows = pyfastlab::cuda_rows;
using rows::ceil_div;
using rows::inf;
using rows::kFullMask;
using rows::kWarp;
using rows::qnan;
using rows::row_allreduce;
using rows::warp_sum;

constexpr int64_t kWarpRowMaxC = 1024;  // up to this C a warp owns a row
constexpr int kWarpRowBlock = 256;      // 8 warp-rows per block
constexpr int kBlockRowThreads = 512;   // longer rows: one block each, several resident per SM
// Vectorized block rows, in 16-byte packs: a row of up to kResidentPacks packs a thread stays in
// registers. Two rows an SM leave 64 registers a thread, enough for 8 packs of a half type (32768
// columns) but not of float or double, whose values take more registers. Longer rows stream
// through in chunks of kStreamPacks a thread. Packs and columns are indexed with int.
template <typename scalar_t>
constexpr int kResidentPacks = sizeof(scalar_t) == 2 ? 8 : sizeof(scalar_t) == 4 ? 4 : 2;
constexpr int kStreamPacks = 4;
constexpr int64_t kMaxVecC = (int64_t(1) << 31) - 1;
constexpr int kReduceThreads = 512;     // the single-block count / finalize kernel
constexpr int kElementwiseThreads = 256;
constexpr int64_t kMaxGrid = int64_t(1) << 30;  // grid-stride loops cover any N beyond it


bool is_aligned(const void* ptr, int64_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// exp(x), x mostly v - max <= 0. Float: exp2 with log2(e) folded in, the hardware's native
// exponential; (v - M) * log2e rather than fma(v, log2e, -M * log2e), whose M * log2e overflows
// for |M| > 2.4e38 and is not exactly 0 at v = M.
__device__ __forceinline__ float exp_op(float x) { return exp2f(x * 1.4426950408889634f); }
__device__ __forceinline__ double exp_op(double x) { return ::exp(x); }
__device__ __forceinline__ float log_op(float x) { return ::logf(x); }
__device__ __forceinline__ double log_op(double x) { return ::log(x); }

struct ExpOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T x) const { return exp_op(x); }
};
using MaxSumOp = rows::MaxSumOp<ExpOp>;
template <typename T>
__device__ __forceinline__ void online_add(T& m, T& s, T x) {
  rows::online_add<ExpOp>(m, s, x);
}

// (max ignoring NaN, sum): the softmax backward's dead-row test and dot product. Identity: (-inf, 0).
struct MaxAddOp {
  template <typename T>
  __device__ __forceinline__ void operator()(T& a, T& b, T a2, T b2) const {
    a = a < a2 ? a2 : a;
    b += b2;
  }
};


// v_k: z_k (active) | m (const-masked; z is ignored, NaN included) | z_k + d (detach-masked).
template <typename scalar_t, typename opmath_t>
__device__ __forceinline__ opmath_t masked_value(const scalar_t* __restrict__ z, const bool* arow, int64_t k,
                                                 bool detach, opmath_t m, opmath_t d) {
  const opmath_t x = static_cast<opmath_t>(z[k]);
  if (arow == nullptr || arow[k]) return x;
  return detach ? x + d : m;
}

// What masked_cross_entropy does with row i before looking at its logits.
struct RowStatus {
  bool bad;    // target or row_group out of range: dropped and reported in counts[2]
  bool valid;  // target not ignored, in range and active: n_pre counts it
  const bool* arow;
  int64_t y;
};

__device__ __forceinline__ RowStatus row_status(const MaskView& mask, const int64_t* __restrict__ target, int64_t i,
                                                int64_t C, int64_t ignore_index) {
  RowStatus st;
  const int64_t g = mask.group_of(i);
  st.y = target[i];
  st.bad = !mask.group_ok(g) || (st.y != ignore_index && (st.y < 0 || st.y >= C));
  st.arow = st.bad ? nullptr : mask.row(g);
  st.valid = !st.bad && st.y != ignore_index && (st.arow == nullptr || st.arow[st.y]);
  return st;
}

// How a row kernel is launched for C columns: a warp per row, or a block per row.
struct RowLaunch {
  bool warp_rows;
  int64_t blocks;
};

RowLaunch row_launch(int64_t N, int64_t C) {
  if (C <= kWarpRowMaxC) return {true, std::min(ceil_div(N, kWarpRowBlock / kWarp), kMaxGrid)};
  return {false, std::min(N, kMaxGrid)};
}

// ---- masked_cross_entropy ---------------------------------------------------------------------

template <typename scalar_t>
struct CrossEntropyParams {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* logits;
  const int64_t* target;
  const opmath_t* weight;  // nullptr: 1
  MaskView mask;
  int64_t N, C, ignore_index;
  bool detach;
  opmath_t mask_value, offset;
  opmath_t scale_active, scale_masked;  // s_n; s_o in detach mode, 0 in const mode
  const int64_t* n_pre;                 // mean with gradient: counts[0] from the pre-pass, else nullptr
  opmath_t* row_loss;                   // l_i, 0 when not counted
  opmath_t* row_out;                    // w_i l_i for sum / mean, else nullptr
  scalar_t* loss_none;                  // w_i l_i in logits dtype for none, else nullptr
  bool* counted;
  scalar_t* grad;  // gradient for upstream 1, or nullptr
};

// A row's outputs: l_i (0 when not counted), whether it counts, and w_i l_i for the reduction.
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ void store_row(const CrossEntropyParams<scalar_t>& p, int64_t i, bool counted, opmath_t l,
                                          opmath_t w) {
  p.row_loss[i] = l;
  p.counted[i] = counted;
  if (p.row_out != nullptr) p.row_out[i] = w * l;
  if (p.loss_none != nullptr) p.loss_none[i] = static_cast<scalar_t>(w * l);
}

template <int kRowThreads, int kBlockThreads, typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads) cross_entropy_kernel(const CrossEntropyParams<scalar_t> p) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int kRowsPerBlock = kBlockThreads / kRowThreads;
  __shared__ opmath_t smem[2 * (kRowThreads / kWarp + 1)];
  const int tid = threadIdx.x % kRowThreads;
  // 1 / max(n_pre, 1) in double, then rounded: the CPU's coefficient.
  const opmath_t mean_coef =
      p.n_pre == nullptr ? opmath_t(1) : static_cast<opmath_t>(1.0 / static_cast<double>(*p.n_pre > 1 ? *p.n_pre : 1));
  const int64_t row_stride = int64_t(gridDim.x) * kRowsPerBlock;
  for (int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kRowThreads; i < p.N; i += row_stride) {
    const scalar_t* __restrict__ z = p.logits + i * p.C;
    scalar_t* __restrict__ g = p.grad == nullptr ? nullptr : p.grad + i * p.C;
    const RowStatus st = row_status(p.mask, p.target, i, p.C, p.ignore_index);
    opmath_t M = -inf<opmath_t>(), S = 0;
    if (st.valid) {  // uniform over the row's threads, so the barriers inside are safe
      for (int64_t k = tid; k < p.C; k += kRowThreads)
        online_add(M, S, masked_value(z, st.arow, k, p.detach, p.mask_value, p.offset));
      row_allreduce<kRowThreads>(M, S, MaxSumOp{}, smem);
    }
    if (M == -inf<opmath_t>()) {  // ignored, masked or bad target, or every v = -inf: not counted
      if (tid == 0) store_row(p, i, false, opmath_t(0), opmath_t(0));
      if (g != nullptr)
        for (int64_t k = tid; k < p.C; k += kRowThreads) g[k] = static_cast<scalar_t>(opmath_t(0));
      continue;
    }
    if (M == inf<opmath_t>()) S = qnan<opmath_t>();
    const opmath_t w = p.weight == nullptr ? opmath_t(1) : p.weight[i];
    // v_y = z_y (active). (M - v_y) + log S: M + log S - v_y rounds log S away once |M| >> log S.
    if (tid == 0) store_row(p, i, true, (M - static_cast<opmath_t>(z[st.y])) + log_op(S), w);
    if (g == nullptr) continue;
    const opmath_t coef = w * mean_coef;
    const opmath_t inv = coef / S;
    // A zero scale selects 0 rather than multiplying: a stopped gradient stays 0 in a NaN row.
    for (int64_t k = tid; k < p.C; k += kRowThreads) {
      const opmath_t scale = (st.arow == nullptr || st.arow[k]) ? p.scale_active : p.scale_masked;
      opmath_t gk = 0;
      if (scale != opmath_t(0)) {
        const opmath_t e = exp_op(masked_value(z, st.arow, k, p.detach, p.mask_value, p.offset) - M);
        // p_y - 1 in opmath before rounding: no cancellation in half types
        gk = k == st.y ? (e / S - opmath_t(1)) * coef * scale : e * inv * scale;
      }
      g[k] = static_cast<scalar_t>(gk);
    }
  }
}

// ---- masked_cross_entropy, vectorized block rows -----------------------------------------------
//
// Thread t of a row's block owns packs t, t + 512, ...; a chunk is kVecs of them a thread. Pass 1
// takes a chunk's max before any exp, so each value costs one exp plus one rescale a chunk.

// 16 bytes of a row (kSize elements), one load or store, held as four 32-bit words: a struct of
// scalar_t would take a register per half-type element. get(j): element j in opmath.
template <typename scalar_t>
struct Pack {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  uint4 w;

  __device__ __forceinline__ uint32_t word(int i) const { return i == 0 ? w.x : i == 1 ? w.y : i == 2 ? w.z : w.w; }
  __device__ __forceinline__ void set_word(int i, uint32_t v) {
    if (i == 0) w.x = v;
    else if (i == 1) w.y = v;
    else if (i == 2) w.z = v;
    else w.w = v;
  }
  __device__ __forceinline__ at::opmath_type<scalar_t> get(int j) const;
  // Elements j and j + 1 (j + 1 < kSize), rounded to scalar_t as static_cast does.
  __device__ __forceinline__ void set_pair(int j, at::opmath_type<scalar_t> a, at::opmath_type<scalar_t> b);
};

template <>
__device__ __forceinline__ float Pack<c10::BFloat16>::get(int j) const {
  return __uint_as_float(j % 2 ? word(j / 2) & 0xffff0000u : word(j / 2) << 16);
}
template <>
__device__ __forceinline__ void Pack<c10::BFloat16>::set_pair(int j, float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  set_word(j / 2, *reinterpret_cast<const uint32_t*>(&h));
}
template <>
__device__ __forceinline__ float Pack<c10::Half>::get(int j) const {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(word(j / 2) >> (j % 2 * 16))));
}
template <>
__device__ __forceinline__ void Pack<c10::Half>::set_pair(int j, float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  set_word(j / 2, *reinterpret_cast<const uint32_t*>(&h));
}
template <>
__device__ __forceinline__ float Pack<float>::get(int j) const {
  return __uint_as_float(word(j));
}
template <>
__device__ __forceinline__ void Pack<float>::set_pair(int j, float a, float b) {
  set_word(j, __float_as_uint(a));
  set_word(j + 1, __float_as_uint(b));
}
template <>
__device__ __forceinline__ double Pack<double>::get(int j) const {
  return __hiloint2double(static_cast<int>(word(2 * j + 1)), static_cast<int>(word(2 * j)));
}
template <>
__device__ __forceinline__ void Pack<double>::set_pair(int, double a, double b) {
  w = make_uint4(__double2loint(a), __double2hiint(a), __double2loint(b), __double2hiint(b));
}

// +0 in every floating type.
template <typename scalar_t>
__device__ __forceinline__ Pack<scalar_t> zero_pack() {
  return {make_uint4(0, 0, 0, 0)};
}

// max(a, b), NaN if either is: the CPU's NaN-propagating max, one instruction for float.
__device__ __forceinline__ float nan_max(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return b > a || isnan(b) ? b : a;  // a NaN a stays: nothing compares greater
#endif
}
__device__ __forceinline__ double nan_max(double a, double b) { return b > a || isnan(b) ? b : a; }

// Folds a batch of values with max bmax (NaN if any is NaN) into a running (m, s): the one rescale
// the batch needs; the caller then adds exp_op(v - m) for each value unless m = -inf. Value by
// value this is online_add: a NaN sticks, a row of -inf stays (-inf, 0), and a +inf max leaves an
// s the callers replace by NaN.
template <typename T>
__device__ __forceinline__ void raise_max(T& m, T& s, T bmax) {
  if (bmax > m) {
    s = s * exp_op(m - bmax);
    m = bmax;
  } else if (!(bmax <= m)) {
    m = s = qnan<T>();
  }
}

// A pack's kSize mask bools, read as one word: aligned, as rows start at g * C, a multiple of
// kSize, in an aligned table.
template <typename scalar_t>
using MaskWord = std::conditional_t<Pack<scalar_t>::kSize == 8, uint64_t,
                                    std::conditional_t<Pack<scalar_t>::kSize == 4, uint32_t, uint16_t>>;

// The bools of a mask word as bits, bit j = class j of the pack active.
template <typename scalar_t>
__device__ __forceinline__ unsigned mask_bits(MaskWord<scalar_t> w) {
  unsigned bits = 0;
#pragma unroll
  for (int j = 0; j < Pack<scalar_t>::kSize; ++j) bits |= unsigned(((w >> (8 * j)) & 0xff) != 0) << j;
  return bits;
}

// masked_value for element j of a pack.
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ opmath_t pack_value(const Pack<scalar_t>& r, int j, unsigned bits,
                                               const CrossEntropyParams<scalar_t>& p) {
  const opmath_t x = r.get(j);
  if (bits >> j & 1) return x;
  return p.detach ? x + p.offset : p.mask_value;
}

// The packs first, first + 512, ... (kVecs of them, those below nvec) of a row and their masks.
// Pack indices are int: the host sends rows of 2^31 columns or more to the scalar kernel.
template <int kVecs, typename scalar_t>
struct RowChunk {
  using opmath_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t>;
  static constexpr int V = P::kSize;
  static constexpr unsigned kAll = (1u << V) - 1;
  using Bits = std::conditional_t<(kVecs * V > 32), uint64_t, uint32_t>;  // V bits a pack: registers are short
  P raw[kVecs];
  Bits bits;

  __device__ __forceinline__ unsigned mask(int u) const { return unsigned(bits >> (u * V)) & kAll; }

  // A pack with every class const-masked is not read: its values are m whatever z holds. The mask
  // words all go out before the first is waited on.
  __device__ __forceinline__ void load(const P* __restrict__ z, const bool* arow, int first, int nvec,
                                       const CrossEntropyParams<scalar_t>& p) {
    if (arow == nullptr) {
      bits = ~Bits(0);
    } else {
      MaskWord<scalar_t> words[kVecs];
#pragma unroll
      for (int u = 0; u < kVecs; ++u) {
        const int k = first + u * kBlockRowThreads;
        words[u] = k < nvec ? reinterpret_cast<const MaskWord<scalar_t>*>(arow)[k] : 0;
      }
      bits = 0;
#pragma unroll
      for (int u = 0; u < kVecs; ++u) bits |= Bits(mask_bits<scalar_t>(words[u])) << (u * V);
    }
#pragma unroll
    for (int u = 0; u < kVecs; ++u) {
      const int k = first + u * kBlockRowThreads;
      raw[u] = k < nvec && (mask(u) != 0 || p.detach) ? z[k] : zero_pack<scalar_t>();
    }
  }

  // Pass 1: the chunk's max, then one exp per value against the merged max.
  __device__ __forceinline__ void fold(opmath_t& m, opmath_t& s, int first, int nvec,
                                       const CrossEntropyParams<scalar_t>& p) const {
    opmath_t cmax = -inf<opmath_t>();
#pragma unroll
    for (int u = 0; u < kVecs; ++u) {
      if (first + u * kBlockRowThreads >= nvec) break;
#pragma unroll
      for (int j = 0; j < V; ++j)
        cmax = nan_max(cmax, mask(u) == kAll ? raw[u].get(j) : pack_value(raw[u], j, mask(u), p));
    }
    raise_max(m, s, cmax);
    if (m == -inf<opmath_t>()) return;
#pragma unroll
    for (int u = 0; u < kVecs; ++u) {
      if (first + u * kBlockRowThreads >= nvec) break;
      opmath_t ps = 0;
      if (mask(u) == kAll) {
#pragma unroll
        for (int j = 0; j < V; ++j) ps += exp_op(raw[u].get(j) - m);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) ps += exp_op(pack_value(raw[u], j, mask(u), p) - m);
      }
      s += ps;
    }
  }

  // Pass 2: the gradient of each pack, the scalar kernel's formulas element by element (the
  // target's entry is rewritten afterwards).
  __device__ __forceinline__ void store(P* __restrict__ g, int first, int nvec, opmath_t M, opmath_t inv,
                                        const CrossEntropyParams<scalar_t>& p) const {
#pragma unroll
    for (int u = 0; u < kVecs; ++u) {
      const int k = first + u * kBlockRowThreads;
      if (k >= nvec) break;
      const unsigned b = mask(u);
      P out;
      opmath_t gk[V];
      if (b == kAll && p.scale_active != opmath_t(0)) {
#pragma unroll
        for (int j = 0; j < V; ++j) gk[j] = exp_op(raw[u].get(j) - M) * inv * p.scale_active;
      } else if (b == kAll || (b == 0 && p.scale_masked == opmath_t(0))) {
#pragma unroll
        for (int j = 0; j < V; ++j) gk[j] = 0;
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const opmath_t scale = b >> j & 1 ? p.scale_active : p.scale_masked;
          gk[j] = scale == opmath_t(0) ? opmath_t(0) : exp_op(pack_value(raw[u], j, b, p) - M) * inv * scale;
        }
      }
#pragma unroll
      for (int j = 0; j < V; j += 2) out.set_pair(j, gk[j], gk[j + 1]);
      g[k] = out;
    }
  }
};

// The scalar kernel's row logic (row status, not-counted rows, loss outputs) over packs.
// kResident: nvec <= 512 * kVecs, so pass 1 loads the whole row into `c` and pass 2 reuses it.
template <int kVecs, bool kResident, typename scalar_t>
__global__ void __launch_bounds__(kBlockRowThreads, 2) cross_entropy_vec_kernel(const CrossEntropyParams<scalar_t> p) {
  using opmath_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t>;
  constexpr int kChunk = kBlockRowThreads * kVecs;
  __shared__ opmath_t smem[2 * (kBlockRowThreads / kWarp + 1)];
  const int tid = threadIdx.x;
  const opmath_t mean_coef =
      p.n_pre == nullptr ? opmath_t(1) : static_cast<opmath_t>(1.0 / static_cast<double>(*p.n_pre > 1 ? *p.n_pre : 1));
  const int nvec = static_cast<int>(p.C / P::kSize);
  for (int64_t i = blockIdx.x; i < p.N; i += gridDim.x) {
    const P* __restrict__ z = reinterpret_cast<const P*>(p.logits + i * p.C);
    P* __restrict__ g = p.grad == nullptr ? nullptr : reinterpret_cast<P*>(p.grad + i * p.C);
    const RowStatus st = row_status(p.mask, p.target, i, p.C, p.ignore_index);
    RowChunk<kVecs, scalar_t> c;
    // A resident row's loads go out before st.valid, which waits on the mask byte of the target,
    // is known; only rows with a bad or masked target read their logits for nothing.
    if (kResident && st.y != p.ignore_index && tid < nvec) c.load(z, st.arow, tid, nvec, p);
    opmath_t M = -inf<opmath_t>(), S = 0;
    if (st.valid) {  // uniform over the block, so the barriers inside are safe
      for (int first = tid; first < nvec; first += kChunk) {
        if constexpr (!kResident) c.load(z, st.arow, first, nvec, p);
        c.fold(M, S, first, nvec, p);
      }
      row_allreduce<kBlockRowThreads>(M, S, MaxSumOp{}, smem);
    }
    if (M == -inf<opmath_t>()) {  // ignored, masked or bad target, or every v = -inf: not counted
      if (tid == 0) store_row(p, i, false, opmath_t(0), opmath_t(0));
      if (g != nullptr)
        for (int k = tid; k < nvec; k += kBlockRowThreads) g[k] = zero_pack<scalar_t>();
      continue;
    }
    if (M == inf<opmath_t>()) S = qnan<opmath_t>();
    const opmath_t w = p.weight == nullptr ? opmath_t(1) : p.weight[i];
    if (tid == 0)  // v_y = z_y: the target is active; (M - v_y) + log S keeps log S at |M| >> 1
      store_row(p, i, true, (M - static_cast<opmath_t>(reinterpret_cast<const scalar_t*>(z)[st.y])) + log_op(S), w);
    if (g == nullptr) continue;
    const opmath_t coef = w * mean_coef;
    const opmath_t inv = coef / S;
    // A streamed row's chunks go backwards: the last read are the likeliest to be still in L2.
    for (int first = tid < nvec ? tid + (nvec - 1 - tid) / kChunk * kChunk : -1; first >= 0; first -= kChunk) {
      if constexpr (!kResident) c.load(z, st.arow, first, nvec, p);
      c.store(g, first, nvec, M, inv, p);
    }
    // The thread that stored the target's pack rewrites its entry (v_y = z_y, scale s_n), in one
    // place rather than in every unrolled pack: p_y - 1 in opmath before rounding, no cancellation
    // in half types.
    if (st.y / P::kSize % kBlockRowThreads == tid && p.scale_active != opmath_t(0)) {
      const opmath_t e = exp_op(static_cast<opmath_t>(reinterpret_cast<const scalar_t*>(z)[st.y]) - M);
      reinterpret_cast<scalar_t*>(g)[st.y] = static_cast<scalar_t>((e / S - opmath_t(1)) * coef * p.scale_active);
    }
  }
}

// The smallest resident kernel that holds packs_per_thread, else the streaming one.
template <typename scalar_t>
void launch_vec_rows(const CrossEntropyParams<scalar_t>& p, int64_t blocks, int64_t packs_per_thread,
                     cudaStream_t stream) {
  constexpr int kMax = kResidentPacks<scalar_t>;
  if (packs_per_thread > kMax)
    cross_entropy_vec_kernel<kStreamPacks, false, scalar_t><<<blocks, kBlockRowThreads, 0, stream>>>(p);
  else if (packs_per_thread <= 1)
    cross_entropy_vec_kernel<1, true, scalar_t><<<blocks, kBlockRowThreads, 0, stream>>>(p);
  else if (packs_per_thread <= 2)
    cross_entropy_vec_kernel<std::min(2, kMax), true, scalar_t><<<blocks, kBlockRowThreads, 0, stream>>>(p);
  else if (packs_per_thread <= 4)
    cross_entropy_vec_kernel<std::min(4, kMax), true, scalar_t><<<blocks, kBlockRowThreads, 0, stream>>>(p);
  else
    cross_entropy_vec_kernel<kMax, true, scalar_t><<<blocks, kBlockRowThreads, 0, stream>>>(p);
}

template <typename scalar_t>
struct CountParams {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t* target;
  MaskView mask;
  int64_t N, C, ignore_index;
  bool count_targets;      // n_pre -> counts[0], bad rows -> counts[2]
  const bool* counted;     // non-null: n -> counts[1]
  const opmath_t* row_out;  // non-null: its sum (or mean over n) -> *loss
  scalar_t* loss;
  bool mean;
  int64_t* counts;
};

// One block, so the reduction order depends on nothing but N: bit-identical runs, no float atomics.
// Used twice: as the pre-pass (n_pre and bad, which the main kernel's mean coefficient needs) and
// as the finalize step (n and the reduced loss, plus n_pre and bad when no pre-pass ran).
template <typename scalar_t>
__global__ void __launch_bounds__(kReduceThreads) count_kernel(const CountParams<scalar_t> p) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int kWarps = kReduceThreads / kWarp;
  __shared__ opmath_t sum_smem[kWarps];
  __shared__ long long cnt_smem[3][kWarps];
  opmath_t sum = 0;
  long long n = 0, n_pre = 0, bad = 0;
  for (int64_t i = threadIdx.x; i < p.N; i += kReduceThreads) {
    if (p.count_targets) {
      const RowStatus st = row_status(p.mask, p.target, i, p.C, p.ignore_index);
      n_pre += st.valid;
      bad += st.bad;
    }
    if (p.counted != nullptr) n += p.counted[i];
    if (p.row_out != nullptr) sum += p.row_out[i];
  }
  sum = warp_sum(sum);
  n = warp_sum(n);
  n_pre = warp_sum(n_pre);
  bad = warp_sum(bad);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    sum_smem[warp] = sum;
    cnt_smem[0][warp] = n;
    cnt_smem[1][warp] = n_pre;
    cnt_smem[2][warp] = bad;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kWarps; ++w) {
    sum += sum_smem[w];
    n += cnt_smem[0][w];
    n_pre += cnt_smem[1][w];
    bad += cnt_smem[2][w];
  }
  if (p.count_targets) {
    p.counts[0] = n_pre;
    p.counts[2] = bad;
  }
  if (p.counted != nullptr) p.counts[1] = n;
  if (p.loss != nullptr) {
    if (p.mean) sum = sum / static_cast<opmath_t>(n > 1 ? n : 1);
    *p.loss = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t>
void launch_count(const CountParams<scalar_t>& p) {
  count_kernel<scalar_t><<<1, kReduceThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but logits are on ",
                    ref.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_cross_entropy_cuda(
    const at::Tensor& logits, const at::Tensor& target, const c10::optional<at::Tensor>& active,
    const c10::optional<at::Tensor>& row_group, const c10::optional<at::Tensor>& weight, int64_t mode,
    double mask_value, double offset, double old_grad_scale, double new_grad_scale, int64_t ignore_index,
    int64_t reduction, bool compute_grad) {
  constexpr const char* op = "masked_cross_entropy";
  check_logits(logits, op);
  TORCH_CHECK_VALUE(logits.is_cuda(), op, ": logits must be a CUDA tensor here, got ", logits.device());
  check_mask(logits, active, row_group, op);
  check_scalars(mask_value, offset, mode, op);
  check_reduction(op, reduction);
  const int64_t N = logits.size(0), C = logits.size(1);
  TORCH_CHECK_VALUE(target.scalar_type() == at::kLong, op, ": target must be int64, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == N, op, ": target must be [N=", N, "], got ",
                    target.sizes());
  check_same_device(target, logits, op, "target");
  if (weight.has_value()) {
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == N, op, ": weight must be [N=", N, "], got ",
                      weight->sizes());
    check_same_device(*weight, logits, op, "weight");
  }

  const c10::cuda::CUDAGuard guard(logits.device());
  const auto opmath_dtype = at::toOpMathType(logits.scalar_type());
  const auto opts = logits.options();
  at::Tensor counts = at::empty({3}, opts.dtype(at::kLong));
  at::Tensor row_loss = at::empty({N}, opts.dtype(opmath_dtype));
  at::Tensor counted = at::empty({N}, opts.dtype(at::kBool));
  at::Tensor grad = compute_grad ? at::empty({N, C}, opts) : at::empty({0}, opts);
  at::Tensor loss = reduction == kNone ? at::empty({N}, opts) : at::empty({}, opts);
  if (N == 0) {
    counts.zero_();
    loss.zero_();
    return {loss, row_loss, grad, counted, counts};
  }
  at::Tensor row_out = reduction == kNone ? at::Tensor() : at::empty({N}, opts.dtype(opmath_dtype));
  const at::Tensor z = logits.contiguous(), y = target.contiguous();
  const ContiguousMask contiguous_mask(active, row_group);
  const MaskView mask = contiguous_mask.view;
  const at::Tensor w = weight.has_value() ? weight->to(opmath_dtype).contiguous() : at::Tensor();
  // Only the mean's gradient needs n_pre before the row pass; otherwise the finalize step counts it.
  const bool prepass = compute_grad && reduction == kMean;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "masked_cross_entropy_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    CountParams<scalar_t> cp{};
    cp.target = y.const_data_ptr<int64_t>();
    cp.mask = mask;
    cp.N = N;
    cp.C = C;
    cp.ignore_index = ignore_index;
    cp.counts = counts.data_ptr<int64_t>();
    if (prepass) {
      cp.count_targets = true;
      launch_count(cp);
    }

    CrossEntropyParams<scalar_t> p{};
    p.logits = z.const_data_ptr<scalar_t>();
    p.target = y.const_data_ptr<int64_t>();
    p.weight = w.defined() ? w.const_data_ptr<opmath_t>() : nullptr;
    p.mask = mask;
    p.N = N;
    p.C = C;
    p.ignore_index = ignore_index;
    p.detach = mode == kDetach;
    p.mask_value = static_cast<opmath_t>(mask_value);
    p.offset = static_cast<opmath_t>(offset);
    p.scale_active = static_cast<opmath_t>(new_grad_scale);
    p.scale_masked = mode == kDetach ? static_cast<opmath_t>(old_grad_scale) : opmath_t(0);
    p.n_pre = prepass ? counts.const_data_ptr<int64_t>() : nullptr;
    p.row_loss = row_loss.data_ptr<opmath_t>();
    p.row_out = row_out.defined() ? row_out.data_ptr<opmath_t>() : nullptr;
    p.loss_none = reduction == kNone ? loss.data_ptr<scalar_t>() : nullptr;
    p.counted = counted.data_ptr<bool>();
    p.grad = compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const RowLaunch l = row_launch(N, C);
    constexpr int V = Pack<scalar_t>::kSize;
    if (l.warp_rows)
      cross_entropy_kernel<kWarp, kWarpRowBlock, scalar_t><<<l.blocks, kWarpRowBlock, 0, stream>>>(p);
    else if (C % V != 0 || C > kMaxVecC || !is_aligned(p.logits, 16) || !is_aligned(p.grad, 16) ||
             !is_aligned(mask.active, V))
      cross_entropy_kernel<kBlockRowThreads, kBlockRowThreads, scalar_t><<<l.blocks, kBlockRowThreads, 0, stream>>>(p);
    else
      launch_vec_rows(p, l.blocks, ceil_div(C / V, kBlockRowThreads), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    cp.count_targets = !prepass;
    cp.counted = p.counted;
    cp.row_out = p.row_out;
    cp.loss = reduction == kNone ? nullptr : loss.data_ptr<scalar_t>();
    cp.mean = reduction == kMean;
    launch_count(cp);
  });
  return {loss, row_loss, grad, counted, counts};
}

// ---- masked_cross_entropy_backward_ -----------------------------------------------------------

template <int kRowThreads, int kBlockThreads, typename scalar_t, typename gl_t>
__global__ void __launch_bounds__(kBlockThreads)
    cross_entropy_backward_kernel(scalar_t* __restrict__ grad, const bool* __restrict__ counted,
                                  const gl_t* __restrict__ grad_loss, int64_t gl_stride,
                                  const int64_t* __restrict__ counts, int64_t N, int64_t C, int64_t reduction) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int kRowsPerBlock = kBlockThreads / kRowThreads;
  opmath_t scale = 1;
  if (reduction != kNone) {
    // The CPU's double arithmetic: gbar (sum) or gbar * n_pre / max(n, 1) (mean), rounded once.
    double s = static_cast<double>(grad_loss[0]);
    if (reduction == kMean)
      s *= static_cast<double>(counts[0] > 1 ? counts[0] : 1) / static_cast<double>(counts[1] > 1 ? counts[1] : 1);
    if (s == 1.0) return;  // plain loss.backward(): the buffer already holds the gradient
    scale = static_cast<opmath_t>(s);
  }
  const int tid = threadIdx.x % kRowThreads;
  const int64_t row_stride = int64_t(gridDim.x) * kRowsPerBlock;
  for (int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kRowThreads; i < N; i += row_stride) {
    if (!counted[i]) continue;  // select, never multiply: stays 0 even for a NaN upstream
    const opmath_t s = reduction == kNone ? static_cast<opmath_t>(grad_loss[i * gl_stride]) : scale;
    if (s == opmath_t(1)) continue;
    scalar_t* __restrict__ g = grad + i * C;
    for (int64_t k = tid; k < C; k += kRowThreads) g[k] = static_cast<scalar_t>(static_cast<opmath_t>(g[k]) * s);
  }
}

// The C++ signature must equal the CPU kernel's (the dispatcher rejects a mismatch at load time).
void masked_cross_entropy_backward_cuda(const at::Tensor& grad_loss, at::Tensor& grad, const at::Tensor& counted,
                                        const at::Tensor& counts, int64_t reduction) {
  constexpr const char* op = "masked_cross_entropy_backward_";
  if (grad.numel() == 0) return;
  TORCH_CHECK(grad.is_cuda() && grad.dim() == 2 && grad.is_contiguous(), op,
              ": grad buffer must be a contiguous [N, C] CUDA tensor");
  check_reduction(op, reduction);
  const int64_t N = grad.size(0), C = grad.size(1);
  TORCH_CHECK(counted.scalar_type() == at::kBool && counted.numel() == N && counted.device() == grad.device(), op,
              ": counted must be a bool [N=", N, "] tensor on ", grad.device());
  TORCH_CHECK_VALUE(grad_loss.device() == grad.device(), op, ": grad_loss is on ", grad_loss.device(),
                    " but the gradient buffer is on ", grad.device());
  if (reduction == kNone) {
    TORCH_CHECK_VALUE(grad_loss.numel() == N, op, ": grad_loss must have N=", N, " elements for reduction='none'");
  } else {
    TORCH_CHECK_VALUE(grad_loss.numel() == 1, op, ": grad_loss must have one element for a reduced loss");
  }
  if (reduction == kMean)
    TORCH_CHECK(counts.scalar_type() == at::kLong && counts.numel() == 3 && counts.device() == grad.device(), op,
                ": counts must be the int64 [3] tensor of the forward, on ", grad.device());

  const c10::cuda::CUDAGuard guard(grad.device());
  // Read grad_loss in place (an expanded [N] upstream has stride 0: no copy); another dtype than
  // the buffer's goes through double, exact for every floating dtype.
  at::Tensor gl = reduction == kNone ? grad_loss.reshape({N}) : grad_loss;
  if (gl.scalar_type() != grad.scalar_type()) gl = gl.to(at::kDouble);
  const int64_t gl_stride = reduction == kNone ? gl.stride(0) : 0;
  const at::Tensor counted_c = counted.contiguous();
  const at::Tensor counts_c = reduction == kMean ? counts.contiguous() : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "masked_ce_backward_cuda", [&] {
    auto launch = [&](auto tag) {
      using gl_t = decltype(tag);
      const gl_t* gl_ptr = static_cast<const gl_t*>(gl.const_data_ptr());
      const int64_t* counts_ptr = counts_c.defined() ? counts_c.const_data_ptr<int64_t>() : nullptr;
      const auto stream = c10::cuda::getCurrentCUDAStream();
      const RowLaunch l = row_launch(N, C);
      if (l.warp_rows)
        cross_entropy_backward_kernel<kWarp, kWarpRowBlock, scalar_t, gl_t><<<l.blocks, kWarpRowBlock, 0, stream>>>(
            grad.data_ptr<scalar_t>(), counted_c.const_data_ptr<bool>(), gl_ptr, gl_stride, counts_ptr, N, C, reduction);
      else
        cross_entropy_backward_kernel<kBlockRowThreads, kBlockRowThreads, scalar_t, gl_t>
            <<<l.blocks, kBlockRowThreads, 0, stream>>>(grad.data_ptr<scalar_t>(), counted_c.const_data_ptr<bool>(),
                                                        gl_ptr, gl_stride, counts_ptr, N, C, reduction);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (gl.scalar_type() == grad.scalar_type())
      launch(scalar_t());
    else
      launch(double());
  });
}

// ---- masked_softmax ---------------------------------------------------------------------------

// This op has no counts output: a row_group outside [-1, G) makes its row all active (the CPU
// raises instead; the Python wrapper checks the range when PYFASTLAB_CHECK=1).
__device__ __forceinline__ const bool* softmax_mask_row(const MaskView& mask, int64_t i) {
  const int64_t g = mask.group_of(i);
  return mask.group_ok(g) ? mask.row(g) : nullptr;
}

template <typename scalar_t>
struct SoftmaxParams {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* logits;
  scalar_t* out;
  MaskView mask;
  int64_t N, C;
  bool detach, log;
  opmath_t mask_value, offset;
};

template <int kRowThreads, int kBlockThreads, typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads) softmax_kernel(const SoftmaxParams<scalar_t> p) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int kRowsPerBlock = kBlockThreads / kRowThreads;
  __shared__ opmath_t smem[2 * (kRowThreads / kWarp + 1)];
  const int tid = threadIdx.x % kRowThreads;
  const int64_t row_stride = int64_t(gridDim.x) * kRowsPerBlock;
  for (int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kRowThreads; i < p.N; i += row_stride) {
    const scalar_t* __restrict__ z = p.logits + i * p.C;
    scalar_t* __restrict__ o = p.out + i * p.C;
    const bool* arow = softmax_mask_row(p.mask, i);
    opmath_t M = -inf<opmath_t>(), S = 0;
    for (int64_t k = tid; k < p.C; k += kRowThreads)
      online_add(M, S, masked_value(z, arow, k, p.detach, p.mask_value, p.offset));
    row_allreduce<kRowThreads>(M, S, MaxSumOp{}, smem);
    if (M == -inf<opmath_t>()) {  // every entry -inf: defined as all 0 (log: all -inf)
      const scalar_t fill = static_cast<scalar_t>(p.log ? -inf<opmath_t>() : opmath_t(0));
      for (int64_t k = tid; k < p.C; k += kRowThreads) o[k] = fill;
      continue;
    }
    if (M == inf<opmath_t>()) S = qnan<opmath_t>();
    if (p.log) {
      const opmath_t lse = M + log_op(S);
      for (int64_t k = tid; k < p.C; k += kRowThreads)
        o[k] = static_cast<scalar_t>(masked_value(z, arow, k, p.detach, p.mask_value, p.offset) - lse);
    } else {
      const opmath_t inv = opmath_t(1) / S;
      for (int64_t k = tid; k < p.C; k += kRowThreads)
        o[k] = static_cast<scalar_t>(exp_op(masked_value(z, arow, k, p.detach, p.mask_value, p.offset) - M) * inv);
    }
  }
}

template <typename scalar_t>
struct SoftmaxBackwardParams {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* out;
  const scalar_t* grad_out;
  scalar_t* dz;
  MaskView mask;
  int64_t N, C;
  bool log;
  opmath_t scale_active, scale_masked;  // s_n; s_o in detach mode, 0 in const mode
};

template <int kRowThreads, int kBlockThreads, typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads) softmax_backward_kernel(const SoftmaxBackwardParams<scalar_t> p) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int kRowsPerBlock = kBlockThreads / kRowThreads;
  __shared__ opmath_t smem[2 * (kRowThreads / kWarp + 1)];
  const int tid = threadIdx.x % kRowThreads;
  const int64_t row_stride = int64_t(gridDim.x) * kRowsPerBlock;
  for (int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kRowThreads; i < p.N; i += row_stride) {
    const scalar_t* __restrict__ y = p.out + i * p.C;
    const scalar_t* __restrict__ gb = p.grad_out + i * p.C;
    scalar_t* __restrict__ dz = p.dz + i * p.C;
    const bool* arow = softmax_mask_row(p.mask, i);
    // A dead row (every v = -inf) is all 0 (log: all -inf): its max, ignoring NaN as the CPU's
    // std::max does, finds it. dot: sum_j gbar_j p_j (softmax) or sum_j gbar_j (log).
    opmath_t ymax = p.log ? -inf<opmath_t>() : opmath_t(0), dot = 0;
    for (int64_t k = tid; k < p.C; k += kRowThreads) {
      const opmath_t yk = static_cast<opmath_t>(y[k]), gk = static_cast<opmath_t>(gb[k]);
      ymax = ymax < yk ? yk : ymax;
      dot += p.log ? gk : gk * yk;
    }
    row_allreduce<kRowThreads>(ymax, dot, MaxAddOp{}, smem);
    if (p.log ? ymax == -inf<opmath_t>() : ymax == opmath_t(0)) {
      for (int64_t k = tid; k < p.C; k += kRowThreads) dz[k] = static_cast<scalar_t>(opmath_t(0));
      continue;
    }
    for (int64_t k = tid; k < p.C; k += kRowThreads) {
      const opmath_t scale = (arow == nullptr || arow[k]) ? p.scale_active : p.scale_masked;
      const opmath_t yk = static_cast<opmath_t>(y[k]), gk = static_cast<opmath_t>(gb[k]);
      const opmath_t dv = p.log ? gk - exp_op(yk) * dot : yk * (gk - dot);
      dz[k] = static_cast<scalar_t>(scale == opmath_t(0) ? opmath_t(0) : scale * dv);  // zero scale: select 0
    }
  }
}

at::Tensor masked_softmax_cuda(const at::Tensor& logits, const c10::optional<at::Tensor>& active,
                               const c10::optional<at::Tensor>& row_group, int64_t mode, double mask_value,
                               double offset, double /*old_grad_scale*/, double /*new_grad_scale*/, bool log) {
  constexpr const char* op = "masked_softmax";
  check_logits(logits, op);
  TORCH_CHECK_VALUE(logits.is_cuda(), op, ": logits must be a CUDA tensor here, got ", logits.device());
  check_mask(logits, active, row_group, op);
  check_scalars(mask_value, offset, mode, op);
  const int64_t N = logits.size(0), C = logits.size(1);
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor out = at::empty({N, C}, logits.options());
  if (N == 0) return out;
  const at::Tensor z = logits.contiguous();
  const ContiguousMask contiguous_mask(active, row_group);
  const MaskView mask = contiguous_mask.view;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "masked_softmax_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    SoftmaxParams<scalar_t> p{};
    p.logits = z.const_data_ptr<scalar_t>();
    p.out = out.data_ptr<scalar_t>();
    p.mask = mask;
    p.N = N;
    p.C = C;
    p.detach = mode == kDetach;
    p.log = log;
    p.mask_value = static_cast<opmath_t>(mask_value);
    p.offset = static_cast<opmath_t>(offset);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const RowLaunch l = row_launch(N, C);
    if (l.warp_rows)
      softmax_kernel<kWarp, kWarpRowBlock, scalar_t><<<l.blocks, kWarpRowBlock, 0, stream>>>(p);
    else
      softmax_kernel<kBlockRowThreads, kBlockRowThreads, scalar_t><<<l.blocks, kBlockRowThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor masked_softmax_backward_cuda(const at::Tensor& grad_out, const at::Tensor& out,
                                        const c10::optional<at::Tensor>& active,
                                        const c10::optional<at::Tensor>& row_group, int64_t mode,
                                        double old_grad_scale, double new_grad_scale, bool log) {
  constexpr const char* op = "masked_softmax_backward";
  check_logits(out, op);
  TORCH_CHECK_VALUE(out.is_cuda(), op, ": out must be a CUDA tensor here, got ", out.device());
  check_mask(out, active, row_group, op);
  TORCH_CHECK_VALUE(grad_out.sizes() == out.sizes(), op, ": grad_out must have the shape of out ", out.sizes());
  TORCH_CHECK_VALUE(grad_out.device() == out.device(), op, ": grad_out is on ", grad_out.device(), " but out is on ",
                    out.device());
  const int64_t N = out.size(0), C = out.size(1);
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor dz = at::empty({N, C}, out.options());
  if (N == 0) return dz;
  const at::Tensor y = out.contiguous();
  const at::Tensor gb = grad_out.to(out.scalar_type()).contiguous();
  const ContiguousMask contiguous_mask(active, row_group);
  const MaskView mask = contiguous_mask.view;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "masked_softmax_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    SoftmaxBackwardParams<scalar_t> p{};
    p.out = y.const_data_ptr<scalar_t>();
    p.grad_out = gb.const_data_ptr<scalar_t>();
    p.dz = dz.data_ptr<scalar_t>();
    p.mask = mask;
    p.N = N;
    p.C = C;
    p.log = log;
    p.scale_active = static_cast<opmath_t>(new_grad_scale);
    p.scale_masked = mode == kDetach ? static_cast<opmath_t>(old_grad_scale) : opmath_t(0);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const RowLaunch l = row_launch(N, C);
    if (l.warp_rows)
      softmax_backward_kernel<kWarp, kWarpRowBlock, scalar_t><<<l.blocks, kWarpRowBlock, 0, stream>>>(p);
    else
      softmax_backward_kernel<kBlockRowThreads, kBlockRowThreads, scalar_t>
          <<<l.blocks, kBlockRowThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dz;
}

// ---- pgd_linf_step_ ---------------------------------------------------------------------------

// The CPU's pgd_scalar: t = x + a * sign(g); u = min(max(t, x0 - eps), x0 + eps); clamp(u, lo, hi),
// NaN-propagating max / min (torch.maximum / minimum), sign(NaN) = NaN, the box clamp in
// std::min / std::max order. Half types compute in float and round once.
template <typename scalar_t>
struct PgdOp {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t a, e, l, h;

  __device__ __forceinline__ scalar_t operator()(scalar_t x, scalar_t g, scalar_t x0) const {
    return static_cast<scalar_t>(pgd_scalar<opmath_t>(x, g, x0, a, e, l, h));
  }
};

template <typename scalar_t>
__global__ void __launch_bounds__(kElementwiseThreads)
    pgd_contiguous_kernel(scalar_t* __restrict__ x, const scalar_t* __restrict__ g, const scalar_t* __restrict__ x0,
                          int64_t n, const PgdOp<scalar_t> op) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) x[i] = op(x[i], g[i], x0[i]);
}

// Any strides: byte offsets of (out, x_adv, grad, x_clean) from TensorIterator's offset
// calculator, on a sub-iterator small enough for 32-bit indices.
template <typename scalar_t>
__global__ void __launch_bounds__(kElementwiseThreads)
    pgd_strided_kernel(char* out, const char* x, const char* g, const char* x0, uint32_t n,
                       const OffsetCalculator<4> offsets, const PgdOp<scalar_t> op) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const auto off = offsets.get(i);
    *reinterpret_cast<scalar_t*>(out + off[0]) =
        op(*reinterpret_cast<const scalar_t*>(x + off[1]), *reinterpret_cast<const scalar_t*>(g + off[2]),
           *reinterpret_cast<const scalar_t*>(x0 + off[3]));
  }
}

void pgd_linf_step_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_clean, double eps,
                        double step_size, double lo, double hi) {
  check_pgd_args(x_adv, grad, x_clean);
  TORCH_CHECK_VALUE(x_adv.is_cuda(), "pgd_linf_step_: x_adv must be a CUDA tensor here, got ", x_adv.device());
  const c10::cuda::CUDAGuard guard(x_adv.device());
  // Written through TensorIterator's offset calculator rather than gpu_kernel (Loops.cuh): that
  // header needs nvcc's --extended-lambda, which this build does not pass.
  auto iter = pgd_iterator(x_adv, grad, x_clean);
  if (iter.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_adv.scalar_type(), "pgd_linf_step_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    // Scalars rounded to opmath first, as the eager chain does with Python scalars.
    const PgdOp<scalar_t> pgd{static_cast<opmath_t>(step_size), static_cast<opmath_t>(eps), static_cast<opmath_t>(lo),
                              static_cast<opmath_t>(hi)};
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (iter.is_contiguous()) {
      const int64_t n = iter.numel();
      const int64_t blocks = std::min(ceil_div(n, kElementwiseThreads), kMaxGrid);
      pgd_contiguous_kernel<scalar_t><<<blocks, kElementwiseThreads, 0, stream>>>(
          static_cast<scalar_t*>(iter.data_ptr(0)), static_cast<const scalar_t*>(iter.data_ptr(2)),
          static_cast<const scalar_t*>(iter.data_ptr(3)), n, pgd);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    for (auto& sub : iter.with_32bit_indexing()) {
      const int64_t n = sub.numel();
      const int64_t blocks = std::min(ceil_div(n, kElementwiseThreads), kMaxGrid);
      pgd_strided_kernel<scalar_t><<<blocks, kElementwiseThreads, 0, stream>>>(
          static_cast<char*>(sub.data_ptr(0)), static_cast<const char*>(sub.data_ptr(1)),
          static_cast<const char*>(sub.data_ptr(2)), static_cast<const char*>(sub.data_ptr(3)),
          static_cast<uint32_t>(n), make_offset_calculator<4>(sub), pgd);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CUDA, m) {
  m.impl("masked_cross_entropy", &masked_cross_entropy_cuda);
  m.impl("masked_cross_entropy_backward_", &masked_cross_entropy_backward_cuda);
  m.impl("masked_softmax", &masked_softmax_cuda);
  m.impl("masked_softmax_backward", &masked_softmax_backward_cuda);
  m.impl("pgd_linf_step_", &pgd_linf_step_cuda);
}

}  // namespace pyfastlab::continual::cuda
