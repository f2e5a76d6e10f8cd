// CUDA kernels of the VAE ops expm, symmetric_expm, ipe_transform and composite_symmetry (spec
// vae.md 3.1-3.4 and 6), registered for the CUDA dispatch key. The CPU kernels (csrc/cpu/vae_*.cpp)
// are the ground truth for semantics; the exponential program itself is shared with them
// (pyfastlab/expm_engine.h), run here by one thread block per matrix.
//
// Custom kernels: expm forward and adjoint (per-matrix norm, degree and scaling on the device, no
// host grouping, no host reads: CUDA-graph capturable), composite_symmetry's +-exp + apply and its
// backward (one adjoint pass), Q diag(e^lam) Q^T, the Daleckii-Krein backward, the ipe factor chains
// with logdet and their prefix/suffix adjoint. ATen calls: the batched symmetric eigendecomposition
// (at::linalg_eigh, cuSOLVER; it may synchronise to check its info codes), the codebook GEMMs of
// composite_symmetry and the z GEMMs of ipe_transform (cuBLAS).
//
// Work matrices live in a per-matrix global scratch (L1/L2 resident at these sizes); each product
// stages op(a) and op(b) through shared memory, so operands may be transposed for free. Plain fp32
// FMA (no TF32: it would miss the 1e-5 accuracy target). Written to compile for sm_90; it has not
// been run on a GPU here.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

#include "pyfastlab/expm_engine.h"
#include "pyfastlab/vae_ops.h"

namespace pyfastlab::vae::cuda {
namespace {

constexpr int64_t kScratchBytes = int64_t(256) << 20;  // per launch chunk: bounds the scratch memory

int threads_for(int64_t n) { return n <= 16 ? 64 : (n <= 32 ? 128 : 256); }

template <typename T>
__device__ inline T nan_value() {
  return std::numeric_limits<T>::quiet_NaN();
}

__device__ inline float ldexp_t(float x, int e) { return ldexpf(x, e); }
__device__ inline double ldexp_t(double x, int e) { return ldexp(x, e); }

// One thread block cooperating on n x n matrices in global scratch (row-major, ld = n). Every
// operation ends with __syncthreads(), so the engine can sequence them like the CPU's.
template <typename T>
struct BlockMatrices {
  T* base;
  int n;
  T* sa;  // shared: op(a), op(b) of the current product
  T* sb;

  __device__ T* slot(int i) { return base + static_cast<int64_t>(i) * n * n; }

  __device__ void mm(T* c, const T* a, bool ta, const T* b, bool tb, bool acc) {
    const int nn = n * n;
    for (int e = threadIdx.x; e < nn; e += blockDim.x) {
      const int i = e / n, j = e % n;
      sa[e] = ta ? a[j * n + i] : a[e];
      sb[e] = tb ? b[j * n + i] : b[e];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nn; e += blockDim.x) {
      const int i = e / n, j = e % n;
      T v = T(0);
      for (int k = 0; k < n; ++k) v += sa[i * n + k] * sb[k * n + j];
      c[e] = acc ? c[e] + v : v;
    }
    __syncthreads();
  }
  __device__ void axpy(T* y, T alpha, const T* x) {
    for (int e = threadIdx.x; e < n * n; e += blockDim.x) y[e] += alpha * x[e];
    __syncthreads();
  }
  __device__ void add_identity(T* y, T alpha) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i * n + i] += alpha;
    __syncthreads();
  }
  __device__ void fill_identity(T* y, T alpha) {
    for (int e = threadIdx.x; e < n * n; e += blockDim.x) y[e] = (e / n == e % n) ? alpha : T(0);
    __syncthreads();
  }
  __device__ void zero(T* y) {
    for (int e = threadIdx.x; e < n * n; e += blockDim.x) y[e] = T(0);
    __syncthreads();
  }
  __device__ void ldexp_copy(T* y, const T* x, int ex) {
    for (int e = threadIdx.x; e < n * n; e += blockDim.x) y[e] = ldexp_t(x[e], ex);
    __syncthreads();
  }
  __device__ void load(T* y, const T* src, T sign) {
    for (int e = threadIdx.x; e < n * n; e += blockDim.x) y[e] = sign * src[e];
    __syncthreads();
  }
  __device__ void store(T* dst, const T* y) {
    for (int e = threadIdx.x; e < n * n; e += blockDim.x) dst[e] = y[e];
    __syncthreads();
  }
  __device__ void fill(T* dst, int64_t count, T value) {
    for (int64_t e = threadIdx.x; e < count; e += blockDim.x) dst[e] = value;
    __syncthreads();
  }
  // ||y||_1 (max column abs-sum), NaN/inf propagated; the same value in every thread.
  __device__ T norm1(const T* y) {
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      T s = T(0);
      for (int i = 0; i < n; ++i) s += fabs(y[i * n + j]);
      sa[j] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      T best = T(0);
      for (int j = 0; j < n; ++j) {
        const T s = sa[j];
        best = (s != s || best != best) ? nan_value<T>() : (s > best ? s : best);
      }
      sb[0] = best;
    }
    __syncthreads();
    const T best = sb[0];
    __syncthreads();
    return best;
  }
  // out[j] = sum_i v[i] y[i, j] (or y^T); out in global memory
  __device__ void vecmat(T* out, const T* v, const T* y, bool ty) {
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      T acc = T(0);
      for (int i = 0; i < n; ++i) acc += v[i] * (ty ? y[j * n + i] : y[i * n + j]);
      out[j] = acc;
    }
    __syncthreads();
  }
};

template <typename T>
__device__ BlockMatrices<T> block_matrices(T* scratch, int64_t index, int slots, int n) {
  extern __shared__ unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  return BlockMatrices<T>{scratch + index * slots * n * n, n, smem, smem + n * n};
}

template <typename T>
__device__ ExpmPlan load_and_plan(BlockMatrices<T>& w, const T* a, T sign) {
  w.load(w.slot(kX), a, sign);
  const ExpmPlan p = expm_plan<T>(w.norm1(w.slot(kX)));
  if (p.finite) w.ldexp_copy(w.slot(kX), w.slot(kX), -p.s);
  return p;
}

// grid: one block per matrix of the chunk [first, first + gridDim.x)
template <typename T>
__global__ void expm_forward_kernel(const T* a, T* out, T* scratch, int n, int64_t first) {
  const int64_t b = first + blockIdx.x;
  BlockMatrices<T> w = block_matrices(scratch, blockIdx.x, kSlots, n);
  const ExpmPlan p = load_and_plan(w, a + b * n * n, T(1));
  if (!p.finite) {
    w.fill(out + b * n * n, int64_t(n) * n, nan_value<T>());
    return;
  }
  w.store(out + b * n * n, w.slot(expm_forward_program<T>(w, p)));
}

template <typename T>
__global__ void expm_backward_kernel(const T* g, const T* a, T* out, T* scratch, int n, int64_t first) {
  const int64_t b = first + blockIdx.x;
  BlockMatrices<T> w = block_matrices(scratch, blockIdx.x, kSlots, n);
  const ExpmPlan p = load_and_plan(w, a + b * n * n, T(1));
  if (!p.finite) {
    w.fill(out + b * n * n, int64_t(n) * n, nan_value<T>());
    return;
  }
  expm_forward_program<T>(w, p);
  w.load(w.slot(kG), g + b * n * n, T(1));
  expm_adjoint_program<T>(w, p);
  w.store(out + b * n * n, w.slot(kXbar));
}

template <typename T>
__global__ void composite_forward_kernel(const T* A, const T* z1, const T* z2, T* y1, T* y2, T* scratch, int n,
                                         int64_t first) {
  const int64_t p = first + blockIdx.x;
  BlockMatrices<T> w = block_matrices(scratch, blockIdx.x, kSlots, n);
  for (int sign = 1; sign >= -1; sign -= 2) {  // ||-A||_1 = ||A||_1: the same m and s
    const ExpmPlan plan = load_and_plan(w, A + p * n * n, T(sign));
    T* y = (sign > 0 ? y1 : y2) + p * n;
    if (!plan.finite) {
      w.fill(y, n, nan_value<T>());
      continue;
    }
    w.vecmat(y, (sign > 0 ? z1 : z2) + p * n, w.slot(expm_forward_program<T>(w, plan)), false);
  }
}

// See csrc/cpu/vae_expm.cpp: direction z1^T y1_bar - y2^T z2_bar (= M_bar - N^T N_bar N^T).
template <typename T>
__global__ void composite_backward_kernel(const T* A, const T* z1, const T* z2, const T* g1, const T* g2, T* gz1,
                                          T* gz2, T* gA, T* y2buf, T* scratch, int n, int64_t first) {
  const int64_t p = first + blockIdx.x;
  BlockMatrices<T> w = block_matrices(scratch, blockIdx.x, kSlots, n);
  const ExpmPlan neg = load_and_plan(w, A + p * n * n, T(-1));
  if (!neg.finite) {
    w.fill(gz1 + p * n, n, nan_value<T>());
    w.fill(gz2 + p * n, n, nan_value<T>());
    if (gA != nullptr) w.fill(gA + p * n * n, int64_t(n) * n, nan_value<T>());
    return;
  }
  const T* N = w.slot(expm_forward_program<T>(w, neg));
  T* y2 = y2buf + p * n;
  w.vecmat(y2, z2 + p * n, N, false);
  w.vecmat(gz2 + p * n, g2 + p * n, N, true);
  const ExpmPlan pos = load_and_plan(w, A + p * n * n, T(1));
  const T* M = w.slot(expm_forward_program<T>(w, pos));
  w.vecmat(gz1 + p * n, g1 + p * n, M, true);
  if (gA == nullptr) return;
  T* G = w.slot(kG);
  for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
    const int i = e / n, j = e % n;
    G[e] = z1[p * n + i] * g1[p * n + j] - y2[i] * gz2[p * n + j];
  }
  __syncthreads();
  expm_adjoint_program<T>(w, pos);
  w.store(gA + p * n * n, w.slot(kXbar));
}

// E = Q diag(e^lam) Q^T: one thread per entry.
template <typename T>
__global__ void reconstruct_kernel(const T* Q, const T* lam, T* E, int n, int64_t total) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int64_t b = e / (int64_t(n) * n);
  const int i = (e / n) % n, j = e % n;
  const T* q = Q + b * n * n;
  const T* l = lam + b * n;
  T acc = T(0);
  for (int k = 0; k < n; ++k) acc += q[i * n + k] * exp(l[k]) * q[j * n + k];
  E[e] = acc;
}

// w_bar = Q (F o (Q^T sym(G) Q)) Q^T + diag[b] I, one block per matrix; 5 scratch slots.
template <typename T>
__global__ void dk_backward_kernel(const T* g, const T* Q, const T* lam, const T* diag, T* out, T* scratch, int n) {
  const int64_t b = blockIdx.x;
  BlockMatrices<T> w = block_matrices(scratch, b, 5, n);
  T *Gs = w.slot(0), *Qs = w.slot(1), *tmp = w.slot(2), *H = w.slot(3), *R = w.slot(4);
  const T* gb = g + b * n * n;
  const T* l = lam + b * n;
  for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
    const int i = e / n, j = e % n;
    Gs[e] = (gb[i * n + j] + gb[j * n + i]) / T(2);
  }
  __syncthreads();
  w.load(Qs, Q + b * n * n, T(1));
  w.mm(tmp, Gs, false, Qs, false, false);
  w.mm(H, Qs, true, tmp, false, false);
  for (int e = threadIdx.x; e < n * n; e += blockDim.x) H[e] *= dk_weight<T>(l[e / n], l[e % n]);
  __syncthreads();
  w.mm(tmp, Qs, false, H, false, false);
  w.mm(R, tmp, false, Qs, true, false);
  if (diag != nullptr) w.add_identity(R, diag[b]);
  w.store(out + b * n * n, R);
}

// E_u = X_u1 ... X_uK and logdet[u] = sum_k trace(w_uk); one block per unit, 3 slots.
template <typename T>
__global__ void chain_kernel(const T* X, const T* wts, T* E, T* logdet, T* scratch, int K, int n) {
  const int64_t u = blockIdx.x;
  BlockMatrices<T> w = block_matrices(scratch, u, 3, n);
  int cur = 0;
  w.fill_identity(w.slot(cur), T(1));
  for (int k = 0; k < K; ++k) {
    w.mm(w.slot(1 - cur), w.slot(cur), false, X + (u * K + k) * n * n, false, false);
    cur = 1 - cur;
  }
  w.store(E + u * n * n, w.slot(cur));
  if (threadIdx.x == 0) {
    T acc = T(0);
    for (int k = 0; k < K; ++k)
      for (int i = 0; i < n; ++i) acc += wts[((u * K + k) * n + i) * n + i];
    logdet[u] = acc;
  }
}

// X_bar_uk = L_uk^T E_bar_u R_uk^T; one block per unit; slots 0 L, 1 L next, 2 tmp, 3 + k: R_k.
template <typename T>
__global__ void chain_adjoint_kernel(const T* X, const T* Ebar, T* Xbar, T* scratch, int K, int n) {
  const int64_t u = blockIdx.x;
  BlockMatrices<T> w = block_matrices(scratch, u, 3 + K, n);
  const T* xu = X + u * K * n * n;
  w.fill_identity(w.slot(3 + K - 1), T(1));
  for (int k = K - 2; k >= 0; --k) w.mm(w.slot(3 + k), xu + (k + 1) * n * n, false, w.slot(3 + k + 1), false, false);
  int L = 0;
  w.fill_identity(w.slot(L), T(1));
  for (int k = 0; k < K; ++k) {
    w.mm(w.slot(2), Ebar + u * n * n, false, w.slot(3 + k), true, false);
    w.mm(Xbar + (u * K + k) * n * n, w.slot(L), true, w.slot(2), false, false);
    if (k + 1 < K) {
      w.mm(w.slot(1 - L), w.slot(L), false, xu + k * n * n, false, false);
      L = 1 - L;
    }
  }
}

int64_t batch_of(const at::Tensor& a) {
  const int64_t n = a.size(-1);
  return n == 0 ? 0 : a.numel() / (n * n);
}

template <typename T, typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  // two n x n operands in shared memory: n <= 168 (fp32) / 119 (fp64) on sm_90's 227 KB
  TORCH_CHECK_VALUE(bytes <= 227 * 1024, "the CUDA vae kernels stage two n x n matrices in shared memory: n = ",
                    static_cast<int64_t>(std::sqrt(bytes / 2.0 / sizeof(T))), " is too large for ", sizeof(T),
                    "-byte floats (use backend='cpu' on CPU tensors)");
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Launches `launch(first, count, scratch)` over chunks of the batch whose scratch fits kScratchBytes.
template <typename F>
void chunked(int64_t batch, int64_t slots, int64_t n, const at::TensorOptions& o, F&& launch) {
  const int64_t per = std::max<int64_t>(1, slots * n * n * static_cast<int64_t>(c10::elementSize(o.dtype().toScalarType())));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(batch, std::min<int64_t>(kScratchBytes / per, 65535)));
  at::Tensor scratch = at::empty({chunk * slots * n * n}, o);
  for (int64_t first = 0; first < batch; first += chunk) launch(first, std::min(chunk, batch - first), scratch);
}

at::Tensor expm_forward_cuda(const at::Tensor& a_in) {
  check_square_batch("expm_forward", "a", a_in);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  at::Tensor out = at::empty_like(a);
  const int64_t n = a.size(-1), batch = batch_of(a);
  if (batch == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "expm_forward_cuda", [&] {
    const size_t smem = 2 * n * n * sizeof(scalar_t);
    set_smem<scalar_t>(expm_forward_kernel<scalar_t>, smem);
    chunked(batch, kSlots, n, a.options(), [&](int64_t first, int64_t count, at::Tensor& scratch) {
      expm_forward_kernel<scalar_t><<<count, threads_for(n), smem, stream>>>(
          a.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), scratch.data_ptr<scalar_t>(), static_cast<int>(n),
          first);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor expm_backward_cuda(const at::Tensor& grad_in, const at::Tensor& a_in) {
  check_square_batch("expm_backward", "a", a_in);
  check_grad_like("expm_backward", "grad", grad_in, a_in);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous(), g = grad_in.contiguous();
  at::Tensor out = at::empty_like(a);
  const int64_t n = a.size(-1), batch = batch_of(a);
  if (batch == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "expm_backward_cuda", [&] {
    const size_t smem = 2 * n * n * sizeof(scalar_t);
    set_smem<scalar_t>(expm_backward_kernel<scalar_t>, smem);
    chunked(batch, kSlots, n, a.options(), [&](int64_t first, int64_t count, at::Tensor& scratch) {
      expm_backward_kernel<scalar_t><<<count, threads_for(n), smem, stream>>>(
          g.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          scratch.data_ptr<scalar_t>(), static_cast<int>(n), first);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

void reconstruct(const at::Tensor& Q, const at::Tensor& lam, at::Tensor& E) {
  const int64_t n = Q.size(-1), total = Q.numel();
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES(Q.scalar_type(), "symmetric_expm_reconstruct_cuda", [&] {
    reconstruct_kernel<scalar_t><<<static_cast<unsigned>((total + 255) / 256), 256, 0,
                                   c10::cuda::getCurrentCUDAStream()>>>(
        Q.const_data_ptr<scalar_t>(), lam.const_data_ptr<scalar_t>(), E.data_ptr<scalar_t>(), static_cast<int>(n),
        total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> symmetric_forward(const at::Tensor& w) {
  at::Tensor lam_empty = at::empty(w.sizes().slice(0, w.dim() - 1), w.options());
  if (batch_of(w) == 0) return {at::empty_like(w), at::empty_like(w), lam_empty};
  auto [Q, lam] = guarded_eigh(w);
  at::Tensor E = at::empty_like(w);
  reconstruct(Q, lam, E);
  return {E, Q, lam};
}

at::Tensor dk_backward(const at::Tensor& grad, const at::Tensor& Q, const at::Tensor& lam, const at::Tensor& diag) {
  at::Tensor out = at::empty_like(Q);
  const int64_t n = Q.size(-1), batch = batch_of(Q);
  if (batch == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(Q.scalar_type(), "symmetric_expm_backward_cuda", [&] {
    const size_t smem = 2 * n * n * sizeof(scalar_t);
    set_smem<scalar_t>(dk_backward_kernel<scalar_t>, smem);
    at::Tensor scratch = at::empty({batch * 5 * n * n}, Q.options());
    dk_backward_kernel<scalar_t><<<static_cast<unsigned>(batch), threads_for(n), smem,
                                   c10::cuda::getCurrentCUDAStream()>>>(
        grad.const_data_ptr<scalar_t>(), Q.const_data_ptr<scalar_t>(), lam.const_data_ptr<scalar_t>(),
        diag.defined() ? diag.const_data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
        scratch.data_ptr<scalar_t>(), static_cast<int>(n));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> symmetric_expm_forward_cuda(const at::Tensor& w) {
  check_square_batch("symmetric_expm_forward", "w", w);
  const c10::cuda::CUDAGuard guard(w.device());
  return symmetric_forward(w.contiguous());
}

at::Tensor symmetric_expm_backward_cuda(const at::Tensor& grad, const at::Tensor& Q, const at::Tensor& lam) {
  check_square_batch("symmetric_expm_backward", "q", Q);
  check_grad_like("symmetric_expm_backward", "grad", grad, Q);
  const c10::cuda::CUDAGuard guard(Q.device());
  return dk_backward(grad.contiguous(), Q.contiguous(), lam.contiguous(), at::Tensor());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ipe_transform_forward_cuda(
    const at::Tensor& z_in, const at::Tensor& w_in) {
  check_ipe("ipe_transform_forward", z_in, w_in);
  const c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor z = z_in.contiguous(), w = w_in.contiguous();
  const int64_t U = w.size(0), K = w.size(1), n = w.size(2), B = z.size(0);
  auto [X, Q, lam] = symmetric_forward(w);
  at::Tensor E = at::empty({U, n, n}, w.options());
  at::Tensor logdet = at::zeros({U}, w.options());
  if (U > 0 && n > 0) {
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "ipe_chain_cuda", [&] {
      const size_t smem = 2 * n * n * sizeof(scalar_t);
      set_smem<scalar_t>(chain_kernel<scalar_t>, smem);
      at::Tensor scratch = at::empty({U * 3 * n * n}, w.options());
      chain_kernel<scalar_t><<<static_cast<unsigned>(U), threads_for(n), smem, c10::cuda::getCurrentCUDAStream()>>>(
          X.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), E.data_ptr<scalar_t>(),
          logdet.data_ptr<scalar_t>(), scratch.data_ptr<scalar_t>(), static_cast<int>(K), static_cast<int>(n));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor z_hat = U == 0 ? at::empty({0, B, n}, z.options()) : at::matmul(z, E);
  return {z_hat, logdet, X, E, Q, lam};
}

std::tuple<at::Tensor, at::Tensor> ipe_transform_backward_cuda(const at::Tensor& gzh_in, const at::Tensor& gld_in,
                                                               const at::Tensor& z_in, const at::Tensor& X_in,
                                                               const at::Tensor& E, const at::Tensor& Q,
                                                               const at::Tensor& lam, bool need_z, bool need_w) {
  check_ipe_backward("ipe_transform_backward", gzh_in, z_in, X_in);
  const c10::cuda::CUDAGuard guard(X_in.device());
  const int64_t U = X_in.size(0), K = X_in.size(1), n = X_in.size(2), B = z_in.size(0);
  const at::Tensor z = z_in.contiguous(), gzh = gzh_in.contiguous(), X = X_in.contiguous();
  at::Tensor gz = at::empty({0}, z.options()), gw = at::empty({0}, z.options());
  if (need_z)
    gz = U == 0 ? at::zeros_like(z)
                : at::mm(gzh.permute({1, 0, 2}).reshape({B, U * n}), E.transpose(1, 2).reshape({U * n, n}));
  if (need_w) {
    const at::Tensor Ebar = at::matmul(z.t(), gzh).contiguous();
    at::Tensor Xbar = at::empty_like(X);
    if (U > 0 && K > 0 && n > 0) {
      AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "ipe_chain_adjoint_cuda", [&] {
        const size_t smem = 2 * n * n * sizeof(scalar_t);
        set_smem<scalar_t>(chain_adjoint_kernel<scalar_t>, smem);
        at::Tensor scratch = at::empty({U * (3 + K) * n * n}, X.options());
        chain_adjoint_kernel<scalar_t><<<static_cast<unsigned>(U), threads_for(n), smem,
                                         c10::cuda::getCurrentCUDAStream()>>>(
            X.const_data_ptr<scalar_t>(), Ebar.const_data_ptr<scalar_t>(), Xbar.data_ptr<scalar_t>(),
            scratch.data_ptr<scalar_t>(), static_cast<int>(K), static_cast<int>(n));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    const at::Tensor diag = gld_in.reshape({U, 1}).expand({U, K}).contiguous();
    gw = dk_backward(Xbar, Q.contiguous(), lam.contiguous(), diag).reshape({U, K, n, n});
  }
  return {gz, gw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_symmetry_forward_cuda(const at::Tensor& codebook,
                                                                               const at::Tensor& weights,
                                                                               const at::Tensor& z1_in,
                                                                               const at::Tensor& z2_in) {
  check_composite("composite_symmetry_forward", codebook, weights, z1_in, z2_in);
  const c10::cuda::CUDAGuard guard(codebook.device());
  const at::Tensor A = combine_codebook(codebook, weights);
  const at::Tensor z1 = z1_in.contiguous(), z2 = z2_in.contiguous();
  at::Tensor y1 = at::empty_like(z1), y2 = at::empty_like(z2);
  const int64_t P = A.size(0), n = A.size(1);
  if (P == 0 || n == 0) return {y1, y2, A};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "composite_symmetry_forward_cuda", [&] {
    const size_t smem = 2 * n * n * sizeof(scalar_t);
    set_smem<scalar_t>(composite_forward_kernel<scalar_t>, smem);
    chunked(P, kSlots, n, A.options(), [&](int64_t first, int64_t count, at::Tensor& scratch) {
      composite_forward_kernel<scalar_t><<<count, threads_for(n), smem, stream>>>(
          A.const_data_ptr<scalar_t>(), z1.const_data_ptr<scalar_t>(), z2.const_data_ptr<scalar_t>(),
          y1.data_ptr<scalar_t>(), y2.data_ptr<scalar_t>(), scratch.data_ptr<scalar_t>(), static_cast<int>(n), first);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {y1, y2, A};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_symmetry_backward_cuda(
    const at::Tensor& gy1_in, const at::Tensor& gy2_in, const at::Tensor& codebook, const at::Tensor& weights,
    const at::Tensor& z1_in, const at::Tensor& z2_in, const at::Tensor& A_in, bool need_codebook, bool need_weights,
    bool need_z1, bool need_z2) {
  check_composite("composite_symmetry_backward", codebook, weights, z1_in, z2_in);
  const c10::cuda::CUDAGuard guard(codebook.device());
  const at::Tensor z1 = z1_in.contiguous(), z2 = z2_in.contiguous(), A = A_in.contiguous();
  const at::Tensor gy1 = gy1_in.contiguous(), gy2 = gy2_in.contiguous();
  const int64_t P = A.size(0), n = A.size(1), K = codebook.size(0);
  const bool need_a = need_codebook || need_weights;
  at::Tensor gz1 = at::zeros_like(z1), gz2 = at::zeros_like(z2);
  at::Tensor gA = need_a ? at::zeros_like(A) : at::empty({0}, A.options());
  if (P > 0 && n > 0) {
    at::Tensor y2 = at::empty_like(z2);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "composite_symmetry_backward_cuda", [&] {
      const size_t smem = 2 * n * n * sizeof(scalar_t);
      set_smem<scalar_t>(composite_backward_kernel<scalar_t>, smem);
      chunked(P, kSlots, n, A.options(), [&](int64_t first, int64_t count, at::Tensor& scratch) {
        composite_backward_kernel<scalar_t><<<count, threads_for(n), smem, stream>>>(
            A.const_data_ptr<scalar_t>(), z1.const_data_ptr<scalar_t>(), z2.const_data_ptr<scalar_t>(),
            gy1.const_data_ptr<scalar_t>(), gy2.const_data_ptr<scalar_t>(), gz1.data_ptr<scalar_t>(),
            gz2.data_ptr<scalar_t>(), need_a ? gA.data_ptr<scalar_t>() : nullptr, y2.data_ptr<scalar_t>(),
            scratch.data_ptr<scalar_t>(), static_cast<int>(n), first);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  at::Tensor gG = at::empty({0}, A.options()), gW = at::empty({0}, A.options());
  if (need_weights) gW = at::mm(gA.reshape({P, n * n}), codebook.reshape({K, n * n}).t());
  if (need_codebook) gG = at::mm(weights.t(), gA.reshape({P, n * n})).reshape({K, n, n});
  if (!need_z1) gz1 = at::empty({0}, A.options());
  if (!need_z2) gz2 = at::empty({0}, A.options());
  return {gG, gW, gz1, gz2};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CUDA, m) {
  m.impl("expm_forward", &expm_forward_cuda);
  m.impl("expm_backward", &expm_backward_cuda);
  m.impl("symmetric_expm_forward", &symmetric_expm_forward_cuda);
  m.impl("symmetric_expm_backward", &symmetric_expm_backward_cuda);
  m.impl("ipe_transform_forward", &ipe_transform_forward_cuda);
  m.impl("ipe_transform_backward", &ipe_transform_backward_cuda);
  m.impl("composite_symmetry_forward", &composite_symmetry_forward_cuda);
  m.impl("composite_symmetry_backward", &composite_symmetry_backward_cuda);
}

}  // namespace pyfastlab::vae::cuda
