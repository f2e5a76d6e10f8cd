// CUDA kernels of the mixup ops pair_mix, mixed_logits_cross_entropy and uniformity_loss,
// registered for the CUDA dispatch key. The CPU kernels (csrc/cpu/mixup*.cpp) are the ground truth
// for semantics; the math is spec mixup.md 3 and 6.
//
// pair_mix: one block per (row, D chunk); backward one block per row k gathers lam_k G_k and the
// (1 - lam_i) G_i of the rows whose partner is k through an inverse CSR built on device by a
// stable sort (no atomics: bit-identical across runs) and reduces grad_lam_k in the same pass.
// mixed CE: one block per row, online (max, sum) per thread then a block all-reduce
// (cuda_rows.cuh); the backward is one pass without scratch (program k recomputes its own mixed
// row and those of the rows that chose it). uniformity: forward over 32 x 32 Gram tiles J >= I
// only with fp32/fp64 FMA dots from shared memory, one (max, sum) per tile merged in fp64 in tile
// order; backward row-owner (a block owns 32 rows, loops over every column tile, accumulates
// p_ab x_b into its own opmath gradient rows: no atomics). Not yet tensor-core: see the README.
// An out-of-range partner or target is never read: its row gives NaN (loss, lse, mixed row and
// grad_lam) and takes no part in any other row's gradient. PYFASTLAB_CHECK=1 makes the wrapper raise.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

#include "pyfastlab/cuda_rows.cuh"
#include "pyfastlab/mixup.h"

namespace pyfastlab::mixup::cuda {
namespace {

using cuda_rows::inf;
using cuda_rows::qnan;

constexpr int kThreads = 256;
constexpr int kTile = 32;

struct ExpOp {
  __device__ float operator()(float x) const { return __expf(x); }
  __device__ double operator()(double x) const { return ::exp(x); }
};

template <typename T>
__device__ __forceinline__ T mix(T a, T b, T lam) {
  return lam == T(1) ? a : (lam == T(0) ? b : lam * a + (T(1) - lam) * b);
}

at::ScalarType opmath_of(const at::Tensor& x) { return at::toOpMathType(x.scalar_type()); }

at::Tensor lam_rows(const c10::optional<at::Tensor>& lam, double lam_scalar, int64_t B, const at::Tensor& like) {
  const auto opt = like.options().dtype(opmath_of(like));
  return lam.has_value() ? lam->to(opmath_of(like)).expand({B}).contiguous() : at::full({B}, lam_scalar, opt);
}

__device__ __forceinline__ bool in_range(int64_t index, int64_t size) { return index >= 0 && index < size; }

// (offsets [B + 1], rows [B]): rows i with partner k, ascending i, at offsets[k] .. offsets[k + 1].
// Rows with an out-of-range partner sort last, past offsets[B]: no row k gathers them.
std::tuple<at::Tensor, at::Tensor> inverse_csr(const at::Tensor& partner, int64_t B) {
  const at::Tensor key = at::where((partner >= 0) & (partner < B), partner, B);
  at::Tensor rows = std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor offsets = at::zeros({B + 1}, partner.options());
  offsets.narrow(0, 1, B).copy_(at::cumsum(at::bincount(key, {}, B + 1).narrow(0, 0, B), 0));
  return {offsets, rows};
}

at::Tensor lam_gradient(const at::Tensor& per_row, const c10::optional<at::Tensor>& lam, bool want,
                        const at::Tensor& like) {
  if (!want) return at::empty({0}, like.options());
  if (lam->dim() == 0) return per_row.to(at::kDouble).sum().to(lam->scalar_type());
  return per_row.to(lam->scalar_type());
}

// Block-wide sum of one value per thread (fixed order: deterministic); every thread gets it.
template <typename T>
__device__ T block_sum(T v, T* smem) {
  v = cuda_rows::warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < int(blockDim.x / 32) ? smem[lane] : T(0);
    v = cuda_rows::warp_sum(v);
    if (lane == 0) smem[32] = v;
  }
  __syncthreads();
  const T out = smem[32];
  __syncthreads();
  return out;
}

// ---- pair_mix ------------------------------------------------------------------------------------

template <typename S, typename T>
__global__ void pair_mix_forward_kernel(const S* x, const int64_t* p, const T* lam, S* out, int64_t B, int64_t D) {
  const int64_t i = blockIdx.x;
  const int64_t j = p[i];
  const bool ok = in_range(j, B);
  // grid-stride over the D chunks: grid.y is capped at 65535 (D > 65535 * kThreads would not launch)
  for (int64_t d = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; d < D; d += int64_t(gridDim.y) * blockDim.x)
    out[i * D + d] = ok ? static_cast<S>(mix(static_cast<T>(x[i * D + d]), static_cast<T>(x[j * D + d]), lam[i]))
                        : static_cast<S>(qnan<T>());
}

template <typename S, typename T>
__global__ void pair_mix_backward_kernel(const S* g, const S* x, const int64_t* p, const T* lam,
                                         const int64_t* off, const int64_t* rows, S* gx, T* glam, int64_t D) {
  __shared__ T smem[33];
  const int64_t k = blockIdx.x;
  const bool ok = in_range(p[k], gridDim.x);
  const int64_t pk = ok ? p[k] : k;
  const T lk = lam[k];
  const int64_t start = off[k], end = off[k + 1];
  T dot = ok ? T(0) : qnan<T>();
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const T gk = static_cast<T>(g[k * D + d]);
    T acc = lk * gk;
    for (int64_t j = start; j < end; ++j) {
      const int64_t i = rows[j];
      acc += (T(1) - lam[i]) * static_cast<T>(g[i * D + d]);
    }
    gx[k * D + d] = static_cast<S>(acc);
    if (glam != nullptr) dot += gk * (static_cast<T>(x[k * D + d]) - static_cast<T>(x[pk * D + d]));
  }
  if (glam != nullptr) {
    dot = block_sum(dot, smem);
    if (threadIdx.x == 0) glam[k] = dot;
  }
}

at::Tensor pair_mix_cuda(const at::Tensor& x_in, const at::Tensor& partner_in, const c10::optional<at::Tensor>& lam,
                         double lam_scalar) {
  check_pair("pair_mix", "x", x_in, partner_in, lam);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous(), partner = partner_in.contiguous();
  const int64_t B = x.size(0), D = x.size(1);
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  at::Tensor l = lam_rows(lam, lam_scalar, B, x);
  const int64_t chunks = std::min<int64_t>((D + kThreads - 1) / kThreads, 65535);  // grid.y limit
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(chunks));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pair_mix_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    pair_mix_forward_kernel<scalar_t, T><<<grid, kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), partner.const_data_ptr<int64_t>(), l.const_data_ptr<T>(),
        out.data_ptr<scalar_t>(), B, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pair_mix_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                          const at::Tensor& partner_in,
                                                          const c10::optional<at::Tensor>& lam, double lam_scalar,
                                                          bool lam_grad) {
  check_pair("pair_mix_backward", "x", x_in, partner_in, lam);
  check_pair_mix_grad(grad_in, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous(), partner = partner_in.contiguous();
  at::Tensor grad = grad_in.to(x.scalar_type()).contiguous();
  const int64_t B = x.size(0), D = x.size(1);
  at::Tensor grad_x = at::empty_like(x);
  const bool want = lam_grad && lam.has_value();
  at::Tensor per_row = at::zeros({B}, x.options().dtype(opmath_of(x)));
  if (B > 0) {
    at::Tensor l = lam_rows(lam, lam_scalar, B, x);
    auto [offsets, rows] = inverse_csr(partner, B);
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pair_mix_backward_cuda", [&] {
      using T = at::opmath_type<scalar_t>;
      pair_mix_backward_kernel<scalar_t, T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), partner.const_data_ptr<int64_t>(),
          l.const_data_ptr<T>(), offsets.const_data_ptr<int64_t>(), rows.const_data_ptr<int64_t>(),
          grad_x.data_ptr<scalar_t>(), want ? per_row.data_ptr<T>() : nullptr, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_x, lam_gradient(per_row, lam, want, x)};
}

// ---- mixed_logits_cross_entropy -------------------------------------------------------------------

template <typename S, typename T>
__global__ void mce_forward_kernel(const S* z, const int64_t* p, const T* lam, const int64_t* y, T* loss, T* lse,
                                   int64_t B, int64_t C) {
  __shared__ T smem[2 * (kThreads / 32) + 2];
  const int64_t i = blockIdx.x;
  const int64_t yi = y[i];
  const bool ok = in_range(p[i], B) && in_range(yi, C);
  const int64_t j = ok ? p[i] : i;
  const T l = lam[i];
  T m = -inf<T>(), s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    cuda_rows::online_add<ExpOp>(m, s, mix(static_cast<T>(z[i * C + c]), static_cast<T>(z[j * C + c]), l));
  cuda_rows::row_allreduce<kThreads>(m, s, cuda_rows::MaxSumOp<ExpOp>{}, smem);
  if (threadIdx.x == 0) {
    const bool finite = ok && !isnan(m) && m != inf<T>() && m != -inf<T>();
    const T log_s = ::log(s);
    lse[i] = finite ? m + log_s : qnan<T>();
    // (m - z_y) + log s: lse - z_y would round log s away once |m| >> log s (logits near 1e8)
    loss[i] = finite ? (m - mix(static_cast<T>(z[i * C + yi]), static_cast<T>(z[j * C + yi]), l)) + log_s
                     : qnan<T>();
  }
}

template <typename S, typename T>
__global__ void mce_backward_kernel(const S* z, const int64_t* p, const T* lam, const int64_t* y, const T* lse,
                                    const T* w, const int64_t* off, const int64_t* rows, S* gz, T* glam, int64_t C) {
  __shared__ T smem[33];
  const int64_t k = blockIdx.x;
  // an out-of-range index left lse_k NaN in the forward: the row's gradient is NaN, nothing is read
  const int64_t pk = in_range(p[k], gridDim.x) ? p[k] : k, yk = y[k];
  const T lk = lam[k], lse_k = lse[k], wk = w[k];
  const int64_t start = off[k], end = off[k + 1];
  T dot = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const T zk = static_cast<T>(z[k * C + c]), zp = static_cast<T>(z[pk * C + c]);
    const T dk = wk * (ExpOp{}(mix(zk, zp, lk) - lse_k) - (c == yk ? T(1) : T(0)));
    T acc = lk * dk;
    if (glam != nullptr) dot += dk * (zk - zp);
    for (int64_t jj = start; jj < end; ++jj) {  // rows i with partner k: mixed row is mix(z_i, z_k)
      const int64_t i = rows[jj];
      const T li = lam[i];
      const T di = w[i] * (ExpOp{}(mix(static_cast<T>(z[i * C + c]), zk, li) - lse[i]) - (c == y[i] ? T(1) : T(0)));
      acc += (T(1) - li) * di;
    }
    gz[k * C + c] = static_cast<S>(acc);
  }
  if (glam != nullptr) {
    dot = block_sum(dot, smem);
    if (threadIdx.x == 0) glam[k] = dot;
  }
}

std::tuple<at::Tensor, at::Tensor> mixed_logits_cross_entropy_cuda(const at::Tensor& logits_in,
                                                                   const at::Tensor& partner_in,
                                                                   const c10::optional<at::Tensor>& lam,
                                                                   double lam_scalar, const at::Tensor& target_in,
                                                                   int64_t reduction) {
  const char* op = "mixed_logits_cross_entropy";
  check_pair(op, "logits", logits_in, partner_in, lam);
  check_target(op, logits_in, target_in);
  check_reduction(op, reduction);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  at::Tensor z = logits_in.contiguous(), partner = partner_in.contiguous(), target = target_in.contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  const auto opt = z.options().dtype(opmath_of(z));
  at::Tensor row_loss = at::empty({B}, opt), lse = at::empty({B}, opt);
  if (B > 0) {
    at::Tensor l = lam_rows(lam, lam_scalar, B, z);
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "mixed_ce_cuda", [&] {
      using T = at::opmath_type<scalar_t>;
      mce_forward_kernel<scalar_t, T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
          z.const_data_ptr<scalar_t>(), partner.const_data_ptr<int64_t>(), l.const_data_ptr<T>(),
          target.const_data_ptr<int64_t>(), row_loss.data_ptr<T>(), lse.data_ptr<T>(), B, C);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (reduction == kNone) return {row_loss.to(z.scalar_type()), lse};
  at::Tensor total = row_loss.to(at::kDouble).sum();
  if (reduction == kMean) total = B > 0 ? total / static_cast<double>(B) : at::full({}, NAN, total.options());
  return {total.to(z.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor> mixed_logits_cross_entropy_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& logits_in, const at::Tensor& partner_in,
    const c10::optional<at::Tensor>& lam, double lam_scalar, const at::Tensor& target_in, const at::Tensor& lse_in,
    int64_t reduction, bool lam_grad) {
  const char* op = "mixed_logits_cross_entropy_backward";
  check_pair(op, "logits", logits_in, partner_in, lam);
  check_target(op, logits_in, target_in);
  check_reduction(op, reduction);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  at::Tensor z = logits_in.contiguous(), partner = partner_in.contiguous(), target = target_in.contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  const auto opmath = opmath_of(z);
  check_mixed_ce_saved(op, grad_loss, lse_in, B, reduction);
  at::Tensor grad_z = at::empty_like(z);
  const bool want = lam_grad && lam.has_value();
  at::Tensor per_row = at::zeros({B}, z.options().dtype(opmath));
  if (B > 0) {
    at::Tensor l = lam_rows(lam, lam_scalar, B, z);
    at::Tensor w = grad_loss.to(opmath).reshape({-1}).expand({B}).contiguous();
    if (reduction == kMean) w = w / static_cast<double>(B);
    at::Tensor lse = lse_in.to(opmath).contiguous();
    auto [offsets, rows] = inverse_csr(partner, B);
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "mixed_ce_backward_cuda", [&] {
      using T = at::opmath_type<scalar_t>;
      mce_backward_kernel<scalar_t, T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
          z.const_data_ptr<scalar_t>(), partner.const_data_ptr<int64_t>(), l.const_data_ptr<T>(),
          target.const_data_ptr<int64_t>(), lse.const_data_ptr<T>(), w.const_data_ptr<T>(),
          offsets.const_data_ptr<int64_t>(), rows.const_data_ptr<int64_t>(), grad_z.data_ptr<scalar_t>(),
          want ? per_row.data_ptr<T>() : nullptr, C);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_z, lam_gradient(per_row, lam, want, z)};
}

// ---- uniformity_loss ------------------------------------------------------------------------------

// n_a + n_b - 2 g; +inf where exactly one squared norm overflowed (not the NaN of inf - inf).
template <typename T>
__device__ __forceinline__ T squared_distance(T na, T nb, T g) {
  return (na == inf<T>()) != (nb == inf<T>()) ? inf<T>() : na + nb - T(2) * g;
}

// The kTile x kTile Gram tile of rows a0.. and columns b0.. (T accumulation over D in chunks of
// kTile through shared memory); thread (ty, tx) ends with g = X[a0 + ty] . X[b0 + tx].
// Blocks are 1-D (kTile * kTile threads, a warp per tile row): tx = lane, ty = warp.
template <typename S, typename T>
__device__ T gram_entry(const S* x, int64_t N, int64_t D, int64_t a0, int64_t b0, T (*sa)[kTile + 1],
                        T (*sb)[kTile + 1]) {
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  T g = 0;
  for (int64_t d0 = 0; d0 < D; d0 += kTile) {
    const int64_t ra = a0 + ty, rb = b0 + ty, d = d0 + tx;
    sa[ty][tx] = (ra < N && d < D) ? static_cast<T>(x[ra * D + d]) : T(0);
    sb[ty][tx] = (rb < N && d < D) ? static_cast<T>(x[rb * D + d]) : T(0);
    __syncthreads();
#pragma unroll 8
    for (int q = 0; q < kTile; ++q) g += sa[ty][q] * sb[tx][q];
    __syncthreads();
  }
  return g;
}

// __launch_bounds__: launched with 1024 threads, so at most 64 registers a thread may be used;
// without it ptxas may allocate more (fp64 backward sits at exactly 64 on sm_90) and the launch
// fails with "too many resources requested".
template <typename S, typename T>
__global__ void __launch_bounds__(kTile * kTile) uniformity_forward_kernel(const S* x, const T* norms, T t, T* tile_max, T* tile_sum, int64_t N,
                                          int64_t D, int64_t nb) {
  __shared__ T sa[kTile][kTile + 1], sb[kTile][kTile + 1];
  __shared__ T red[2 * (kTile * kTile / 32) + 2];
  const int64_t I = blockIdx.y, J = blockIdx.x;
  const int64_t slot = I * nb + J;
  if (J < I) {  // below the diagonal: an empty partial
    if (threadIdx.x == 0) {
      tile_max[slot] = -inf<T>();
      tile_sum[slot] = T(0);
    }
    return;
  }
  const T g = gram_entry<S, T>(x, N, D, I * kTile, J * kTile, sa, sb);
  const int64_t a = I * kTile + threadIdx.x / kTile, b = J * kTile + threadIdx.x % kTile;
  T m = -inf<T>(), s = 0;
  if (b > a && b < N) {
    const T raw = squared_distance(norms[a], norms[b], g);
    const T e = isnan(raw) ? raw : -t * (raw > T(0) ? raw : T(0));
    cuda_rows::online_add<ExpOp>(m, s, e);
  }
  // the block as one row of kTile * kTile threads for the all-reduce
  cuda_rows::row_allreduce<kTile * kTile>(m, s, cuda_rows::MaxSumOp<ExpOp>{}, red);
  if (threadIdx.x == 0) {
    tile_max[slot] = m;
    tile_sum[slot] = s;
  }
}

// Block (kTile * kTile threads, a warp per row) owns rows a0 .. a0 + kTile; out opmath [N, D] holds its rows only.
template <typename S, typename T>
__global__ void __launch_bounds__(kTile * kTile) uniformity_backward_kernel(const S* x, const T* norms, T t, const T* lse_ptr, const T* g_ptr, T* out,
                                           int64_t N, int64_t D) {
  __shared__ T sa[kTile][kTile + 1], sb[kTile][kTile + 1], sp[kTile][kTile + 1];
  __shared__ T sr[kTile];
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  const int64_t a0 = int64_t(blockIdx.x) * kTile;
  const T lse = *lse_ptr, gup = *g_ptr;
  for (int64_t d = tx; d < D; d += kTile)
    if (a0 + ty < N) out[(a0 + ty) * D + d] = T(0);
  T r = 0;  // thread (ty, tx) sums the p of row a0 + ty over columns tx, tx + kTile, ...
  for (int64_t b0 = 0; b0 < N; b0 += kTile) {
    const T g = gram_entry<S, T>(x, N, D, a0, b0, sa, sb);
    const int64_t a = a0 + ty, b = b0 + tx;
    T p = 0;
    if (a < N && b < N && a != b) {  // the diagonal is excluded by index
      const T raw = squared_distance(norms[a], norms[b], g);
      const T e = isnan(raw) ? raw : -t * (raw > T(0) ? raw : T(0));
      p = ExpOp{}(e - lse);
    }
    sp[ty][tx] = p;
    r += p;
    __syncthreads();
    // out[a, d] += sum_q p[a, b0 + q] x[b0 + q, d]: thread (ty, tx) owns columns d = tx, tx + kTile, ...
    if (a < N)
      for (int64_t d = tx; d < D; d += kTile) {
        T acc = 0;
        for (int q = 0; q < kTile && b0 + q < N; ++q) acc += sp[ty][q] * static_cast<T>(x[(b0 + q) * D + d]);
        out[a * D + d] += acc;
      }
    __syncthreads();
  }
  // r_a: sum over the tx lanes of row ty (a warp per row: kTile == 32)
  r = cuda_rows::warp_sum(r);
  if (tx == 0) sr[ty] = r;
  __syncthreads();
  const int64_t a = a0 + ty;
  if (a < N)
    for (int64_t d = tx; d < D; d += kTile)
      out[a * D + d] = T(-2) * t * gup * (sr[ty] * static_cast<T>(x[a * D + d]) - out[a * D + d]);
}

std::tuple<at::Tensor, at::Tensor> uniformity_loss_cuda(const at::Tensor& x_in, double t) {
  check_uniformity("uniformity_loss", x_in, t);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  const auto opmath = opmath_of(x);
  at::Tensor norms = x.to(opmath).pow(2).sum(1).contiguous();
  const int64_t nb = (N + kTile - 1) / kTile;
  at::Tensor tile_max = at::empty({nb * nb}, norms.options()), tile_sum = at::empty({nb * nb}, norms.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "uniformity_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    uniformity_forward_kernel<scalar_t, T><<<dim3(nb, nb), kTile * kTile, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), norms.const_data_ptr<T>(), static_cast<T>(t), tile_max.data_ptr<T>(),
        tile_sum.data_ptr<T>(), N, D, nb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // merge the tile partials in fp64, in tile order (deterministic device reductions)
  at::Tensor m64 = tile_max.to(at::kDouble), s64 = tile_sum.to(at::kDouble);
  at::Tensor M = m64.max();
  at::Tensor S = at::where(s64 > 0, s64 * at::exp(m64 - M), at::zeros_like(s64)).sum();
  at::Tensor lse = M + at::log(S);
  lse = at::where(at::isnan(m64).any().logical_or(at::isnan(s64).any()), at::full_like(lse, NAN), lse);
  const double log_pairs = std::log(0.5 * static_cast<double>(N) * static_cast<double>(N - 1));
  return {(lse - log_pairs).to(x.scalar_type()), lse.to(opmath)};
}

at::Tensor uniformity_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& x_in, double t,
                                         const at::Tensor& lse_in) {
  check_uniformity("uniformity_loss_backward", x_in, t);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  const auto opmath = opmath_of(x);
  at::Tensor norms = x.to(opmath).pow(2).sum(1).contiguous();
  at::Tensor out = at::empty({N, D}, norms.options());
  if (D == 0) return out.to(x.scalar_type());
  at::Tensor lse = lse_in.to(opmath).reshape({1}).contiguous(), g = grad.to(opmath).reshape({1}).contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>((N + kTile - 1) / kTile);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "uniformity_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    uniformity_backward_kernel<scalar_t, T><<<blocks, kTile * kTile, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), norms.const_data_ptr<T>(), static_cast<T>(t), lse.const_data_ptr<T>(),
        g.const_data_ptr<T>(), out.data_ptr<T>(), N, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CUDA, m) {
  m.impl("pair_mix", &pair_mix_cuda);
  m.impl("pair_mix_backward", &pair_mix_backward_cuda);
  m.impl("mixed_logits_cross_entropy", &mixed_logits_cross_entropy_cuda);
  m.impl("mixed_logits_cross_entropy_backward", &mixed_logits_cross_entropy_backward_cuda);
  m.impl("uniformity_loss", &uniformity_loss_cuda);
  m.impl("uniformity_loss_backward", &uniformity_loss_backward_cuda);
}

}  // namespace pyfastlab::mixup::cuda
