// CUDA kernel of trajectory_viou, registered for the CUDA dispatch key. The CPU kernel
// (csrc/cpu/vidvrd_viou.cpp) is the ground truth for semantics; the math is spec vidvrd.md 3.4.
//
// One thread per trajectory sums its volume; then one thread per pair (q fastest, so a warp shares
// p's boxes) sums the intersections over the pair's overlap. Every sum is fp64 in frame order with
// __dadd_rn, which nvcc never contracts into an FMA, so the result matches the CPU kernel. No host
// sync; spans are clamped on the device.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "pyfastlab/vidvrd_viou.h"

namespace pyfastlab::viou::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPairX = 32, kPairY = 8;

template <typename scalar_t>
__global__ void volumes_kernel(const scalar_t* __restrict__ boxes, const int64_t* __restrict__ span, int64_t n,
                               int64_t T, double delta, double* __restrict__ vol) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  int64_t b0, b1;
  clamp_span(span[2 * i], span[2 * i + 1], T, b0, b1);
  double acc = 0;
  for (int64_t t = b0; t < b1; ++t) {
    const scalar_t* r = boxes + (i * T + t) * 4;
    acc = __dadd_rn(acc, area(double(r[0]), double(r[1]), double(r[2]), double(r[3]), delta));
  }
  vol[i] = acc;
}

template <typename scalar_t>
__global__ void pairs_kernel(const scalar_t* __restrict__ a, const int64_t* __restrict__ span_a,
                             const double* __restrict__ vol_a, const scalar_t* __restrict__ b,
                             const int64_t* __restrict__ span_b, const double* __restrict__ vol_b, int64_t P,
                             int64_t Q, int64_t T, double delta, scalar_t* __restrict__ out) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t p = blockIdx.y * int64_t(blockDim.y) + threadIdx.y;
  if (p >= P || q >= Q) return;
  int64_t a0, a1, b0, b1;
  clamp_span(span_a[2 * p], span_a[2 * p + 1], T, a0, a1);
  clamp_span(span_b[2 * q], span_b[2 * q + 1], T, b0, b1);
  const int64_t lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
  double inter = 0;
  for (int64_t t = lo; t < hi; ++t) {
    const scalar_t* ra = a + (p * T + t) * 4;
    const scalar_t* rb = b + (q * T + t) * 4;
    inter = __dadd_rn(inter, intersection(double(ra[0]), double(ra[1]), double(ra[2]), double(ra[3]),
                                          double(rb[0]), double(rb[1]), double(rb[2]), double(rb[3]), delta));
  }
  out[p * Q + q] = static_cast<scalar_t>(ratio(inter, vol_a[p], vol_b[q]));
}

at::Tensor trajectory_viou_cuda(const at::Tensor& boxes_a, const at::Tensor& span_a, const at::Tensor& boxes_b,
                                const at::Tensor& span_b, bool pixel_inclusive) {
  check_args(boxes_a, span_a, boxes_b, span_b);
  const c10::cuda::CUDAGuard guard(boxes_a.device());
  const int64_t P = boxes_a.size(0), Q = boxes_b.size(0), T = boxes_a.size(1);
  at::Tensor out = at::empty({P, Q}, boxes_a.options());
  if (P == 0 || Q == 0) return out;
  const double delta = pixel_inclusive ? 1.0 : 0.0;
  const at::Tensor a = boxes_a.contiguous(), b = boxes_b.contiguous();
  const at::Tensor sa = span_a.contiguous(), sb = span_b.contiguous();
  at::Tensor vol_a = at::empty({P}, boxes_a.options().dtype(at::kDouble));
  at::Tensor vol_b = at::empty({Q}, boxes_a.options().dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "trajectory_viou_cuda", [&] {
    volumes_kernel<scalar_t><<<(P + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        a.const_data_ptr<scalar_t>(), sa.const_data_ptr<int64_t>(), P, T, delta, vol_a.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    volumes_kernel<scalar_t><<<(Q + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        b.const_data_ptr<scalar_t>(), sb.const_data_ptr<int64_t>(), Q, T, delta, vol_b.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 block(kPairX, kPairY);
    const dim3 grid((Q + kPairX - 1) / kPairX, (P + kPairY - 1) / kPairY);
    TORCH_CHECK(grid.y <= 65535, "trajectory_viou: P = ", P, " exceeds the CUDA grid (", 65535 * kPairY, " rows)");
    pairs_kernel<scalar_t><<<grid, block, 0, stream>>>(
        a.const_data_ptr<scalar_t>(), sa.const_data_ptr<int64_t>(), vol_a.const_data_ptr<double>(),
        b.const_data_ptr<scalar_t>(), sb.const_data_ptr<int64_t>(), vol_b.const_data_ptr<double>(), P, Q, T, delta,
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CUDA, m) { m.impl("trajectory_viou", &trajectory_viou_cuda); }

}  // namespace pyfastlab::viou::cuda
