#pragma once
// Shared pieces of kd_loss (spec distill.md 3.7): argument checks and the per-row weights, used by
// the CPU and the CUDA kernels alike so both see the same contract. The public wrapper flattens
// the leading dims, so kernels only ever see [N, C] logits and an [N] target.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>

#include "pyfastlab/reduction.h"

namespace pyfastlab::kd {

inline void check_args(const at::Tensor& student, const at::Tensor& teacher, const c10::optional<at::Tensor>& target,
                       double temperature, double soft_weight, double hard_weight, int64_t reduction) {
  constexpr const char* op = "kd_loss_forward";
  TORCH_CHECK_VALUE(student.dim() == 2, op, ": student_logits must be 2-D [N, C] here, got ", student.dim(), "-D");
  TORCH_CHECK_VALUE(at::isFloatingType(student.scalar_type()), op, ": student_logits must be floating, got ",
                    student.scalar_type());
  TORCH_CHECK_VALUE(teacher.sizes() == student.sizes(), op, ": teacher_logits must have the shape of student_logits ",
                    student.sizes(), ", got ", teacher.sizes());
  TORCH_CHECK_VALUE(teacher.scalar_type() == student.scalar_type(), op,
                    ": teacher_logits must have the dtype of student_logits (", student.scalar_type(), ")");
  TORCH_CHECK_VALUE(teacher.device() == student.device(), op, ": teacher_logits is on ", teacher.device(),
                    " but student_logits are on ", student.device());
  TORCH_CHECK_VALUE(student.size(1) > 0, op, ": student_logits must have at least one class (C = 0)");
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, op, ": temperature must be finite and > 0, got ",
                    temperature);
  TORCH_CHECK_VALUE(std::isfinite(soft_weight) && std::isfinite(hard_weight), op, ": weights must be finite");
  TORCH_CHECK_VALUE(student.size(1) > 1 || soft_weight == 0, op,
                    ": student_logits has C = 1 class: KL between one-class softmaxes is identically 0; "
                    "use a regression loss (e.g. MSE on the logits) or soft_weight=0");
  check_reduction(op, reduction);
  if (target.has_value()) {
    TORCH_CHECK_VALUE(target->scalar_type() == at::kLong, op, ": target must be int64 here, got ",
                      target->scalar_type());
    TORCH_CHECK_VALUE(target->dim() == 1 && target->size(0) == student.size(0), op, ": target must be [N=",
                      student.size(0), "], got ", target->sizes());
    TORCH_CHECK_VALUE(target->device() == student.device(), op, ": target is on ", target->device(),
                      " but student_logits are on ", student.device());
  } else {
    TORCH_CHECK_VALUE(hard_weight == 0, op, ": hard_weight != 0 needs a target");
  }
}

// A zero weight switches its term off (never 0 * inf = NaN): the teacher is read only when the
// soft term is on, the one-temperature student softmax only when the hard term is on.
template <typename opmath_t>
struct Weights {
  opmath_t inv_T;    // 1 / T
  opmath_t soft_T2;  // soft_weight * T^2: the loss factor of KL
  opmath_t soft_T;   // soft_weight * T: the gradient factor of (q - p)
  opmath_t hard;
  bool use_soft, use_hard;

  Weights(double temperature, double soft_weight, double hard_weight)
      : inv_T(static_cast<opmath_t>(1.0 / temperature)),
        soft_T2(static_cast<opmath_t>(soft_weight * temperature * temperature)),
        soft_T(static_cast<opmath_t>(soft_weight * temperature)),
        hard(static_cast<opmath_t>(hard_weight)),
        use_soft(soft_weight != 0),
        use_hard(hard_weight != 0) {}
};

}  // namespace pyfastlab::kd
