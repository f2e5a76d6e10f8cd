#pragma once
// Row kernels of the mixup ops, compiled once per CPU capability (baseline x86-64 and AVX2+FMA) and
// chosen at run time, like the continual and kd kernels (a wheel must not assume AVX2).
#include <ATen/core/Tensor.h>

namespace pyfastlab::mixup::cpu {

// The pairing every row kernel reads: partner p [B], per-row lam [B] in the opmath dtype of the
// data, and (backward only) the inverse lists inv(k) = {i : p_i = k} as a CSR in ascending i.
struct Pairs {
  const int64_t* partner = nullptr;
  at::Tensor lam;                            // opmath [B], contiguous
  const int64_t* inv_offsets = nullptr;      // [B + 1]
  const int64_t* inv_rows = nullptr;         // [B]
};

struct KernelTable {
  // out[i] = x[i] (lam 1), x[p_i] (lam 0), else lam x[i] + (1 - lam) x[p_i]; x, out [B, D] contiguous.
  void (*pair_mix_forward)(const at::Tensor& x, const Pairs& pairs, const at::Tensor& out);
  // grad_x [B, D] (x dtype); grad_lam opmath [B] (per row) or undefined.
  void (*pair_mix_backward)(const at::Tensor& grad, const at::Tensor& x, const Pairs& pairs,
                            const at::Tensor& grad_x, const at::Tensor& grad_lam);
  // Per-row loss and lse (opmath [B]) of the mixed logits, never stored as [B, C].
  void (*mce_forward)(const at::Tensor& z, const Pairs& pairs, const at::Tensor& target, const at::Tensor& loss,
                      const at::Tensor& lse);
  // w opmath [B] (row upstream); grad_z [B, C] (z dtype); grad_lam opmath [B] or undefined.
  void (*mce_backward)(const at::Tensor& w, const at::Tensor& z, const Pairs& pairs, const at::Tensor& target,
                       const at::Tensor& lse, const at::Tensor& grad_z, const at::Tensor& grad_lam);
  // gram [rows, cols] opmath = X[a0 + r] . X[b0 + c]; per row a the (max, sum exp(e - max)) of
  // e_ab = -t max(0, n_a + n_b - 2 g) over columns b > a, into row_max / row_sum (fp64 [rows]).
  void (*uniformity_rows_forward)(const at::Tensor& gram, const at::Tensor& norms, int64_t a0, int64_t b0,
                                  double t, const at::Tensor& row_max, const at::Tensor& row_sum);
  // gram [rows, N] in: X[a0 + r] . X[b]; out: p_ab = exp(e_ab - lse) (0 at b = a); r_a = sum_b p_ab.
  void (*uniformity_rows_backward)(const at::Tensor& gram, const at::Tensor& norms, int64_t a0, double t, double lse,
                                   const at::Tensor& r);
  const char* name;
};

const KernelTable* kernels_default();
const KernelTable* kernels_avx2();  // nullptr where not compiled
const KernelTable& kernels();

}  // namespace pyfastlab::mixup::cpu
