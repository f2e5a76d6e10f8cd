#pragma once
// Shared pieces of the vidvrd ops pairwise_mlp_scores, temporal_iou and span_nms (spec vidvrd.md
// 3.1-3.3): argument checks and the scalar interval IoU, used by the CPU and the CUDA kernels alike
// so both see the same contract. The public wrappers promote dtypes first, so kernels see one
// dtype per op.
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>

namespace pyfastlab::vidvrd {

inline void check_pairwise(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& w) {
  TORCH_CHECK_VALUE(a.dim() == 3, op, ": a must be [B, N, H], got ", a.sizes());
  TORCH_CHECK_VALUE(b.dim() == 3, op, ": b must be [B, M, H], got ", b.sizes());
  TORCH_CHECK_VALUE(w.dim() == 1, op, ": w must be [H], got ", w.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(a.scalar_type()), op, ": a must be floating, got ", a.scalar_type());
  TORCH_CHECK_VALUE(b.scalar_type() == a.scalar_type() && w.scalar_type() == a.scalar_type(), op,
                    ": b and w must have the dtype of a (", a.scalar_type(), ")");
  TORCH_CHECK_VALUE(b.device() == a.device() && w.device() == a.device(), op, ": b and w must be on the device of a");
  TORCH_CHECK_VALUE(b.size(0) == a.size(0), op, ": b must have the batch size of a (", a.size(0), "), got ", b.size(0));
  TORCH_CHECK_VALUE(b.size(2) == a.size(2) && w.size(0) == a.size(2), op, ": b [B, M, H] and w [H] must have H = ",
                    a.size(2), ", got ", b.sizes(), " and ", w.sizes());
}

// The backward's incoming gradient: [B, N, M] for a [B, N, H] and b [B, M, H].
inline void check_pairwise_grad(const char* op, const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef({a.size(0), a.size(1), b.size(1)}), op, ": grad must be [",
                    a.size(0), ", ", a.size(1), ", ", b.size(1), "], got ", grad.sizes());
}

inline void check_spans(const char* op, const char* name, const at::Tensor& s) {
  TORCH_CHECK_VALUE(s.dim() == 2 && s.size(1) == 2, op, ": ", name, " must be [n, 2] spans, got ", s.sizes());
}

// NaN-propagating min/max (torch.minimum / torch.maximum semantics).
template <typename T>
C10_HOST_DEVICE inline T nan_max(T x, T y) {
  return (x != x) ? x : ((y != y) ? y : (x > y ? x : y));
}
template <typename T>
C10_HOST_DEVICE inline T nan_min(T x, T y) {
  return (x != x) ? x : ((y != y) ? y : (x < y ? x : y));
}

// IoU of [s0, e0) and [s1, e1), evaluated in exactly the spec's order (3.2) in T.
template <typename T>
C10_HOST_DEVICE inline T span_iou(T s0, T e0, T s1, T e1) {
  const T la = nan_max(T(0), e0 - s0);
  const T lb = nan_max(T(0), e1 - s1);
  const T inter = nan_max(T(0), nan_min(e0, e1) - nan_max(s0, s1));
  const T u = la + lb - inter;
  return u == T(0) ? T(0) : inter / u;
}

// Integer spans: exact int64 lengths and intersection, one fp64 division.
C10_HOST_DEVICE inline double span_iou_int(int64_t s0, int64_t e0, int64_t s1, int64_t e1) {
  const int64_t la = e0 > s0 ? e0 - s0 : 0;
  const int64_t lb = e1 > s1 ? e1 - s1 : 0;
  const int64_t hi = e0 < e1 ? e0 : e1, lo = s0 > s1 ? s0 : s1;
  const int64_t inter = hi > lo ? hi - lo : 0;
  const int64_t u = la + lb - inter;
  return u == 0 ? 0.0 : static_cast<double>(inter) / static_cast<double>(u);
}

}  // namespace pyfastlab::vidvrd
