// CPU entry point of kd_loss_forward: argument and target checks, output allocation, the choice
// of row kernels (kd_kernels_impl.h) for this CPU and the fixed-order fp64 reduction of the rows.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "kd_kernels.h"
#include "pyfastlab/cpu_capability.h"
#include "pyfastlab/kd_loss.h"

namespace pyfastlab::kd::cpu {

const KernelTable& kernels() {
  static const KernelTable* table = pick_cpu_kernels(&kernels_default, &kernels_avx2);
  return *table;
}

namespace {

// Raises on a target outside [0, C) that is not ignore_index (as F.cross_entropy does) and
// returns N_valid, the rows that are not ignored.
int64_t count_valid(const at::Tensor& target, int64_t C, int64_t ignore_index) {
  const int64_t* y = target.const_data_ptr<int64_t>();
  int64_t n_valid = 0;
  for (int64_t i = 0; i < target.size(0); ++i) {
    if (y[i] == ignore_index) continue;
    TORCH_CHECK_VALUE(y[i] >= 0 && y[i] < C, "kd_loss: target[", i, "] = ", y[i], " is outside [0, ", C,
                ") and is not ignore_index (", ignore_index, ")");
    ++n_valid;
  }
  return n_valid;
}

// Fixed blocks summed in fp64 in a fixed order: bit-identical whatever the thread count.
template <typename opmath_t>
double blocked_sum(const opmath_t* x, int64_t n) {
  constexpr int64_t kBlock = 1024;
  double total = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    double part = 0;
    for (int64_t i = b; i < std::min(n, b + kBlock); ++i) part += static_cast<double>(x[i]);
    total += part;
  }
  return total;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kd_loss_forward_cpu(
    const at::Tensor& student, const at::Tensor& teacher, const c10::optional<at::Tensor>& target,
    double temperature, double soft_weight, double hard_weight, int64_t ignore_index, int64_t reduction,
    bool compute_grad) {
  check_args(student, teacher, target, temperature, soft_weight, hard_weight, reduction);
  const int64_t N = student.size(0), C = student.size(1);
  const auto opmath_dtype = at::toOpMathType(student.scalar_type());
  const auto opts = student.options();
  RowArgs args;
  args.student = student.contiguous();
  // The teacher is read only for the soft term.
  args.teacher = soft_weight != 0 ? teacher.contiguous() : args.student;
  args.temperature = temperature;
  args.soft_weight = soft_weight;
  args.hard_weight = hard_weight;
  args.ignore_index = ignore_index;
  int64_t n_valid = N;
  if (target.has_value()) {
    args.target = target->contiguous();
    n_valid = count_valid(args.target, C, ignore_index);
  }
  args.row_loss = at::empty({N}, opts.dtype(opmath_dtype));
  args.valid = at::empty({N}, opts.dtype(at::kBool));
  args.grad = compute_grad ? at::empty({N, C}, opts) : at::empty({0}, opts);
  kernels().rows(args);

  at::Tensor loss;
  if (reduction == kNone) {
    loss = args.row_loss.to(student.scalar_type());
  } else {
    AT_DISPATCH_FLOATING_TYPES(opmath_dtype, "kd_loss_reduce", [&] {
      double total = blocked_sum(args.row_loss.const_data_ptr<scalar_t>(), N);
      if (reduction == kMean) total /= static_cast<double>(std::max<int64_t>(n_valid, 1));
      loss = at::scalar_tensor(total, opts);  // rounded once to the student dtype
    });
  }
  return {loss, args.grad, args.valid, at::scalar_tensor(n_valid, opts.dtype(at::kLong))};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CPU, m) { m.impl("kd_loss_forward", &kd_loss_forward_cpu); }

}  // namespace pyfastlab::kd::cpu
