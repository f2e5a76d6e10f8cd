// CPU entry points of the mixup ops (spec mixup.md 3 and 6): argument checks, the partner range
// check and the inverse-partner CSR (a stable counting sort: O(B), deterministic, no atomics),
// per-row lam in opmath, fixed-order fp64 reductions, and the uniformity tiling (Gram tiles from
// BLAS, row kernels from mixup_kernels_impl.h). Nothing of size [B, C] or [N, N] is allocated,
// except the fp32 [B, C] scratch of the mixed cross-entropy backward (section 6).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "mixup_kernels.h"
#include "pyfastlab/cpu_capability.h"
#include "pyfastlab/mixup.h"

namespace pyfastlab::mixup::cpu {

const KernelTable& kernels() {
  static const KernelTable* table = pick_cpu_kernels(&kernels_default, &kernels_avx2);
  return *table;
}

namespace {

at::ScalarType opmath_of(const at::Tensor& x) { return at::toOpMathType(x.scalar_type()); }

// Pairs of a call: raises on a partner outside [0, B) (naming the row), lam as opmath [B], and the
// inverse CSR when `inverse` (offsets/rows owned by the caller's vectors).
Pairs make_pairs(const char* op, const at::Tensor& partner, const c10::optional<at::Tensor>& lam, double lam_scalar,
                 int64_t B, at::ScalarType opmath, bool inverse, std::vector<int64_t>& offsets,
                 std::vector<int64_t>& rows) {
  Pairs pairs;
  pairs.partner = partner.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < B; ++i) {
    const int64_t v = pairs.partner[i];
    TORCH_CHECK_VALUE(v >= 0 && v < B, op, ": partner[", i, "]=", v, " is out of range [0, ", B, ")");
  }
  const auto options = partner.options().dtype(opmath);
  pairs.lam = lam.has_value() ? lam->to(opmath).expand({B}).contiguous() : at::full({B}, lam_scalar, options);
  if (inverse) {
    offsets.assign(B + 1, 0);
    rows.resize(B);
    for (int64_t i = 0; i < B; ++i) ++offsets[pairs.partner[i] + 1];
    for (int64_t k = 0; k < B; ++k) offsets[k + 1] += offsets[k];
    std::vector<int64_t> next(offsets.begin(), offsets.end() - 1);
    for (int64_t i = 0; i < B; ++i) rows[next[pairs.partner[i]]++] = i;  // ascending i per list
    pairs.inv_offsets = offsets.data();
    pairs.inv_rows = rows.data();
  }
  return pairs;
}

// Sum of an opmath vector in fp64, in index order.
double ordered_sum(const at::Tensor& v) {
  at::Tensor d = v.to(at::kDouble).contiguous();
  const double* p = d.const_data_ptr<double>();
  double s = 0;
  for (int64_t i = 0; i < d.numel(); ++i) s += p[i];
  return s;
}

// grad_lam in lam's shape and dtype: per row, or summed for a 0-dim lam; empty when not asked.
at::Tensor lam_gradient(const at::Tensor& per_row, const c10::optional<at::Tensor>& lam, bool lam_grad,
                        const at::Tensor& like) {
  if (!lam_grad || !lam.has_value()) return at::empty({0}, like.options());
  if (lam->dim() == 0) return at::scalar_tensor(ordered_sum(per_row), lam->options());
  return per_row.to(lam->scalar_type());
}

at::Tensor pair_mix_cpu(const at::Tensor& x_in, const at::Tensor& partner_in, const c10::optional<at::Tensor>& lam,
                        double lam_scalar) {
  check_pair("pair_mix", "x", x_in, partner_in, lam);
  at::Tensor x = x_in.contiguous(), partner = partner_in.contiguous();
  const int64_t B = x.size(0);
  std::vector<int64_t> offsets, rows;
  const Pairs pairs = make_pairs("pair_mix", partner, lam, lam_scalar, B, opmath_of(x), false, offsets, rows);
  at::Tensor out = at::empty_like(x);
  if (out.numel() > 0) kernels().pair_mix_forward(x, pairs, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> pair_mix_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                         const at::Tensor& partner_in,
                                                         const c10::optional<at::Tensor>& lam, double lam_scalar,
                                                         bool lam_grad) {
  check_pair("pair_mix_backward", "x", x_in, partner_in, lam);
  check_pair_mix_grad(grad_in, x_in);
  at::Tensor x = x_in.contiguous(), partner = partner_in.contiguous();
  at::Tensor grad = grad_in.to(x.scalar_type()).contiguous();
  const int64_t B = x.size(0), D = x.size(1);
  std::vector<int64_t> offsets, rows;
  const Pairs pairs = make_pairs("pair_mix_backward", partner, lam, lam_scalar, B, opmath_of(x), true, offsets, rows);
  at::Tensor grad_x = at::empty_like(x);
  const bool want_lam = lam_grad && lam.has_value();
  at::Tensor per_row = want_lam ? at::zeros({B}, x.options().dtype(opmath_of(x))) : at::Tensor();
  if (B > 0 && D > 0) kernels().pair_mix_backward(grad, x, pairs, grad_x, per_row);
  return {grad_x, lam_gradient(per_row, lam, lam_grad, x)};
}

void check_targets_in_range(const at::Tensor& target, int64_t C) {
  const int64_t* y = target.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < target.numel(); ++i)
    TORCH_CHECK_VALUE(y[i] >= 0 && y[i] < C, "mixed_logits_cross_entropy: target[", i, "]=", y[i],
                      " is out of range [0, ", C, ")");
}

std::tuple<at::Tensor, at::Tensor> mixed_logits_cross_entropy_cpu(const at::Tensor& logits_in,
                                                                  const at::Tensor& partner_in,
                                                                  const c10::optional<at::Tensor>& lam,
                                                                  double lam_scalar, const at::Tensor& target_in,
                                                                  int64_t reduction) {
  const char* op = "mixed_logits_cross_entropy";
  check_pair(op, "logits", logits_in, partner_in, lam);
  check_target(op, logits_in, target_in);
  check_reduction(op, reduction);
  at::Tensor z = logits_in.contiguous(), partner = partner_in.contiguous(), target = target_in.contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  check_targets_in_range(target, C);
  std::vector<int64_t> offsets, rows;
  const Pairs pairs = make_pairs(op, partner, lam, lam_scalar, B, opmath_of(z), false, offsets, rows);
  const auto opt = z.options().dtype(opmath_of(z));
  at::Tensor row_loss = at::empty({B}, opt), lse = at::empty({B}, opt);
  if (B > 0) kernels().mce_forward(z, pairs, target, row_loss, lse);
  at::Tensor loss;
  if (reduction == kNone) {
    loss = row_loss.to(z.scalar_type());
  } else {
    double total = ordered_sum(row_loss);
    if (reduction == kMean) total = B > 0 ? total / static_cast<double>(B) : std::numeric_limits<double>::quiet_NaN();
    loss = at::scalar_tensor(total, z.options());
  }
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> mixed_logits_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& logits_in, const at::Tensor& partner_in,
    const c10::optional<at::Tensor>& lam, double lam_scalar, const at::Tensor& target_in, const at::Tensor& lse_in,
    int64_t reduction, bool lam_grad) {
  const char* op = "mixed_logits_cross_entropy_backward";
  check_pair(op, "logits", logits_in, partner_in, lam);
  check_target(op, logits_in, target_in);
  check_reduction(op, reduction);
  at::Tensor z = logits_in.contiguous(), partner = partner_in.contiguous(), target = target_in.contiguous();
  const int64_t B = z.size(0);
  const auto opmath = opmath_of(z);
  check_mixed_ce_saved(op, grad_loss, lse_in, B, reduction);
  std::vector<int64_t> offsets, rows;
  const Pairs pairs = make_pairs(op, partner, lam, lam_scalar, B, opmath, true, offsets, rows);
  // w_i: the row upstream (none: grad_i; sum: grad; mean: grad / B)
  at::Tensor w = grad_loss.to(opmath).reshape({-1}).expand({B}).contiguous();
  if (reduction == kMean && B > 0) w = w / static_cast<double>(B);
  at::Tensor lse = lse_in.to(opmath).contiguous();
  at::Tensor grad_z = at::empty_like(z);
  const bool want_lam = lam_grad && lam.has_value();
  at::Tensor per_row = want_lam ? at::zeros({B}, z.options().dtype(opmath)) : at::Tensor();
  if (B > 0) kernels().mce_backward(w, z, pairs, target, lse, grad_z, per_row);
  return {grad_z, lam_gradient(per_row, lam, lam_grad, z)};
}

// Rows per Gram tile: the [rows, N] opmath buffer stays near 8 M elements (O(N) per tile).
int64_t uniformity_tile_rows(int64_t N) { return std::clamp<int64_t>((int64_t{1} << 23) / N, 16, 256); }

std::tuple<at::Tensor, at::Tensor> uniformity_loss_cpu(const at::Tensor& x_in, double t) {
  check_uniformity("uniformity_loss", x_in, t);
  const int64_t N = x_in.size(0);
  at::Tensor X = x_in.to(opmath_of(x_in)).contiguous();
  at::Tensor norms = (X * X).sum(1).contiguous();
  const int64_t tile = uniformity_tile_rows(N);
  at::Tensor buf = at::empty({tile * N}, X.options());
  const auto dopt = X.options().dtype(at::kDouble);
  at::Tensor row_max = at::empty({N}, dopt), row_sum = at::empty({N}, dopt);
  for (int64_t a0 = 0; a0 < N; a0 += tile) {
    const int64_t rows = std::min(tile, N - a0), cols = N - a0;  // tiles right of the diagonal only
    at::Tensor gram = buf.narrow(0, 0, rows * cols).view({rows, cols});
    at::mm_out(gram, X.narrow(0, a0, rows), X.narrow(0, a0, cols).t());
    kernels().uniformity_rows_forward(gram, norms, a0, a0, t, row_max.narrow(0, a0, rows),
                                      row_sum.narrow(0, a0, rows));
  }
  // merge the per-row partials in fp64, in row order
  const double *pm = row_max.const_data_ptr<double>(), *ps = row_sum.const_data_ptr<double>();
  double M = -std::numeric_limits<double>::infinity();
  bool nan = false;
  for (int64_t a = 0; a < N; ++a) {
    nan = nan || std::isnan(pm[a]) || std::isnan(ps[a]);
    M = std::max(M, pm[a]);
  }
  double S = 0;
  for (int64_t a = 0; a < N; ++a)
    if (ps[a] > 0) S += ps[a] * std::exp(pm[a] - M);
  const double lse = nan ? std::numeric_limits<double>::quiet_NaN() : M + std::log(S);
  const double pairs = 0.5 * static_cast<double>(N) * static_cast<double>(N - 1);
  at::Tensor loss = at::scalar_tensor(lse - std::log(pairs), x_in.options());
  return {loss, at::scalar_tensor(lse, X.options())};
}

at::Tensor uniformity_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& x_in, double t,
                                        const at::Tensor& lse_in) {
  check_uniformity("uniformity_loss_backward", x_in, t);
  const int64_t N = x_in.size(0);
  at::Tensor X = x_in.to(opmath_of(x_in)).contiguous();
  at::Tensor norms = (X * X).sum(1).contiguous();
  const double lse = lse_in.item<double>(), g = grad.item<double>();
  at::Tensor out = at::empty_like(X);
  const int64_t tile = uniformity_tile_rows(N);
  at::Tensor buf = at::empty({tile * N}, X.options());
  at::Tensor r = at::empty({tile}, X.options());
  for (int64_t a0 = 0; a0 < N; a0 += tile) {  // row-owner: each tile writes only its own rows
    const int64_t rows = std::min(tile, N - a0);
    at::Tensor P = buf.narrow(0, 0, rows * N).view({rows, N});
    at::Tensor Xa = X.narrow(0, a0, rows), ra = r.narrow(0, 0, rows);
    at::mm_out(P, Xa, X.t());
    kernels().uniformity_rows_backward(P, norms, a0, t, lse, ra);
    at::Tensor o = out.narrow(0, a0, rows);
    at::mm_out(o, P, X);                               // sum_b p_ab x_b
    o.sub_(Xa * ra.unsqueeze(1)).mul_(2.0 * t * g);    // -2tg (r_a x_a - sum_b p_ab x_b)
  }
  return out.to(x_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CPU, m) {
  m.impl("pair_mix", &pair_mix_cpu);
  m.impl("pair_mix_backward", &pair_mix_backward_cpu);
  m.impl("mixed_logits_cross_entropy", &mixed_logits_cross_entropy_cpu);
  m.impl("mixed_logits_cross_entropy_backward", &mixed_logits_cross_entropy_backward_cpu);
  m.impl("uniformity_loss", &uniformity_loss_cpu);
  m.impl("uniformity_loss_backward", &uniformity_loss_backward_cpu);
}

}  // namespace pyfastlab::mixup::cpu
