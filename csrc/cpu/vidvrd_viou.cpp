// CPU kernel of trajectory_viou (spec vidvrd.md 3.4 and 6): boxes copied once into a SoA fp64
// layout [n, 4, T] so the pair loop reads four contiguous coordinate rows, volumes once per
// trajectory, then parallel over p. Every sum runs in frame order in fp64 (this file is built with
// -ffp-contract=off): the result is the VidVRD helper's per-frame Python loop bit for bit, which
// evaluate relies on for metrics == the Python port, and it does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "pyfastlab/vidvrd_viou.h"

namespace pyfastlab::viou::cpu {
namespace {

struct Tracks {
  std::vector<double> xy;  // [n, 4, T]; frames outside the span are never written nor read
  std::vector<int64_t> begin, end;
  std::vector<double> volume;
};

template <typename scalar_t>
Tracks to_soa(const at::Tensor& boxes, const at::Tensor& span, double delta) {
  const int64_t n = boxes.size(0), T = boxes.size(1);
  const scalar_t* src = boxes.const_data_ptr<scalar_t>();
  const int64_t* sp = span.const_data_ptr<int64_t>();
  Tracks tr{std::vector<double>(n * 4 * T), std::vector<int64_t>(n), std::vector<int64_t>(n), std::vector<double>(n)};
  at::parallel_for(0, n, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      clamp_span(sp[2 * i], sp[2 * i + 1], T, tr.begin[i], tr.end[i]);
      double* dst = tr.xy.data() + i * 4 * T;
      double vol = 0;
      for (int64_t t = tr.begin[i]; t < tr.end[i]; ++t) {
        const scalar_t* r = src + (i * T + t) * 4;
        for (int k = 0; k < 4; ++k) dst[k * T + t] = static_cast<double>(r[k]);
        vol += area(dst[t], dst[T + t], dst[2 * T + t], dst[3 * T + t], delta);
      }
      tr.volume[i] = vol;
    }
  });
  return tr;
}

at::Tensor trajectory_viou_cpu(const at::Tensor& boxes_a, const at::Tensor& span_a, const at::Tensor& boxes_b,
                               const at::Tensor& span_b, bool pixel_inclusive) {
  check_args(boxes_a, span_a, boxes_b, span_b);
  const int64_t P = boxes_a.size(0), Q = boxes_b.size(0), T = boxes_a.size(1);
  at::Tensor out = at::empty({P, Q}, boxes_a.options());
  if (P == 0 || Q == 0) return out;
  const double delta = pixel_inclusive ? 1.0 : 0.0;
  AT_DISPATCH_FLOATING_TYPES(boxes_a.scalar_type(), "trajectory_viou_cpu", [&] {
    const Tracks a = to_soa<scalar_t>(boxes_a.contiguous(), span_a.contiguous(), delta);
    const Tracks b = to_soa<scalar_t>(boxes_b.contiguous(), span_b.contiguous(), delta);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const double* ax1 = a.xy.data() + p * 4 * T;
        const double *ay1 = ax1 + T, *ax2 = ax1 + 2 * T, *ay2 = ax1 + 3 * T;
        for (int64_t q = 0; q < Q; ++q) {
          const double* bx1 = b.xy.data() + q * 4 * T;
          const double *by1 = bx1 + T, *bx2 = bx1 + 2 * T, *by2 = bx1 + 3 * T;
          const int64_t lo = std::max(a.begin[p], b.begin[q]), hi = std::min(a.end[p], b.end[q]);
          double inter = 0;
          for (int64_t t = lo; t < hi; ++t)
            inter += intersection(ax1[t], ay1[t], ax2[t], ay2[t], bx1[t], by1[t], bx2[t], by2[t], delta);
          o[p * Q + q] = static_cast<scalar_t>(ratio(inter, a.volume[p], b.volume[q]));
        }
      }
    });
  });
  return out;
}

// trajectory_viou_pairs (evaluate's hit flags, spec vidvrd.md 4.3 "Parity"): trajectories stored
// flat, each over its own duration, and one vIoU per listed pair. Volumes run over each
// trajectory's boxes in order and intersections over the pair's common frames in order, in fp64:
// exactly the helper's per-frame loop. Pairs are independent; large calls split them over threads.
at::Tensor trajectory_viou_pairs_cpu(const at::Tensor& boxes, const at::Tensor& offsets, const at::Tensor& begin,
                                     const at::Tensor& pair_a, const at::Tensor& pair_b, bool pixel_inclusive) {
  constexpr const char* op = "trajectory_viou_pairs";
  TORCH_CHECK_VALUE(boxes.scalar_type() == at::kDouble && boxes.dim() == 2 && boxes.size(1) == 4, op,
                    ": boxes must be float64 [N, 4], got ", boxes.scalar_type(), " ", boxes.sizes());
  const int64_t n = begin.numel();
  TORCH_CHECK_VALUE(offsets.scalar_type() == at::kLong && offsets.dim() == 1 && offsets.numel() == n + 1, op,
                    ": offsets must be int64 [n + 1] with n = begin.numel() = ", n, ", got ", offsets.sizes());
  TORCH_CHECK_VALUE(begin.scalar_type() == at::kLong && begin.dim() == 1, op, ": begin must be int64 [n]");
  TORCH_CHECK_VALUE(pair_a.scalar_type() == at::kLong && pair_b.scalar_type() == at::kLong && pair_a.dim() == 1 &&
                        pair_a.sizes() == pair_b.sizes(),
                    op, ": pair_a and pair_b must be int64 [K] of one size, got ", pair_a.sizes(), " and ",
                    pair_b.sizes());
  for (const auto* t : {&boxes, &offsets, &begin, &pair_a, &pair_b})
    TORCH_CHECK_VALUE(t->device().is_cpu(), op, ": all inputs must be on the CPU");
  const at::Tensor bx = boxes.contiguous(), off_t = offsets.contiguous(), beg_t = begin.contiguous();
  const at::Tensor pa_t = pair_a.contiguous(), pb_t = pair_b.contiguous();
  const double* xy = bx.const_data_ptr<double>();
  const int64_t *off = off_t.const_data_ptr<int64_t>(), *beg = beg_t.const_data_ptr<int64_t>();
  const int64_t *pa = pa_t.const_data_ptr<int64_t>(), *pb = pb_t.const_data_ptr<int64_t>();
  TORCH_CHECK_VALUE(off[0] == 0 && off[n] == boxes.size(0), op, ": offsets must run from 0 to N = ", boxes.size(0));
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(off[i] <= off[i + 1], op, ": offsets must not decrease (at ", i, ")");
  const int64_t K = pair_a.numel();
  for (int64_t k = 0; k < K; ++k)
    TORCH_CHECK_VALUE(pa[k] >= 0 && pa[k] < n && pb[k] >= 0 && pb[k] < n, op, ": pair ", k, " (", pa[k], ", ",
                      pb[k], ") is out of range [0, ", n, ")");
  const double delta = pixel_inclusive ? 1.0 : 0.0;
  std::vector<double> volume(n);
  for (int64_t i = 0; i < n; ++i) {
    double vol = 0;
    for (int64_t r = off[i]; r < off[i + 1]; ++r) vol += area(xy[4 * r], xy[4 * r + 1], xy[4 * r + 2], xy[4 * r + 3], delta);
    volume[i] = vol;
  }
  at::Tensor out = at::empty({K}, boxes.options());
  double* o = out.mutable_data_ptr<double>();
  // A grain of 256 pairs keeps evaluate's small per-video calls on the calling thread.
  at::parallel_for(0, K, 256, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t a = pa[k], b = pb[k];
      const int64_t lo = std::max(beg[a], beg[b]);
      const int64_t hi = std::min(beg[a] + off[a + 1] - off[a], beg[b] + off[b + 1] - off[b]);
      double inter = 0;
      for (int64_t t = lo; t < hi; ++t) {
        const double* ra = xy + 4 * (off[a] + t - beg[a]);  // the boxes of frame t
        const double* rb = xy + 4 * (off[b] + t - beg[b]);
        inter += intersection(ra[0], ra[1], ra[2], ra[3], rb[0], rb[1], rb[2], rb[3], delta);
      }
      o[k] = ratio(inter, volume[a], volume[b]);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CPU, m) {
  m.impl("trajectory_viou", &trajectory_viou_cpu);
  m.impl("trajectory_viou_pairs", &trajectory_viou_pairs_cpu);
}

}  // namespace pyfastlab::viou::cpu
