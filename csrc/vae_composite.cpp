// Device-generic host code of the VAE ops, written with ATen ops so that the CPU and the CUDA
// backends share it: the guarded symmetric eigendecomposition (at::linalg_eigh: LAPACK syevd on
// the CPU, cuSOLVER on the GPU) and the codebook GEMM of composite_symmetry.
#include <ATen/ATen.h>

#include <limits>

#include "pyfastlab/vae_ops.h"

namespace pyfastlab::vae {

std::tuple<at::Tensor, at::Tensor> guarded_eigh(const at::Tensor& w) {
  // LAPACK fails to converge (and raises) on NaN: a matrix with a non-finite entry is replaced by
  // zeros before the call and gets lam = NaN afterwards, so its output and gradient are all NaN.
  const at::Tensor S = ((w + w.mT()) * 0.5).contiguous();
  const at::Tensor finite = at::isfinite(S).flatten(-2).all(-1);
  auto [lam, Q] = at::linalg_eigh(at::where(finite.unsqueeze(-1).unsqueeze(-1), S, at::zeros({}, S.options())));
  lam = at::where(finite.unsqueeze(-1), lam, std::numeric_limits<double>::quiet_NaN()).contiguous();
  return {Q.contiguous(), lam};
}

at::Tensor combine_codebook(const at::Tensor& codebook, const at::Tensor& weights) {
  const int64_t K = codebook.size(0), n = codebook.size(1), P = weights.size(0);
  return at::mm(weights.contiguous(), codebook.contiguous().reshape({K, n * n})).reshape({P, n, n});
}

}  // namespace pyfastlab::vae
