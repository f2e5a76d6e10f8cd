#pragma once
// Shared pieces of trajectory_viou (spec vidvrd.md 3.4): argument checks and the per-frame terms,
// used by the CPU and the CUDA kernels alike so both see the same contract and the same fp64 math.
// The wrapper hands kernels float32 or float64 boxes of one dtype; the output has that dtype.
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace pyfastlab::viou {

inline void check_args(const at::Tensor& boxes_a, const at::Tensor& span_a, const at::Tensor& boxes_b,
                       const at::Tensor& span_b) {
  constexpr const char* op = "trajectory_viou";
  TORCH_CHECK_VALUE(boxes_a.dim() == 3 && boxes_a.size(2) == 4, op, ": boxes_a must be [P, T, 4], got ",
                    boxes_a.sizes());
  TORCH_CHECK_VALUE(boxes_b.dim() == 3 && boxes_b.size(2) == 4, op, ": boxes_b must be [Q, T, 4], got ",
                    boxes_b.sizes());
  TORCH_CHECK_VALUE(boxes_b.size(1) == boxes_a.size(1), op, ": boxes_b has T = ", boxes_b.size(1),
                    " frames but boxes_a has T = ", boxes_a.size(1));
  TORCH_CHECK_VALUE(boxes_a.scalar_type() == at::kFloat || boxes_a.scalar_type() == at::kDouble, op,
                    ": boxes_a must be float32 or float64 here, got ", boxes_a.scalar_type());
  TORCH_CHECK_VALUE(boxes_b.scalar_type() == boxes_a.scalar_type(), op, ": boxes_b must have the dtype of boxes_a (",
                    boxes_a.scalar_type(), "), got ", boxes_b.scalar_type());
  TORCH_CHECK_VALUE(span_a.scalar_type() == at::kLong && span_a.dim() == 2 && span_a.size(0) == boxes_a.size(0) &&
                        span_a.size(1) == 2,
                    op, ": span_a must be int64 [P=", boxes_a.size(0), ", 2], got ", span_a.scalar_type(), " ",
                    span_a.sizes());
  TORCH_CHECK_VALUE(span_b.scalar_type() == at::kLong && span_b.dim() == 2 && span_b.size(0) == boxes_b.size(0) &&
                        span_b.size(1) == 2,
                    op, ": span_b must be int64 [Q=", boxes_b.size(0), ", 2], got ", span_b.scalar_type(), " ",
                    span_b.sizes());
  for (const auto* t : {&span_a, &boxes_b, &span_b})
    TORCH_CHECK_VALUE(t->device() == boxes_a.device(), op, ": all inputs must be on ", boxes_a.device(), ", got ",
                      t->device());
}

// Spans clamped without a host sync: 0 <= begin <= end <= T.
C10_HOST_DEVICE inline void clamp_span(int64_t begin, int64_t end, int64_t T, int64_t& b0, int64_t& b1) {
  b0 = begin < 0 ? 0 : (begin > T ? T : begin);
  b1 = end < b0 ? b0 : (end > T ? T : end);
}

// NaN-propagating min/max (as torch.minimum/maximum): a NaN box gives a NaN vIoU, never a silent 0.
C10_HOST_DEVICE inline double nan_min(double a, double b) { return (a < b || a != a) ? a : b; }
C10_HOST_DEVICE inline double nan_max(double a, double b) { return (a > b || a != a) ? a : b; }
C10_HOST_DEVICE inline double clamp0(double a) { return a < 0 ? 0.0 : a; }  // NaN passes

C10_HOST_DEVICE inline double area(double x1, double y1, double x2, double y2, double delta) {
  return (x2 - x1 + delta) * (y2 - y1 + delta);
}

C10_HOST_DEVICE inline double intersection(double ax1, double ay1, double ax2, double ay2, double bx1, double by1,
                                           double bx2, double by2, double delta) {
  const double w = clamp0(nan_min(ax2, bx2) - nan_max(ax1, bx1) + delta);
  const double h = clamp0(nan_min(ay2, by2) - nan_max(ay1, by1) + delta);
  return w * h;
}

// I / ((V + W) - I), 0 for an empty union, NaN kept.
C10_HOST_DEVICE inline double ratio(double inter, double vol_a, double vol_b) {
  const double uni = (vol_a + vol_b) - inter;
  return uni > 0 ? inter / uni : (uni != uni ? uni : 0.0);
}

}  // namespace pyfastlab::viou
