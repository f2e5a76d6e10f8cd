#pragma once
// Row kernels of kd_loss, compiled once per CPU capability (baseline x86-64 and AVX2+FMA) and
// chosen at run time, like the continual kernels (a wheel must not assume AVX2).
#include <ATen/core/Tensor.h>

namespace pyfastlab::kd::cpu {

struct RowArgs {
  at::Tensor student, teacher, target;  // contiguous [N, C], [N, C]; target int64 [N] or undefined
  double temperature = 4, soft_weight = 1, hard_weight = 0;
  int64_t ignore_index = -100;
  // outputs, every row written by the kernel
  at::Tensor row_loss;  // opmath [N]: v_i * l_i
  at::Tensor valid;     // bool [N]: v_i
  at::Tensor grad;      // [N, C] student dtype, gradient of v_i * l_i (row upstream 1), or undefined
};

struct KernelTable {
  void (*rows)(const RowArgs&);
  const char* name;
};

const KernelTable* kernels_default();
const KernelTable* kernels_avx2();  // nullptr where not compiled
// The best table this CPU supports (ATEN_CPU_CAPABILITY=default forces the baseline).
const KernelTable& kernels();

}  // namespace pyfastlab::kd::cpu
