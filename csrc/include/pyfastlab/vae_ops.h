#pragma once
// Shared pieces of the VAE-family ops (spec vae.md 3.1-3.4) used by the CPU and the CUDA kernels:
// argument checks (the Python wrappers validate first and promote dtypes, so kernels see fp32 or
// fp64 contiguous inputs) and the stable Daleckii-Krein divided difference.
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <tuple>

namespace pyfastlab::vae {

inline void check_square_batch(const char* op, const char* name, const at::Tensor& a) {
  TORCH_CHECK_VALUE(a.dim() >= 2 && a.size(-1) == a.size(-2), op, ": ", name,
                    " must be [..., n, n] square matrices, got ", a.sizes());
  TORCH_CHECK_VALUE(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble, op, ": ", name,
                    " must be float32 or float64 here (the wrapper upcasts half types), got ", a.scalar_type());
}

inline void check_same(const char* op, const char* name, const at::Tensor& x, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(x.scalar_type() == ref.scalar_type(), op, ": ", name, " must have dtype ", ref.scalar_type(),
                    ", got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), ", got ", x.device());
}

// z [B, n] against the stacked factors w [U, K, n, n] of ipe_transform (forward and backward).
inline void check_ipe(const char* op, const at::Tensor& z, const at::Tensor& w) {
  TORCH_CHECK_VALUE(w.dim() == 4 && w.size(2) == w.size(3), op, ": w must be [U, K, n, n], got ", w.sizes());
  TORCH_CHECK_VALUE(z.dim() == 2 && z.size(1) == w.size(3), op, ": z must be [B, n = ", w.size(3), "], got ",
                    z.sizes());
  check_square_batch(op, "w", w);
  check_same(op, "z", z, w);
}

// The incoming gradient of a backward: ref's dtype, device and shape.
inline void check_grad_like(const char* op, const char* name, const at::Tensor& grad, const at::Tensor& ref) {
  check_same(op, name, grad, ref);
  TORCH_CHECK_VALUE(grad.sizes() == ref.sizes(), op, ": ", name, " must have the shape ", ref.sizes(), ", got ",
                    grad.sizes());
}

// grad_z_hat [U, B, n] of ipe_transform's backward, against z [B, n] and the factors x [U, K, n, n].
inline void check_ipe_backward(const char* op, const at::Tensor& grad_z_hat, const at::Tensor& z,
                               const at::Tensor& x) {
  check_ipe(op, z, x);
  const int64_t U = x.size(0), n = x.size(2), B = z.size(0);
  TORCH_CHECK_VALUE(grad_z_hat.sizes() == at::IntArrayRef({U, B, n}), op, ": grad_z_hat must be [", U, ", ", B, ", ",
                    n, "], got ", grad_z_hat.sizes());
}

// codebook [K, n, n], weights [P, K], z1 and z2 [P, n] of composite_symmetry, all of one dtype and device.
inline void check_composite(const char* op, const at::Tensor& codebook, const at::Tensor& weights,
                            const at::Tensor& z1, const at::Tensor& z2) {
  check_square_batch(op, "codebook", codebook);
  TORCH_CHECK_VALUE(codebook.dim() == 3, op, ": codebook must be [K, n, n], got ", codebook.sizes());
  const int64_t K = codebook.size(0), n = codebook.size(1);
  TORCH_CHECK_VALUE(weights.dim() == 2 && weights.size(1) == K, op, ": weights must be [P, K = ", K, "], got ",
                    weights.sizes());
  const int64_t P = weights.size(0);
  TORCH_CHECK_VALUE(z1.dim() == 2 && z1.size(0) == P && z1.size(1) == n, op, ": z1 must be [P = ", P, ", n = ", n,
                    "], got ", z1.sizes());
  TORCH_CHECK_VALUE(z2.sizes() == z1.sizes(), op, ": z2 must be [", P, ", ", n, "], got ", z2.sizes());
  check_same(op, "weights", weights, codebook);
  check_same(op, "z1", z1, codebook);
  check_same(op, "z2", z2, codebook);
}

// (Q, lam) of sym(w) for w [..., n, n] (contiguous), lam = NaN for matrices with a non-finite entry
// (csrc/vae_composite.cpp, ATen's batched eigh).
std::tuple<at::Tensor, at::Tensor> guarded_eigh(const at::Tensor& w);
// A = weights @ codebook_flat as [P, n, n]: one GEMM (K = 0 gives zeros).
at::Tensor combine_codebook(const at::Tensor& codebook, const at::Tensor& weights);

// F_ij = (e^li - e^lj) / (li - lj), F_ii = e^li, without cancellation at close eigenvalues:
// e^((li+lj)/2) sinhc((li-lj)/2), sinhc(d) = sinh(d)/d by its series below 1e-3; for |d| >= 1 the
// plain quotient (no cancellation there, and no overflow of sinh when the mean is very negative).
template <typename T>
C10_HOST_DEVICE inline T dk_weight(T li, T lj) {
  const T d = (li - lj) / T(2);
  const T ad = d < T(0) ? -d : d;
  if (ad < T(1e-3)) {
    const T d2 = d * d;
    return ::exp((li + lj) / T(2)) * (T(1) + d2 / T(6) + d2 * d2 / T(120));
  }
  if (ad < T(1)) return ::exp((li + lj) / T(2)) * (::sinh(d) / d);
  return (::exp(li) - ::exp(lj)) / (li - lj);
}

}  // namespace pyfastlab::vae
