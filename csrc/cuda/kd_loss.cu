// CUDA kernel of kd_loss_forward, registered for the CUDA dispatch key. The CPU kernel
// (csrc/cpu/kd_kernels_impl.h) is the ground truth for semantics and outputs; the math is spec
// distill.md 3.7 and 6.3.
//
// A row of C <= 1024 belongs to one warp (8 rows per 256-thread block), a longer row to a
// 512-thread block. Pass 1 runs an online (max, sum) for the three softmax streams s/T, t/T and s,
// all-reduced across the row's threads; pass 2 recomputes the exponentials (free when memory-bound;
// the re-read is served from L1/L2), accumulates the KL numerator and writes the gradient of the
// row for a row upstream of 1. A single-block kernel then sums the row losses and counts N_valid
// in a fixed order: bit-identical runs, no float atomics, no host sync.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "pyfastlab/cuda_rows.cuh"
#include "pyfastlab/kd_loss.h"

namespace pyfastlab::kd::cuda {
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
constexpr int kBlockRowThreads = 512;   // longer rows: one block each
constexpr int kReduceThreads = 512;     // the single-block finalize kernel
constexpr int64_t kMaxGrid = int64_t(1) << 30;  // grid-stride loops cover any N beyond it

__device__ __forceinline__ float exp_op(float x) { return ::expf(x); }
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

struct SumOp {
  template <typename T>
  __device__ __forceinline__ void operator()(T& a, T& b, T a2, T b2) const {
    a += a2;
    b += b2;
  }
};

template <typename scalar_t>
struct RowParams {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* student;
  const scalar_t* teacher;
  const int64_t* target;  // nullptr: no target, every row valid
  int64_t N, C, ignore_index;
  Weights<opmath_t> w;
  opmath_t* row_loss;   // v_i l_i
  bool* valid;          // v_i
  scalar_t* loss_none;  // v_i l_i in the student dtype for reduction none, else nullptr
  scalar_t* grad;       // gradient for a row upstream of 1, or nullptr
};

template <int kRowThreads, int kBlockThreads, typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads) kd_rows_kernel(const RowParams<scalar_t> p) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kRowsPerBlock = kBlockThreads / kRowThreads;
  __shared__ T smem[2 * (kRowThreads / kWarp + 1)];
  const int tid = threadIdx.x % kRowThreads;
  const Weights<T>& w = p.w;
  const int64_t row_stride = int64_t(gridDim.x) * kRowsPerBlock;
  for (int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kRowThreads; i < p.N; i += row_stride) {
    const scalar_t* __restrict__ s = p.student + i * p.C;
    const scalar_t* __restrict__ t = p.teacher + i * p.C;
    scalar_t* __restrict__ g = p.grad == nullptr ? nullptr : p.grad + i * p.C;
    int64_t y = -1;
    bool valid = true, bad_index = false;
    if (p.target != nullptr) {
      y = p.target[i];
      valid = y != p.ignore_index;
      bad_index = valid && (y < 0 || y >= p.C);  // never read: the row gives NaN
    }
    // Pass 1: (max, sum) of s/T (q), t/T (p) and s (r). `valid` is uniform over the row's threads.
    T Mq = -inf<T>(), Sq = 0, Mt = -inf<T>(), St = 0, Mr = -inf<T>(), Sr = 0;
    if (valid && !bad_index) {
      for (int64_t k = tid; k < p.C; k += kRowThreads) {
        const T sk = static_cast<T>(s[k]);
        if (w.use_soft) {
          online_add(Mq, Sq, sk * w.inv_T);
          online_add(Mt, St, static_cast<T>(t[k]) * w.inv_T);
        }
        online_add(Mr, Sr, sk);
      }
      if (w.use_soft) {
        row_allreduce<kRowThreads>(Mq, Sq, MaxSumOp{}, smem);
        row_allreduce<kRowThreads>(Mt, St, MaxSumOp{}, smem);
      }
      row_allreduce<kRowThreads>(Mr, Sr, MaxSumOp{}, smem);
    }
    // All -inf (student, or teacher under the soft term): zero. NaN / +inf: NaN. Dead wins.
    const bool dead = Mr == -inf<T>() || (w.use_soft && Mt == -inf<T>());
    const bool zero = !bad_index && (!valid || dead);
    const bool bad = bad_index || (!zero && (!isfinite(Mr) || (w.use_soft && (!isfinite(Mt) || !isfinite(Mq)))));
    const bool live = !zero && !bad;

    // Pass 2: KL numerator sum e^a (a - b) and the gradient row.
    const T cq = live && w.use_soft ? w.soft_T / Sq : T(0), ct = live && w.use_soft ? w.soft_T / St : T(0);
    const T cr = live && w.use_hard ? w.hard / Sr : T(0);
    T K = 0;
    for (int64_t k = tid; k < p.C; k += kRowThreads) {
      T gk = bad ? qnan<T>() : T(0);
      if (live) {
        const T sk = static_cast<T>(s[k]);
        if (w.use_soft) {
          const T a = static_cast<T>(t[k]) * w.inv_T - Mt, b = sk * w.inv_T - Mq;
          const T et = exp_op(a), eq = exp_op(b);
          if (et > T(0)) K += et * (a - b);  // teacher -inf: 0, not 0 * inf
          gk = eq * cq - et * ct;
        }
        if (w.use_hard) {
          gk += exp_op(sk - Mr) * cr;
          if (k == y) gk -= w.hard;  // softmax(s)_y - 1 in opmath, before rounding
        }
      }
      if (g != nullptr) g[k] = static_cast<scalar_t>(gk);
    }
    if (live && w.use_soft) {  // uniform over the row's threads
      T unused = 0;
      row_allreduce<kRowThreads>(K, unused, SumOp{}, smem);
    }
    if (tid == 0) {
      T l = bad ? qnan<T>() : T(0);
      if (live) {
        if (w.use_soft) l += w.soft_T2 * (K / St - log_op(St) + log_op(Sq));
        // (M - s_y) + log S: M + log S - s_y would round log S away once |M| >> log S
        if (w.use_hard) l += w.hard * ((Mr - static_cast<T>(s[y])) + log_op(Sr));
      }
      p.row_loss[i] = l;
      p.valid[i] = valid;
      if (p.loss_none != nullptr) p.loss_none[i] = static_cast<scalar_t>(l);
    }
  }
}

// One block, so the summation order depends on nothing but N.
template <typename scalar_t>
__global__ void __launch_bounds__(kReduceThreads)
    kd_finalize_kernel(const at::opmath_type<scalar_t>* __restrict__ row_loss, const bool* __restrict__ valid,
                       int64_t N, int64_t reduction, scalar_t* loss, int64_t* n_valid) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kWarps = kReduceThreads / kWarp;
  __shared__ T sum_smem[kWarps];
  __shared__ long long cnt_smem[kWarps];
  T sum = 0;
  long long n = 0;
  for (int64_t i = threadIdx.x; i < N; i += kReduceThreads) {
    sum += row_loss[i];
    n += valid[i];
  }
  sum = warp_sum(sum);
  n = warp_sum(n);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    sum_smem[warp] = sum;
    cnt_smem[warp] = n;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kWarps; ++w) {
    sum += sum_smem[w];
    n += cnt_smem[w];
  }
  *n_valid = n;
  if (reduction == kNone) return;
  if (reduction == kMean) sum = sum / static_cast<T>(n > 1 ? n : 1);
  *loss = static_cast<scalar_t>(sum);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kd_loss_forward_cuda(
    const at::Tensor& student, const at::Tensor& teacher, const c10::optional<at::Tensor>& target,
    double temperature, double soft_weight, double hard_weight, int64_t ignore_index, int64_t reduction,
    bool compute_grad) {
  check_args(student, teacher, target, temperature, soft_weight, hard_weight, reduction);
  TORCH_CHECK_VALUE(student.is_cuda(), "kd_loss_forward: student_logits must be a CUDA tensor here, got ",
                    student.device());
  const c10::cuda::CUDAGuard guard(student.device());
  const int64_t N = student.size(0), C = student.size(1);
  const auto opts = student.options();
  const auto opmath_dtype = at::toOpMathType(student.scalar_type());
  at::Tensor row_loss = at::empty({N}, opts.dtype(opmath_dtype));
  at::Tensor valid = at::empty({N}, opts.dtype(at::kBool));
  at::Tensor grad = compute_grad ? at::empty({N, C}, opts) : at::empty({0}, opts);
  at::Tensor loss = reduction == kNone ? at::empty({N}, opts) : at::empty({}, opts);
  at::Tensor n_valid = at::empty({}, opts.dtype(at::kLong));
  const at::Tensor s = student.contiguous();
  const at::Tensor t = soft_weight != 0 ? teacher.contiguous() : s;  // the teacher is read only for the soft term
  const at::Tensor y = target.has_value() ? target->contiguous() : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kd_loss_forward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (N > 0) {
      const RowParams<scalar_t> p{s.const_data_ptr<scalar_t>(),
                                  t.const_data_ptr<scalar_t>(),
                                  y.defined() ? y.const_data_ptr<int64_t>() : nullptr,
                                  N,
                                  C,
                                  ignore_index,
                                  Weights<opmath_t>(temperature, soft_weight, hard_weight),
                                  row_loss.data_ptr<opmath_t>(),
                                  valid.data_ptr<bool>(),
                                  reduction == kNone ? loss.data_ptr<scalar_t>() : nullptr,
                                  compute_grad ? grad.data_ptr<scalar_t>() : nullptr};
      if (C <= kWarpRowMaxC) {
        const int64_t blocks = std::min(ceil_div(N, kWarpRowBlock / kWarp), kMaxGrid);
        kd_rows_kernel<kWarp, kWarpRowBlock, scalar_t><<<blocks, kWarpRowBlock, 0, stream>>>(p);
      } else {
        kd_rows_kernel<kBlockRowThreads, kBlockRowThreads, scalar_t>
            <<<std::min(N, kMaxGrid), kBlockRowThreads, 0, stream>>>(p);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    kd_finalize_kernel<scalar_t><<<1, kReduceThreads, 0, stream>>>(
        row_loss.const_data_ptr<opmath_t>(), valid.const_data_ptr<bool>(), N, reduction,
        reduction == kNone ? nullptr : loss.data_ptr<scalar_t>(), n_valid.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, grad, valid, n_valid};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CUDA, m) { m.impl("kd_loss_forward", &kd_loss_forward_cuda); }

}  // namespace pyfastlab::kd::cuda
