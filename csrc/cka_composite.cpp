// Device-generic host code of the CKA ops, written with ATen ops so that the CPU and the CUDA
// backends share it: the biased feature form (taken when p, q are small against n: it is GEMMs
// of p x p / q x p products and their norms) and the pair GEMMs of cka_matrix.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <limits>

#include "pyfastlab/cka.h"

namespace pyfastlab::cka {
namespace {

// Shifted by the first row before the mean: a constant column is then exactly 0 (a degenerate side,
// NaN), where the rounded mean of values near 1e30 would leave a residue of their ulp.
at::Tensor centred(const at::Tensor& t) {
  const at::Tensor w = t.to(at::toOpMathType(t.scalar_type()));
  const at::Tensor shifted = w - w.narrow(1, 0, 1);
  return shifted - shifted.mean(1, /*keepdim=*/true);
}

at::Tensor sum_squares(const at::Tensor& t, bool fp64) {
  return (fp64 ? t.to(at::kDouble) : t).square().sum({1, 2});
}

at::Tensor nan_like(const at::Tensor& t) {
  return at::full_like(t, std::numeric_limits<double>::quiet_NaN());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> feature_forward(const at::Tensor& x, const at::Tensor& y, bool fp64_sums) {
  const at::Tensor xc = centred(x), yc = centred(y);
  const at::Tensor a = sum_squares(at::bmm(yc.transpose(1, 2), xc), fp64_sums);
  const at::Tensor bx = sum_squares(at::bmm(xc.transpose(1, 2), xc), fp64_sums).sqrt();
  const at::Tensor by = sum_squares(at::bmm(yc.transpose(1, 2), yc), fp64_sums).sqrt();
  const at::Tensor den = bx * by;
  const at::Tensor cka = at::where(den == 0, nan_like(a), a / den);
  return {cka.to(x.scalar_type()), at::stack({bx, by, cka}, 1).to(xc.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> feature_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                                                    const at::Tensor& stats, bool need_x, bool need_y) {
  const at::Tensor xc = centred(x), yc = centred(y);
  const at::Tensor bx = stats.select(1, 0), by = stats.select(1, 1), cka = stats.select(1, 2);
  const at::Tensor g = grad.to(stats.scalar_type());
  const at::Tensor degenerate = (bx == 0).logical_or(by == 0);
  const at::Tensor zero = at::zeros_like(g);
  const at::Tensor cross = at::bmm(yc.transpose(1, 2), xc);  // Yc^T Xc [B, q, p]
  const auto column = [](const at::Tensor& t) { return t.view({-1, 1, 1}); };
  // dX = (2g / (bx by)) Yc (Yc^T Xc) - (2g cka / bx^2) Xc (Xc^T Xc); zero for a degenerate problem.
  const auto side = [&](const at::Tensor& own, const at::Tensor& other, const at::Tensor& cross_other_own,
                        const at::Tensor& beta_own) {
    const at::Tensor a = at::where(degenerate, zero, 2 * g / (bx * by));
    const at::Tensor b = at::where(degenerate, zero, -2 * g * cka / (beta_own * beta_own));
    const at::Tensor gram = at::bmm(own.transpose(1, 2), own);
    return at::bmm(other, cross_other_own) * column(a) + at::bmm(own, gram) * column(b);
  };
  at::Tensor gx = need_x ? side(xc, yc, cross, bx).to(x.scalar_type()) : at::empty({0}, x.options());
  at::Tensor gy = need_y ? side(yc, xc, cross.transpose(1, 2), by).to(y.scalar_type()) : at::empty({0}, y.options());
  return {gx, gy};
}

at::Tensor pair_cka(const at::Tensor& gx, const at::Tensor& gy, const at::Tensor& beta_x, const at::Tensor& beta_y,
                    at::ScalarType out_dtype) {
  const at::Tensor cka = at::mm(gx.flatten(1), gy.flatten(1).t());
  const at::Tensor degenerate = (beta_x == 0).unsqueeze(1).logical_or((beta_y == 0).unsqueeze(0));
  return at::where(degenerate, nan_like(cka), cka).to(out_dtype);
}

std::tuple<at::Tensor, at::Tensor> pair_backward_terms(const at::Tensor& grad, const at::Tensor& cka,
                                                       const at::Tensor& gy, const at::Tensor& beta_x,
                                                       const at::Tensor& beta_y) {
  const at::Tensor degenerate = (beta_x == 0).unsqueeze(1).logical_or((beta_y == 0).unsqueeze(0));
  const at::Tensor g = grad.to(gy.scalar_type());
  const at::Tensor zero = at::zeros_like(g);
  const at::Tensor gm = at::where(degenerate, zero, g);
  const at::Tensor c = (gm * at::where(degenerate, zero, cka.to(g.scalar_type()))).sum(1);
  const at::Tensor w = at::mm(gm, gy.flatten(1)).view({grad.size(0), gy.size(1), gy.size(2)});
  return {w, c};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> matrix_backward(
    const at::Tensor& grad, at::TensorList xs, at::TensorList ys, const at::Tensor& cka, const at::Tensor& gx,
    const at::Tensor& gy, const at::Tensor& beta_x, const at::Tensor& beta_y, bool need_x, bool need_y,
    LayerGradients layer_gradients) {
  std::vector<at::Tensor> grad_xs, grad_ys;
  if (need_x) {
    auto [w, c] = pair_backward_terms(grad, cka, gy, beta_x, beta_y);
    grad_xs = layer_gradients(xs, w, c, gx, beta_x);
  }
  if (need_y) {
    auto [w, c] = pair_backward_terms(grad.t(), cka.t(), gx, beta_y, beta_x);
    grad_ys = layer_gradients(ys, w, c, gy, beta_y);
  }
  return {grad_xs, grad_ys};
}

}  // namespace pyfastlab::cka
