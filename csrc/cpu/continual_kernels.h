#pragma once
// Row kernels of the continual ops, compiled once per CPU capability (baseline x86-64 and
// AVX2+FMA) and chosen at run time, as ATen's own kernels are: a wheel must not assume AVX2,
// and without it the exponentials run one lane at a time.
#include <ATen/core/Tensor.h>

#include "pyfastlab/continual.h"

namespace pyfastlab::continual::cpu {

struct CrossEntropyArgs {
  at::Tensor logits, target, weight;  // contiguous; weight in opmath or undefined
  MaskView mask;
  bool detach = false;
  double mask_value = 0, offset = 0, old_grad_scale = 0, new_grad_scale = 1;
  int64_t ignore_index = -100;
  double mean_coef = 1;  // 1 / n_pre for the mean, else 1
  // outputs, every row written by the kernel
  at::Tensor row_loss, row_out, counted, grad;  // grad empty: no gradient
};

struct SoftmaxArgs {
  at::Tensor logits, out;  // forward: logits -> out
  at::Tensor grad_out, dz;  // backward: (grad_out, out) -> dz
  MaskView mask;
  bool detach = false, log = false;
  double mask_value = 0, offset = 0, old_grad_scale = 0, new_grad_scale = 1;
};

struct KernelTable {
  void (*cross_entropy)(const CrossEntropyArgs&);
  void (*scale_rows)(at::Tensor& grad, const at::Tensor& counted, const at::Tensor& row_scale);
  void (*softmax_forward)(const SoftmaxArgs&);
  void (*softmax_backward)(const SoftmaxArgs&);
  void (*pgd_step)(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_clean, double eps,
                   double step_size, double lo, double hi);
  const char* name;
};

const KernelTable* kernels_default();
const KernelTable* kernels_avx2();  // nullptr where not compiled
// The best table this CPU supports (ATEN_CPU_CAPABILITY=default forces the baseline).
const KernelTable& kernels();

}  // namespace pyfastlab::continual::cpu
