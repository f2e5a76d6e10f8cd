// CUDA kernels of the CKA ops (distill.md 3.2-3.6, 6.3), registered for the CUDA dispatch key.
//
// Pipeline per side: a centring kernel writes Xc in fp32 (fp64 for fp64 inputs) with exact column
// means (centre first, never a Gram centred afterwards); the Grams are one cuBLAS bmm; a diagonal
// kernel stores s_i and S for the U-centring; a strip kernel applies C(.) on the fly and writes
// per-strip partial sums of <U,V>, ||U||^2, ||V||^2, which a second kernel reduces per problem in
// a fixed order (deterministic: no atomics); a last elementwise kernel normalises the Grams in
// place when the backward needs them. Backward: M = coef (P - c Q) elementwise, then a bmm with Xc.
// Nothing here waits on the device: degenerate sides become NaN / zero coefficients on device.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "pyfastlab/cka.h"

namespace pyfastlab::cka::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kStripElems = int64_t(1) << 16;  // Gram entries per partial-sum block

// One thread per (problem, column): fp64 column sum of x - x_0 over the n rows, then the centred
// column (shifted by the first row: a constant column is exactly 0 at any magnitude).
template <typename scalar_t, typename T>
__global__ void centre_kernel(const scalar_t* __restrict__ x, T* __restrict__ xc, int64_t n, int64_t d) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  const int64_t base = static_cast<int64_t>(blockIdx.y) * n * d + j;
  const double first = static_cast<double>(x[base]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[base + i * d]) - first;
  const double mean = sum / static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i)
    xc[base + i * d] = static_cast<T>((static_cast<double>(x[base + i * d]) - first) - mean);
}

// Block-wide sum in a fixed tree (deterministic); every thread gets the total.
template <typename A>
__device__ A block_sum(A value, A* shared) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const A total = shared[0];
  __syncthreads();
  return total;
}

// s[b, i] = Kc_ii and s[b, n] = S = sum_i s_i (fp64), one block per problem.
template <typename T>
__global__ void diagonal_kernel(const T* __restrict__ k, double* __restrict__ s, int64_t n) {
  __shared__ double shared[kThreads];
  const int64_t b = blockIdx.x;
  double part = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double v = static_cast<double>(k[b * n * n + i * n + i]);
    s[b * (n + 1) + i] = v;
    part += v;
  }
  const double total = block_sum(part, shared);
  if (threadIdx.x == 0) s[b * (n + 1) + n] = total;
}

template <typename T>
struct ProjectionArgs {
  const T* k;
  const double* s;  // [B, n + 1]
  int64_t n;
  bool debiased;

  __device__ T operator()(int64_t b, int64_t e) const {
    const T kc = k[b * n * n + e];
    if (!debiased) return kc;
    const int64_t i = e / n, j = e % n;
    const double* sb = s + b * (n + 1);
    const T inv = T(1) / T(n - 2), total_term = T(sb[n] / static_cast<double>((n - 1) * (n - 2)));
    return projected<T>(kc, T(sb[i]), T(sb[j]), i == j, true, inv, total_term);
  }
};

// Partial sums over strip blockIdx.x of problem blockIdx.y: (<U,V>, ||U||^2, ||V||^2), or only
// ||U||^2 without a second side. partial [B, strips, 3].
template <typename T, bool kPair>
__global__ void strip_sums_kernel(ProjectionArgs<T> u, ProjectionArgs<T> v, T* __restrict__ partial) {
  __shared__ T shared[kThreads];
  const int64_t b = blockIdx.y, strips = gridDim.x;
  const int64_t total = u.n * u.n, begin = static_cast<int64_t>(blockIdx.x) * kStripElems;
  const int64_t end = begin + kStripElems < total ? begin + kStripElems : total;
  T uv = 0, uu = 0, vv = 0;
  for (int64_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
    const T a = u(b, e);
    uu += a * a;
    if constexpr (kPair) {
      const T c = v(b, e);
      uv += a * c, vv += c * c;
    }
  }
  T* out = partial + (b * strips + blockIdx.x) * 3;
  const T suu = block_sum(uu, shared);
  const T suv = kPair ? block_sum(uv, shared) : T(0);
  const T svv = kPair ? block_sum(vv, shared) : T(0);
  if (threadIdx.x == 0) out[0] = suv, out[1] = suu, out[2] = svv;
}

// Stage two, one thread per problem, strips in order: stats [B, 3] = (beta_x, beta_y, cka).
template <typename T>
__global__ void finish_kernel(const T* __restrict__ partial, T* __restrict__ stats, int64_t problems, int64_t strips) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= problems) return;
  T uv = 0, uu = 0, vv = 0;
  for (int64_t t = 0; t < strips; ++t) {
    const T* p = partial + (b * strips + t) * 3;
    uv += p[0], uu += p[1], vv += p[2];
  }
  const T bx = sqrt(uu), by = sqrt(vv);
  stats[b * 3] = bx;
  stats[b * 3 + 1] = by;
  stats[b * 3 + 2] = (bx == T(0) || by == T(0)) ? std::numeric_limits<T>::quiet_NaN() : uv / (bx * by);
}

// In place: K <- C(K) / beta (0 where beta == 0, so a degenerate side has no gradient).
template <typename T>
__global__ void normalise_kernel(ProjectionArgs<T> u, T* __restrict__ out, const T* __restrict__ beta,
                                 int64_t beta_stride, int64_t problems) {
  const int64_t per = u.n * u.n;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= problems * per) return;
  const int64_t b = idx / per;
  const T norm = beta[b * beta_stride];
  const T value = u(b, idx % per);  // read before the write: other threads read only s and their own entry
  out[idx] = norm == T(0) ? T(0) : value / norm;
}

// M = coef_b (P - c_b Q) per problem; coef_b == 0 (degenerate) gives an exact 0.
template <typename T>
__global__ void combine_kernel(const T* __restrict__ p, const T* __restrict__ q, const T* __restrict__ c,
                               const T* __restrict__ coef, T* __restrict__ m, int64_t per, int64_t problems) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= problems * per) return;
  const int64_t b = idx / per;
  const T a = coef[b];
  m[idx] = a == T(0) ? T(0) : a * (p[idx] - c[b] * q[idx]);
}

unsigned blocks_for(int64_t count) { return static_cast<unsigned>((count + kThreads - 1) / kThreads); }

// Xc [B, n, d] in the opmath type of x [B, n, d].
at::Tensor centre(const at::Tensor& x_in) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor xc = at::empty(x.sizes(), x.options().dtype(at::toOpMathType(x.scalar_type())));
  if (x.numel() == 0) return xc;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cka_centre", [&] {
    using T = at::opmath_type<scalar_t>;
    const dim3 grid(blocks_for(x.size(2)), static_cast<unsigned>(x.size(0)));
    centre_kernel<scalar_t, T><<<grid, kThreads, 0, stream>>>(x.const_data_ptr<scalar_t>(), xc.data_ptr<T>(),
                                                              x.size(1), x.size(2));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return xc;
}

// s_i and S of every problem's Gram k [B, n, n].
at::Tensor diagonal_terms(const at::Tensor& k) {
  const int64_t B = k.size(0), n = k.size(1);
  at::Tensor s = at::empty({B, n + 1}, k.options().dtype(at::kDouble));
  if (B == 0) return s;
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "cka_diagonal", [&] {
    diagonal_kernel<scalar_t><<<static_cast<unsigned>(B), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        k.const_data_ptr<scalar_t>(), s.data_ptr<double>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return s;
}

// stats [B, 3] of Grams kx (and ky when given; else (0, beta, 0) per problem).
at::Tensor projected_stats(const at::Tensor& kx, const at::Tensor& sx, const at::Tensor* ky, const at::Tensor* sy,
                           bool debiased) {
  const int64_t B = kx.size(0), n = kx.size(1);
  const int64_t strips = (n * n + kStripElems - 1) / kStripElems;
  at::Tensor partial = at::empty({B, strips, 3}, kx.options());
  at::Tensor stats = at::empty({B, 3}, kx.options());
  if (B == 0) return stats;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(kx.scalar_type(), "cka_stats", [&] {
    using T = scalar_t;
    const ProjectionArgs<T> u{kx.const_data_ptr<T>(), sx.const_data_ptr<double>(), n, debiased};
    const dim3 grid(static_cast<unsigned>(strips), static_cast<unsigned>(B));
    if (ky != nullptr) {
      const ProjectionArgs<T> v{ky->const_data_ptr<T>(), sy->const_data_ptr<double>(), n, debiased};
      strip_sums_kernel<T, true><<<grid, kThreads, 0, stream>>>(u, v, partial.data_ptr<T>());
    } else {
      strip_sums_kernel<T, false><<<grid, kThreads, 0, stream>>>(u, u, partial.data_ptr<T>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finish_kernel<T><<<blocks_for(B), kThreads, 0, stream>>>(partial.const_data_ptr<T>(), stats.data_ptr<T>(), B,
                                                             strips);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return stats;
}

// k [B, n, n] <- C(k) / beta, beta = column `column` of stats.
void normalise(at::Tensor& k, const at::Tensor& s, const at::Tensor& stats, int64_t column, bool debiased) {
  const int64_t B = k.size(0), n = k.size(1);
  if (B == 0) return;
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "cka_normalise", [&] {
    using T = scalar_t;
    const ProjectionArgs<T> u{k.const_data_ptr<T>(), s.const_data_ptr<double>(), n, debiased};
    normalise_kernel<T><<<blocks_for(B * n * n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        u, k.data_ptr<T>(), stats.const_data_ptr<T>() + column, stats.size(1), B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor combine(const at::Tensor& p, const at::Tensor& q, const at::Tensor& c, const at::Tensor& coef) {
  at::Tensor m = at::empty(p.sizes(), p.options());
  const int64_t B = p.size(0), per = p.size(1) * p.size(2);
  if (B == 0) return m;
  const at::Tensor cc = c.contiguous(), kk = coef.contiguous();
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "cka_combine", [&] {
    combine_kernel<scalar_t><<<blocks_for(B * per), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        p.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), cc.const_data_ptr<scalar_t>(),
        kk.const_data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), per, B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return m;
}

at::Tensor gram(const at::Tensor& xc) { return at::bmm(xc, xc.transpose(1, 2)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cka_forward_cuda(const at::Tensor& x,
                                                                                   const at::Tensor& y,
                                                                                   bool debiased, bool save) {
  check_pair(x, y, debiased, "linear_cka_forward");
  const c10::cuda::CUDAGuard guard(x.device());
  if (!use_gram_form(x.size(1), x.size(2), y.size(2), debiased)) {
    auto [cka, stats] = feature_forward(x, y, /*fp64_sums=*/false);
    return {cka, stats, at::empty({0}, stats.options()), at::empty({0}, stats.options())};
  }
  at::Tensor kx = gram(centre(x)), ky = gram(centre(y));
  const at::Tensor sx = diagonal_terms(kx), sy = diagonal_terms(ky);
  const at::Tensor stats = projected_stats(kx, sx, &ky, &sy, debiased);
  if (save) {
    normalise(kx, sx, stats, 0, debiased);
    normalise(ky, sy, stats, 1, debiased);
  } else {
    kx = at::empty({0}, stats.options());  // two tensors: outputs must not alias
    ky = at::empty({0}, stats.options());
  }
  return {stats.select(1, 2).to(x.scalar_type(), false, /*copy=*/true), stats, kx, ky};
}

std::tuple<at::Tensor, at::Tensor> linear_cka_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                            const at::Tensor& y, const at::Tensor& stats,
                                                            const at::Tensor& u_hat, const at::Tensor& v_hat,
                                                            bool need_x, bool need_y) {
  check_pair(x, y, false, "linear_cka_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.size(0) == 0)  // nothing to launch; zero-size gradients of the asked-for sides
    return {need_x ? at::zeros_like(x) : at::empty({0}, x.options()),
            need_y ? at::zeros_like(y) : at::empty({0}, y.options())};
  if (u_hat.numel() == 0) return feature_backward(grad, x, y, stats, need_x, need_y);
  const at::Tensor g = grad.to(stats.scalar_type());
  const at::Tensor bx = stats.select(1, 0), by = stats.select(1, 1), cka = stats.select(1, 2);
  const at::Tensor degenerate = (bx == 0).logical_or(by == 0);
  const at::Tensor zero = at::zeros_like(g);
  at::Tensor gx = at::empty({0}, x.options()), gy = at::empty({0}, y.options());
  if (need_x) gx = at::bmm(combine(v_hat, u_hat, cka, at::where(degenerate, zero, 2 * g / bx)), centre(x)).to(x.scalar_type());
  if (need_y) gy = at::bmm(combine(u_hat, v_hat, cka, at::where(degenerate, zero, 2 * g / by)), centre(y)).to(y.scalar_type());
  return {gx, gy};
}

// Normalised projected Grams [L, n, n] and betas [L] of 2-D layers (each Gram one cuBLAS GEMM).
std::tuple<at::Tensor, at::Tensor> normalised_grams(at::TensorList layers, bool debiased) {
  const int64_t L = static_cast<int64_t>(layers.size()), n = layers[0].size(0);
  at::Tensor stack = at::empty({L, n, n}, layers[0].options().dtype(at::toOpMathType(layers[0].scalar_type())));
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor xc = centre(layers[l].unsqueeze(0)).squeeze(0);
    at::Tensor slot = stack.select(0, l);
    at::mm_out(slot, xc, xc.t());
  }
  const at::Tensor s = diagonal_terms(stack);
  const at::Tensor stats = projected_stats(stack, s, nullptr, nullptr, debiased);
  normalise(stack, s, stats, 0, debiased);  // a single side's beta lands in column 0
  return {stack, stats.select(1, 0).contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cka_matrix_forward_cuda(at::TensorList xs,
                                                                                              at::TensorList ys,
                                                                                              bool debiased) {
  check_layers(xs, ys, debiased, "cka_matrix_forward");
  const c10::cuda::CUDAGuard guard(xs[0].device());
  auto [gx, beta_x] = normalised_grams(xs, debiased);
  auto [gy, beta_y] = normalised_grams(ys, debiased);
  return {pair_cka(gx, gy, beta_x, beta_y, xs[0].scalar_type()), gx, gy, beta_x, beta_y};
}

std::vector<at::Tensor> layer_gradients(at::TensorList layers, const at::Tensor& w, const at::Tensor& c,
                                        const at::Tensor& own, const at::Tensor& beta) {
  const at::Tensor m = combine(w, own, c, at::where(beta == 0, at::zeros_like(beta), 2 / beta));
  std::vector<at::Tensor> grads;
  for (int64_t l = 0; l < static_cast<int64_t>(layers.size()); ++l) {
    const at::Tensor xc = centre(layers[l].unsqueeze(0)).squeeze(0);
    grads.push_back(at::mm(m.select(0, l), xc).to(layers[l].scalar_type()));
  }
  return grads;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> cka_matrix_backward_cuda(
    const at::Tensor& grad, at::TensorList xs, at::TensorList ys, const at::Tensor& cka, const at::Tensor& gx,
    const at::Tensor& gy, const at::Tensor& beta_x, const at::Tensor& beta_y, bool need_x, bool need_y) {
  check_layers(xs, ys, false, "cka_matrix_backward");
  const c10::cuda::CUDAGuard guard(xs[0].device());
  return matrix_backward(grad, xs, ys, cka, gx, gy, beta_x, beta_y, need_x, need_y, &layer_gradients);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CUDA, m) {
  m.impl("linear_cka_forward", &linear_cka_forward_cuda);
  m.impl("linear_cka_backward", &linear_cka_backward_cuda);
  m.impl("cka_matrix_forward", &cka_matrix_forward_cuda);
  m.impl("cka_matrix_backward", &cka_matrix_backward_cuda);
}

}  // namespace pyfastlab::cka::cuda
