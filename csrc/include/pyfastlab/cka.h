#pragma once
// Shared pieces of the CKA ops (distill.md 3.1-3.6): argument checks, the choice of formulation,
// the U-centring entry, and the device-generic host code (feature form, pair GEMMs of
// cka_matrix) that the CPU and CUDA backends both call.
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace pyfastlab::cka {

// Gram form costs 2n^2(p+q) per problem, feature form 2n(p^2+q^2+pq); the debiased estimator
// always takes the Gram form (its feature-form backward is not implemented).
inline bool use_gram_form(int64_t n, int64_t p, int64_t q, bool debiased) {
  return debiased || n * (p + q) <= p * p + q * q + p * q;
}

// Entry (i, j) of the projected Gram C(K) from the centred Gram kc_ij and s_i = kc_ii:
// biased C(K) = Kc; debiased (U-centring of 3.1) Kc_ij + (s_i + s_j)/(n-2) - S/((n-1)(n-2)),
// zero on the diagonal. inv = 1/(n-2), total_term = S/((n-1)(n-2)).
template <typename T>
C10_HOST_DEVICE inline T projected(T kc, T s_i, T s_j, bool diagonal, bool debiased, T inv, T total_term) {
  if (!debiased) return kc;
  return diagonal ? T(0) : kc + (s_i + s_j) * inv - total_term;
}

inline void check_side(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK_VALUE(t.dim() == 3, op, ": ", name, " must be 3-D [B, n, d] here, got ", t.dim(), "-D");
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating, got ",
                    t.scalar_type());
  TORCH_CHECK_VALUE(t.size(2) > 0, op, ": ", name, " has no features (d = 0)");
}

inline void check_pair(const at::Tensor& x, const at::Tensor& y, bool debiased, const char* op) {
  check_side(x, "x", op);
  check_side(y, "y", op);
  TORCH_CHECK_VALUE(y.scalar_type() == x.scalar_type(), op, ": y must have the dtype of x (", x.scalar_type(), ")");
  TORCH_CHECK_VALUE(y.device() == x.device(), op, ": y is on ", y.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(y.size(0) == x.size(0) && y.size(1) == x.size(1), op, ": y must be [B=", x.size(0),
                    ", n=", x.size(1), ", q], got ", y.sizes());
  const int64_t min_n = debiased ? 4 : 2;
  TORCH_CHECK_VALUE(x.size(1) >= min_n, op, ": x needs n >= ", min_n, " rows", debiased ? " (debiased)" : "",
                    ", got n = ", x.size(1));
}

inline void check_layers(at::TensorList xs, at::TensorList ys, bool debiased, const char* op) {
  TORCH_CHECK_VALUE(!xs.empty() && !ys.empty(), op, ": xs and ys must each hold at least one layer");
  const at::Tensor& first = xs[0];
  const int64_t min_n = debiased ? 4 : 2;
  for (const auto* list : {&xs, &ys}) {
    const char* name = list == &xs ? "xs" : "ys";
    for (const at::Tensor& t : *list) {
      TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) > 0, op, ": every member of ", name,
                        " must be 2-D [n, d] with d > 0, got ", t.sizes());
      TORCH_CHECK_VALUE(t.size(0) == first.size(0), op, ": every member of ", name, " must have n = ",
                        first.size(0), " rows, got ", t.size(0));
      TORCH_CHECK_VALUE(t.scalar_type() == first.scalar_type() && t.device() == first.device(), op,
                        ": every member of ", name, " must have the dtype and device of xs[0]");
    }
  }
  TORCH_CHECK_VALUE(first.size(0) >= min_n, op, ": xs needs n >= ", min_n, " rows, got n = ", first.size(0));
}

// ---- device-generic host code (csrc/cka_composite.cpp) ---------------------------------------

// Biased feature form (3.2) of x [B, n, p], y [B, n, q]: (cka [B] in x's dtype, stats [B, 3]).
// fp64_sums: the A and beta^2 reductions in fp64 (CPU), else in the opmath type.
std::tuple<at::Tensor, at::Tensor> feature_forward(const at::Tensor& x, const at::Tensor& y, bool fp64_sums);

// Biased feature-form gradients (3.3): (grad_x or [0], grad_y or [0]).
std::tuple<at::Tensor, at::Tensor> feature_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                                                    const at::Tensor& stats, bool need_x, bool need_y);

// CKA [L, M] = Gx Gy^T over the flattened normalised Grams (one GEMM), NaN where a side is degenerate.
at::Tensor pair_cka(const at::Tensor& gx, const at::Tensor& gy, const at::Tensor& beta_x, const at::Tensor& beta_y,
                    at::ScalarType out_dtype);

// Per-layer terms of the cka_matrix backward (3.6) for side x (for y: grad and cka transposed, the
// sides swapped): W [L, n, n] = sum_m G_lm V_hat_m (one GEMM) and c [L] = sum_m G_lm CKA_lm, with
// degenerate pairs (a zero beta) contributing nothing, so masking their NaN upstream works.
std::tuple<at::Tensor, at::Tensor> pair_backward_terms(const at::Tensor& grad, const at::Tensor& cka,
                                                       const at::Tensor& gy, const at::Tensor& beta_x,
                                                       const at::Tensor& beta_y);

// dX_l for every layer of one side from the terms above; each device has its own.
using LayerGradients = std::vector<at::Tensor> (*)(at::TensorList layers, const at::Tensor& w, const at::Tensor& c,
                                                   const at::Tensor& own, const at::Tensor& beta);

// The whole cka_matrix backward for upstream grad [L, M]: a side not asked for is an empty list.
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> matrix_backward(
    const at::Tensor& grad, at::TensorList xs, at::TensorList ys, const at::Tensor& cka, const at::Tensor& gx,
    const at::Tensor& gy, const at::Tensor& beta_x, const at::Tensor& beta_y, bool need_x, bool need_y,
    LayerGradients layer_gradients);

}  // namespace pyfastlab::cka
