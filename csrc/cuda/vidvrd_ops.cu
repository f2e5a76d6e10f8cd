// CUDA kernels of the vidvrd ops pairwise_mlp_scores, temporal_iou and span_nms, registered for the
// CUDA dispatch key. The CPU kernels (csrc/cpu/vidvrd_ops.cpp) are the ground truth for semantics;
// the math is spec vidvrd.md 3.1-3.3 and 6.
//
// pairwise_mlp_scores: 16 x 16 output tiles stream h in chunks through shared memory (no
// [B, N, M, H] anywhere). The backward is two atomic-free kernels, one thread per (row, h) looping
// over the columns (da and R) and one per (column, h) looping over the rows (db); dw sums R in row
// order, so results are bit-identical across runs. Half inputs are upcast before the add.
//
// span_nms: a stable device sort by score, then a stable sort by group; one warp per group walks
// its members in score order and tests each against the group's kept list in parallel (exit by
// warp vote). This is the greedy walk of the CPU kernel, not a 64-bit IoU bitmask: the bitmask needs
// the largest group size on the host (a second sync) to size its buffer. The kept flags become
// indices with one device-to-host count read (the output size is data-dependent).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "pyfastlab/vidvrd_ops.h"

namespace pyfastlab::vidvrd::cuda {
namespace {

constexpr int kTile = 16;    // output tile of the pairwise forward
constexpr int kChunk = 32;   // h per shared-memory chunk
constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

unsigned blocks_for(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

at::Tensor as_opmath(const at::Tensor& x) { return x.to(at::toOpMathType(x.scalar_type())).contiguous(); }

template <typename T>
__device__ inline T relu_nan(T x) {
  return x != x ? x : (x > T(0) ? x : T(0));
}

// grid (M tiles, N tiles, B); a thread owns s[v, i, j].
template <typename T>
__global__ void pairwise_forward_kernel(const T* a, const T* b, const T* w, T* s, int64_t N, int64_t M, int64_t H,
                                        T bias) {
  __shared__ T sa[kTile][kChunk + 1], sb[kTile][kChunk + 1], sw[kChunk];
  const int64_t v = blockIdx.z;
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int64_t i = int64_t(blockIdx.y) * kTile + ty, j = int64_t(blockIdx.x) * kTile + tx;
  const int64_t i0 = int64_t(blockIdx.y) * kTile, j0 = int64_t(blockIdx.x) * kTile;
  const T* av = a + v * N * H;
  const T* bv = b + v * M * H;
  T acc = 0;
  for (int64_t h0 = 0; h0 < H; h0 += kChunk) {
    for (int e = ty * kTile + tx; e < kTile * kChunk; e += kTile * kTile) {
      const int r = e / kChunk, c = e % kChunk;
      const bool hin = h0 + c < H;
      sa[r][c] = (i0 + r < N && hin) ? av[(i0 + r) * H + h0 + c] : T(0);
      sb[r][c] = (j0 + r < M && hin) ? bv[(j0 + r) * H + h0 + c] : T(0);
    }
    if (ty == 0)
      for (int c = tx; c < kChunk; c += kTile) sw[c] = h0 + c < H ? w[h0 + c] : T(0);
    __syncthreads();
    const int hn = static_cast<int>(H - h0 < kChunk ? H - h0 : kChunk);
    for (int c = 0; c < hn; ++c) acc += sw[c] * relu_nan(sa[ty][c] + sb[tx][c]);
    __syncthreads();
  }
  if (i < N && j < M) s[(v * N + i) * M + j] = bias + acc;
}

// One thread per (row, h) of `x` [R, H], looping over the K partners of its row in order:
// acc_m = sum_k g * 1[x + y_k > 0], acc_r = sum_k g * relu(x + y_k). For rows of a (da, R) the
// partners are b's columns; for columns of b (db) they are a's rows.
template <typename T>
__global__ void pairwise_backward_kernel(const T* x, const T* y, const T* g, const T* w, T* dx, T* R, int64_t rows_per_batch,
                                         int64_t K, int64_t H, int64_t g_row_stride, int64_t g_k_stride,
                                         int64_t g_batch_stride) {
  const int64_t h = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = blockIdx.y;
  if (h >= H) return;
  const int64_t v = row / rows_per_batch, r = row % rows_per_batch;
  const T xv = x[row * H + h];
  const T* yv = y + v * K * H + h;
  const T* gv = g + v * g_batch_stride + r * g_row_stride;
  T acc_m = 0, acc_r = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T xs = xv + yv[k * H];
    const T gk = gv[k * g_k_stride];
    acc_m += xs > T(0) ? gk : T(0);
    if (R != nullptr) acc_r += xs > T(0) ? gk * xs : (xs != xs ? xs : T(0));
  }
  if (dx != nullptr) dx[row * H + h] = w[h] * acc_m;
  if (R != nullptr) R[row * H + h] = acc_r;
}

template <typename T>
__global__ void sum_rows_kernel(const T* R, T* out, int64_t rows, int64_t H) {
  const int64_t h = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (h >= H) return;
  T acc = 0;
  for (int64_t row = 0; row < rows; ++row) acc += R[row * H + h];
  out[h] = acc;
}

at::Tensor pairwise_mlp_scores_forward_cuda(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& w_in,
                                            double bias) {
  check_pairwise("pairwise_mlp_scores_forward", a_in, b_in, w_in);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const int64_t B = a_in.size(0), N = a_in.size(1), M = b_in.size(1), H = a_in.size(2);
  at::Tensor a = as_opmath(a_in), b = as_opmath(b_in), w = as_opmath(w_in);
  at::Tensor s = at::empty({B, N, M}, a.options());
  if (s.numel() == 0) return s.to(a_in.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pairwise_mlp_scores_forward_cuda", [&] {
    const dim3 grid(static_cast<unsigned>((M + kTile - 1) / kTile), static_cast<unsigned>((N + kTile - 1) / kTile),
                    static_cast<unsigned>(B));
    pairwise_forward_kernel<scalar_t><<<grid, dim3(kTile, kTile), 0, c10::cuda::getCurrentCUDAStream()>>>(
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
        s.data_ptr<scalar_t>(), N, M, H, static_cast<scalar_t>(bias));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return s.to(a_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_mlp_scores_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& w_in, bool need_a,
    bool need_b, bool need_w) {
  check_pairwise("pairwise_mlp_scores_backward", a_in, b_in, w_in);
  check_pairwise_grad("pairwise_mlp_scores_backward", grad_in, a_in, b_in);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const int64_t B = a_in.size(0), N = a_in.size(1), M = b_in.size(1), H = a_in.size(2);
  at::Tensor a = as_opmath(a_in), b = as_opmath(b_in), w = as_opmath(w_in), g = as_opmath(grad_in);
  const auto o = a.options();
  // Zero-filled: with N = 0 or M = 0 no kernel writes them.
  at::Tensor ga = need_a ? at::zeros({B, N, H}, o) : at::empty({0}, o);
  at::Tensor gb = need_b ? at::zeros({B, M, H}, o) : at::empty({0}, o);
  at::Tensor gw = need_w ? at::zeros({H}, o) : at::empty({0}, o);
  at::Tensor R = need_w ? at::zeros({B * N, H}, o) : at::empty({0}, o);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pairwise_mlp_scores_backward_cuda", [&] {
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>();
    const scalar_t *pw = w.const_data_ptr<scalar_t>(), *pg = g.const_data_ptr<scalar_t>();
    if ((need_a || need_w) && B * N > 0 && M > 0 && H > 0) {
      const dim3 grid(blocks_for(H, 128), static_cast<unsigned>(B * N));
      pairwise_backward_kernel<scalar_t><<<grid, 128, 0, stream>>>(
          pa, pb, pg, pw, need_a ? ga.data_ptr<scalar_t>() : nullptr, need_w ? R.data_ptr<scalar_t>() : nullptr, N,
          M, H, /*g_row_stride=*/M, /*g_k_stride=*/1, /*g_batch_stride=*/N * M);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (need_b && B * M > 0 && N > 0 && H > 0) {
      const dim3 grid(blocks_for(H, 128), static_cast<unsigned>(B * M));
      pairwise_backward_kernel<scalar_t><<<grid, 128, 0, stream>>>(
          pb, pa, pg, pw, gb.data_ptr<scalar_t>(), nullptr, M, N, H, /*g_row_stride=*/1, /*g_k_stride=*/M,
          /*g_batch_stride=*/N * M);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (need_w && H > 0) {
      sum_rows_kernel<scalar_t><<<blocks_for(H), kThreads, 0, stream>>>(R.const_data_ptr<scalar_t>(),
                                                                          gw.data_ptr<scalar_t>(), B * N, H);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  const auto dtype = a_in.scalar_type();
  return {ga.to(dtype), gb.to(dtype), gw.to(dtype)};
}

template <typename T, typename Out>
__global__ void temporal_iou_kernel(const T* a, const T* b, Out* out, int64_t P, int64_t Q) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= P * Q) return;
  const int64_t p = idx / Q, q = idx % Q;
  if constexpr (std::is_integral_v<T>) {
    out[idx] = static_cast<Out>(span_iou_int(a[2 * p], a[2 * p + 1], b[2 * q], b[2 * q + 1]));
  } else {
    out[idx] = static_cast<Out>(span_iou<T>(a[2 * p], a[2 * p + 1], b[2 * q], b[2 * q + 1]));
  }
}

at::Tensor temporal_iou_cuda(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_spans("temporal_iou", "a", a_in);
  check_spans("temporal_iou", "b", b_in);
  TORCH_CHECK_VALUE(a_in.scalar_type() == b_in.scalar_type(), "temporal_iou: b must have the dtype of a");
  const c10::cuda::CUDAGuard guard(a_in.device());
  const int64_t P = a_in.size(0), Q = b_in.size(0);
  const bool integral = at::isIntegralType(a_in.scalar_type(), /*includeBool=*/false);
  const auto out_dtype = integral ? at::kFloat : a_in.scalar_type();
  at::Tensor out = at::empty({P, Q}, a_in.options().dtype(out_dtype));
  if (P == 0 || Q == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (integral) {
    at::Tensor a = a_in.to(at::kLong).contiguous(), b = b_in.to(at::kLong).contiguous();
    temporal_iou_kernel<int64_t, float><<<blocks_for(P * Q), kThreads, 0, stream>>>(
        a.const_data_ptr<int64_t>(), b.const_data_ptr<int64_t>(), out.data_ptr<float>(), P, Q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
  }
  at::Tensor a = as_opmath(a_in), b = as_opmath(b_in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "temporal_iou_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    temporal_iou_kernel<acc_t, scalar_t><<<blocks_for(P * Q), kThreads, 0, stream>>>(
        a.const_data_ptr<acc_t>(), b.const_data_ptr<acc_t>(), out.data_ptr<scalar_t>(), P, Q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// One warp per group: position `start` (in group-then-score order) heads a group ending at end[start].
// The kept spans of the group are appended at kb/ke[start ...].
template <typename T>
__global__ void span_nms_kernel(const T* sb, const T* se, const bool* is_start, const int64_t* end, int64_t M, T thr,
                                int64_t max_keep, T* kb, T* ke, bool* keep) {
  const int64_t start = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (start >= M || !is_start[start]) return;
  int64_t count = 0;
  for (int64_t c = start; c < end[start]; ++c) {
    if (max_keep > 0 && count >= max_keep) break;
    const T cb = sb[c], ce = se[c];
    bool suppressed = false;
    for (int64_t t = lane; t < count && !suppressed; t += kWarp)
      suppressed = span_iou<T>(kb[start + t], ke[start + t], cb, ce) > thr;
    if (__any_sync(kFullMask, suppressed)) continue;
    if (lane == 0) {
      kb[start + count] = cb;
      ke[start + count] = ce;
      keep[c] = true;
    }
    ++count;
    __syncwarp();
  }
}

at::Tensor span_nms_cuda(const at::Tensor& spans_in, const at::Tensor& scores_in, double iou_threshold,
                         const c10::optional<at::Tensor>& groups_in, int64_t max_keep) {
  check_spans("span_nms", "spans", spans_in);
  const int64_t M = spans_in.size(0);
  TORCH_CHECK_VALUE(scores_in.dim() == 1 && scores_in.size(0) == M, "span_nms: scores must be [M=", M, "], got ",
                    scores_in.sizes());
  TORCH_CHECK_VALUE(!std::isnan(iou_threshold), "span_nms: iou_threshold must not be NaN");
  if (groups_in.has_value())
    TORCH_CHECK_VALUE(groups_in->scalar_type() == at::kLong && groups_in->dim() == 1 && groups_in->size(0) == M,
                      "span_nms: groups must be int64 [M=", M, "]");
  const c10::cuda::CUDAGuard guard(spans_in.device());
  if (M == 0) return at::empty({0}, spans_in.options().dtype(at::kLong));
  // pi: stable, by score descending with NaN as -inf; then stable by group.
  const at::Tensor key =
      scores_in.to(at::kDouble).masked_fill(at::isnan(scores_in), -std::numeric_limits<double>::infinity());
  const at::Tensor pi = std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor by_group = pi, is_start;
  const auto long_opts = spans_in.options().dtype(at::kLong);
  const at::Tensor positions = at::arange(M, long_opts);
  if (groups_in.has_value()) {
    const at::Tensor g = groups_in->index_select(0, pi);
    const auto [g_sorted, order] = at::sort(g, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    by_group = pi.index_select(0, order);
    is_start = at::ones({M}, spans_in.options().dtype(at::kBool));
    if (M > 1) is_start.slice(0, 1).copy_(g_sorted.slice(0, 1) != g_sorted.slice(0, 0, M - 1));
  } else {
    is_start = positions == 0;
  }
  // end[k]: the next group start after k (or M), a suffix minimum over the starts.
  const at::Tensor starts = at::where(is_start, positions, at::full({}, M, long_opts));
  const at::Tensor next = std::get<0>(at::cummin(starts.flip(0), 0)).flip(0);
  const at::Tensor end = at::cat({next.slice(0, 1), at::full({1}, M, long_opts)});
  const at::Tensor sorted = spans_in.index_select(0, by_group);
  const at::Tensor sb = sorted.select(1, 0).contiguous(), se = sorted.select(1, 1).contiguous();
  at::Tensor keep = at::zeros({M}, spans_in.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(spans_in.scalar_type(), "span_nms_cuda", [&] {
    at::Tensor kb = at::empty({M}, sb.options()), ke = at::empty({M}, sb.options());
    const int64_t threads = M * kWarp;
    span_nms_kernel<scalar_t><<<blocks_for(threads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        sb.const_data_ptr<scalar_t>(), se.const_data_ptr<scalar_t>(), is_start.const_data_ptr<bool>(),
        end.const_data_ptr<int64_t>(), M, static_cast<scalar_t>(iou_threshold), max_keep, kb.data_ptr<scalar_t>(),
        ke.data_ptr<scalar_t>(), keep.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // keep is in group order: back to span indices, then read out in score order (one count read).
  at::Tensor kept_by_index = at::zeros({M}, keep.options()).index_put_({by_group}, keep);
  return pi.masked_select(kept_by_index.index_select(0, pi));
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CUDA, m) {
  m.impl("pairwise_mlp_scores_forward", &pairwise_mlp_scores_forward_cuda);
  m.impl("pairwise_mlp_scores_backward", &pairwise_mlp_scores_backward_cuda);
  m.impl("temporal_iou", &temporal_iou_cuda);
  m.impl("span_nms", &span_nms_cuda);
}

}  // namespace pyfastlab::vidvrd::cuda
