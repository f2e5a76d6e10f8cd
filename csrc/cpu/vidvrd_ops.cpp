// CPU kernels of the vidvrd ops (spec vidvrd.md 3.1-3.3 and 6): pairwise_mlp_scores forward and
// backward without any [B, N, M, H] buffer, the P x Q temporal IoU, and grouped greedy span NMS.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "pyfastlab/vidvrd_ops.h"

namespace pyfastlab::vidvrd::cpu {
namespace {

// Half inputs are upcast before the add (spec 3.1 precision): kernels only see fp32 or fp64.
at::Tensor as_opmath(const at::Tensor& x) {
  return x.to(at::toOpMathType(x.scalar_type())).contiguous();
}

// sum_h w_h relu(a_h + b_h) in a fixed order: kLanes independent partial sums (the compiler
// vectorises them without reassociating), then the lanes and the tail in order.
template <typename T>
T relu_dot(const T* __restrict a, const T* __restrict b, const T* __restrict w, int64_t H) {
  constexpr int kLanes = 16;
  T lanes[kLanes] = {};
  int64_t h = 0;
  for (; h + kLanes <= H; h += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const T x = a[h + l] + b[h + l];
      lanes[l] += w[h + l] * (x < T(0) ? T(0) : x);  // relu keeping NaN
    }
  T s = 0;
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  for (; h < H; ++h) {
    const T x = a[h] + b[h];
    s += w[h] * (x < T(0) ? T(0) : x);
  }
  return s;
}

at::Tensor pairwise_mlp_scores_forward_cpu(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& w_in,
                                           double bias) {
  check_pairwise("pairwise_mlp_scores_forward", a_in, b_in, w_in);
  const int64_t B = a_in.size(0), N = a_in.size(1), M = b_in.size(1), H = a_in.size(2);
  at::Tensor a = as_opmath(a_in), b = as_opmath(b_in), w = as_opmath(w_in);
  at::Tensor s = at::empty({B, N, M}, a.options());
  if (s.numel() == 0) return s.to(a_in.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pairwise_mlp_scores_forward", [&] {
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>();
    const scalar_t* pw = w.const_data_ptr<scalar_t>();
    scalar_t* ps = s.data_ptr<scalar_t>();
    const auto c = static_cast<scalar_t>(bias);
    at::parallel_for(0, B * N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t* ar = pa + row * H;
        const scalar_t* bv = pb + (row / N) * M * H;
        for (int64_t j = 0; j < M; ++j) ps[row * M + j] = c + relu_dot(ar, bv + j * H, pw, H);
      }
    });
  });
  return s.to(a_in.scalar_type());
}

// acc_m[h] += g * 1[x > 0], acc_r[h] += g * relu(x) for x = a + b (relu'(0) = 0, as torch).
// Branch-free selects on restrict pointers, one instantiation per output set: the compiler
// vectorises the loop.
template <typename T, bool kWantR>
void accumulate_row(const T* __restrict a, const T* __restrict b, T g, int64_t H, T* __restrict acc_m,
                    T* __restrict acc_r) {
  for (int64_t h = 0; h < H; ++h) {
    const T x = a[h] + b[h];
    const bool on = x > T(0);
    acc_m[h] += on ? g : T(0);
    if constexpr (kWantR) acc_r[h] += g * (x < T(0) ? T(0) : x);  // relu keeping NaN
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_mlp_scores_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& w_in, bool need_a,
    bool need_b, bool need_w) {
  check_pairwise("pairwise_mlp_scores_backward", a_in, b_in, w_in);
  check_pairwise_grad("pairwise_mlp_scores_backward", grad_in, a_in, b_in);
  const int64_t B = a_in.size(0), N = a_in.size(1), M = b_in.size(1), H = a_in.size(2);
  at::Tensor a = as_opmath(a_in), b = as_opmath(b_in), w = as_opmath(w_in), g = as_opmath(grad_in);
  const auto o = a.options();
  at::Tensor ga = need_a ? at::zeros({B, N, H}, o) : at::empty({0}, o);
  at::Tensor gb = need_b ? at::zeros({B, M, H}, o) : at::empty({0}, o);
  at::Tensor gw = need_w ? at::zeros({H}, o) : at::empty({0}, o);
  // R[v, i, h] = sum_j g_vij relu(x_vijh), row-local; dw sums it in row order below.
  at::Tensor R = need_w ? at::zeros({B * N, H}, o) : at::empty({0}, o);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pairwise_mlp_scores_backward", [&] {
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>();
    const scalar_t *pw = w.const_data_ptr<scalar_t>(), *pg = g.const_data_ptr<scalar_t>();
    if (need_a || need_w) {  // pass 1 over rows: da and R
      scalar_t* pga = need_a ? ga.data_ptr<scalar_t>() : nullptr;
      scalar_t* pr = need_w ? R.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, B * N, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> acc_m(H);
        for (int64_t row = begin; row < end; ++row) {
          std::fill(acc_m.begin(), acc_m.end(), scalar_t(0));
          const scalar_t* bv = pb + (row / N) * M * H;
          scalar_t* acc_r = pr != nullptr ? pr + row * H : nullptr;
          for (int64_t j = 0; j < M; ++j) {
            if (acc_r != nullptr)
              accumulate_row<scalar_t, true>(pa + row * H, bv + j * H, pg[row * M + j], H, acc_m.data(), acc_r);
            else
              accumulate_row<scalar_t, false>(pa + row * H, bv + j * H, pg[row * M + j], H, acc_m.data(), acc_r);
          }
          if (pga != nullptr)
            for (int64_t h = 0; h < H; ++h) pga[row * H + h] = pw[h] * acc_m[h];
        }
      });
    }
    if (need_b) {  // pass 2 over columns: db
      scalar_t* pgb = gb.data_ptr<scalar_t>();
      at::parallel_for(0, B * M, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> acc_m(H);
        for (int64_t col = begin; col < end; ++col) {
          std::fill(acc_m.begin(), acc_m.end(), scalar_t(0));
          const int64_t v = col / M, j = col % M;
          for (int64_t i = 0; i < N; ++i)
            accumulate_row<scalar_t, false>(pb + col * H, pa + (v * N + i) * H, pg[(v * N + i) * M + j], H,
                                            acc_m.data(), nullptr);
          for (int64_t h = 0; h < H; ++h) pgb[col * H + h] = pw[h] * acc_m[h];
        }
      });
    }
    if (need_w) {  // dw = R summed in row order, parallel over h only
      const scalar_t* pr = R.const_data_ptr<scalar_t>();
      scalar_t* pgw = gw.data_ptr<scalar_t>();
      at::parallel_for(0, H, 256, [&](int64_t begin, int64_t end) {
        for (int64_t row = 0; row < B * N; ++row)
          for (int64_t h = begin; h < end; ++h) pgw[h] += pr[row * H + h];
      });
    }
  });
  const auto dtype = a_in.scalar_type();
  return {ga.to(dtype), gb.to(dtype), gw.to(dtype)};
}

at::Tensor temporal_iou_cpu(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_spans("temporal_iou", "a", a_in);
  check_spans("temporal_iou", "b", b_in);
  TORCH_CHECK_VALUE(a_in.scalar_type() == b_in.scalar_type(), "temporal_iou: b must have the dtype of a");
  const int64_t P = a_in.size(0), Q = b_in.size(0);
  const bool integral = at::isIntegralType(a_in.scalar_type(), /*includeBool=*/false);
  const auto out_dtype = integral ? at::kFloat : a_in.scalar_type();
  if (P == 0 || Q == 0) return at::empty({P, Q}, a_in.options().dtype(out_dtype));
  if (integral) {
    at::Tensor a = a_in.to(at::kLong).contiguous(), b = b_in.to(at::kLong).contiguous();
    at::Tensor out = at::empty({P, Q}, a.options().dtype(at::kFloat));
    const int64_t *pa = a.const_data_ptr<int64_t>(), *pb = b.const_data_ptr<int64_t>();
    float* po = out.data_ptr<float>();
    at::parallel_for(0, P, 16, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p)
        for (int64_t q = 0; q < Q; ++q)
          po[p * Q + q] = static_cast<float>(span_iou_int(pa[2 * p], pa[2 * p + 1], pb[2 * q], pb[2 * q + 1]));
    });
    return out;
  }
  at::Tensor a = as_opmath(a_in), b = as_opmath(b_in);
  at::Tensor out = at::empty({P, Q}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "temporal_iou", [&] {
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, P, 16, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t s0 = pa[2 * p], e0 = pa[2 * p + 1];
        for (int64_t q = 0; q < Q; ++q) po[p * Q + q] = span_iou(s0, e0, pb[2 * q], pb[2 * q + 1]);
      }
    });
  });
  return out.to(out_dtype);
}

// The spans arrive as fp32 or fp64 (the wrapper upcasts half and converts ints to fp64).
at::Tensor span_nms_cpu(const at::Tensor& spans_in, const at::Tensor& scores_in, double iou_threshold,
                        const c10::optional<at::Tensor>& groups_in, int64_t max_keep) {
  check_spans("span_nms", "spans", spans_in);
  const int64_t M = spans_in.size(0);
  TORCH_CHECK_VALUE(scores_in.dim() == 1 && scores_in.size(0) == M, "span_nms: scores must be [M=", M, "], got ",
                    scores_in.sizes());
  TORCH_CHECK_VALUE(!std::isnan(iou_threshold), "span_nms: iou_threshold must not be NaN");
  if (groups_in.has_value())
    TORCH_CHECK_VALUE(groups_in->scalar_type() == at::kLong && groups_in->dim() == 1 && groups_in->size(0) == M,
                      "span_nms: groups must be int64 [M=", M, "]");
  const auto out_opts = spans_in.options().dtype(at::kLong);
  if (M == 0) return at::empty({0}, out_opts);
  at::Tensor scores = scores_in.to(at::kDouble).contiguous();
  const double* sc = scores.const_data_ptr<double>();
  // pi: stable sort by score descending, NaN as -inf; then stable by group (within a group pi order stays).
  auto key = [&](int64_t i) { return std::isnan(sc[i]) ? -std::numeric_limits<double>::infinity() : sc[i]; };
  std::vector<int64_t> pi(M);
  std::iota(pi.begin(), pi.end(), 0);
  std::stable_sort(pi.begin(), pi.end(), [&](int64_t x, int64_t y) { return key(x) > key(y); });
  std::vector<int64_t> by_group(pi);
  std::vector<int64_t> offsets = {0, M};
  if (groups_in.has_value()) {
    at::Tensor groups = groups_in->contiguous();
    const int64_t* gr = groups.const_data_ptr<int64_t>();
    std::stable_sort(by_group.begin(), by_group.end(), [&](int64_t x, int64_t y) { return gr[x] < gr[y]; });
    offsets = {0};
    for (int64_t k = 1; k < M; ++k)
      if (gr[by_group[k]] != gr[by_group[k - 1]]) offsets.push_back(k);
    offsets.push_back(M);
  }
  std::vector<uint8_t> keep(M, 0);
  AT_DISPATCH_FLOATING_TYPES(spans_in.scalar_type(), "span_nms", [&] {
    at::Tensor spans = spans_in.contiguous();
    const scalar_t* sp = spans.const_data_ptr<scalar_t>();
    const auto thr = static_cast<scalar_t>(iou_threshold);
    const int64_t n_groups = static_cast<int64_t>(offsets.size()) - 1;
    at::parallel_for(0, n_groups, 1, [&](int64_t g0, int64_t g1) {
      std::vector<scalar_t> kb, ke;  // the kept list, SoA
      for (int64_t g = g0; g < g1; ++g) {
        kb.clear();
        ke.clear();
        for (int64_t k = offsets[g]; k < offsets[g + 1]; ++k) {
          if (max_keep > 0 && static_cast<int64_t>(kb.size()) >= max_keep) break;
          const int64_t c = by_group[k];
          const scalar_t cb = sp[2 * c], ce = sp[2 * c + 1];
          bool suppressed = false;
          for (size_t t = 0; t < kb.size() && !suppressed; ++t) suppressed = span_iou(kb[t], ke[t], cb, ce) > thr;
          if (suppressed) continue;
          keep[c] = 1;
          kb.push_back(cb);
          ke.push_back(ce);
        }
      }
    });
  });
  std::vector<int64_t> kept;
  for (int64_t c : pi)
    if (keep[c]) kept.push_back(c);
  at::Tensor out = at::empty({static_cast<int64_t>(kept.size())}, out_opts);
  std::copy(kept.begin(), kept.end(), out.data_ptr<int64_t>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CPU, m) {
  m.impl("pairwise_mlp_scores_forward", &pairwise_mlp_scores_forward_cpu);
  m.impl("pairwise_mlp_scores_backward", &pairwise_mlp_scores_backward_cpu);
  m.impl("temporal_iou", &temporal_iou_cpu);
  m.impl("span_nms", &span_nms_cpu);
}

}  // namespace pyfastlab::vidvrd::cpu
