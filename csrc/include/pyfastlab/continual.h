#pragma once
// Shared pieces of the continual-learning ops: argument checks and the resolved-mask view.
// Used by the CPU and the CUDA kernels alike, so both see the same contract.
#include <ATen/MemoryOverlap.h>
#include <ATen/TensorIterator.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>

#include "pyfastlab/reduction.h"

namespace pyfastlab::continual {

enum Mode : int64_t { kConst = 0, kDetach = 1 };

// The mask row a kernel reads for row i: active[row_group[i]] (-1: all active), or without
// row_group row i (G == N) or row 0 (G == 1). nullptr means "all classes active".
// Plain pointers, copied by value into CUDA kernels (device pointers there).
struct MaskView {
  const bool* active = nullptr;     // [G, C] contiguous, or nullptr
  const int64_t* row_group = nullptr;  // [N] or nullptr
  int64_t groups = 0;
  int64_t classes = 0;

  // Group index of row i; -1 = all active. Out-of-range values are reported by group_ok.
  C10_HOST_DEVICE inline int64_t group_of(int64_t i) const {
    if (active == nullptr) return -1;
    if (row_group != nullptr) return row_group[i];
    return groups == 1 ? 0 : i;
  }
  C10_HOST_DEVICE inline bool group_ok(int64_t g) const { return g >= -1 && g < groups; }
  C10_HOST_DEVICE inline const bool* row(int64_t g) const { return g < 0 ? nullptr : active + g * classes; }
};

inline void check_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK_VALUE(logits.dim() == 2, op, ": logits must be 2-D [N, C], got ", logits.dim(), "-D");
  TORCH_CHECK_VALUE(at::isFloatingType(logits.scalar_type()), op,
                    ": logits must be a floating tensor, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(1) > 0, op, ": logits must have at least one class (C = 0)");
}

// Checks active / row_group against logits [N, C] and returns their contiguous forms.
inline void check_mask(const at::Tensor& logits, const c10::optional<at::Tensor>& active,
                       const c10::optional<at::Tensor>& row_group, const char* op) {
  const int64_t N = logits.size(0), C = logits.size(1);
  if (!active.has_value()) {
    TORCH_CHECK_VALUE(!row_group.has_value(), op, ": row_group requires active");
    return;
  }
  const auto& a = *active;
  TORCH_CHECK_VALUE(a.scalar_type() == at::kBool, op, ": active must be bool, got ", a.scalar_type());
  TORCH_CHECK_VALUE(a.dim() == 2 && a.size(1) == C, op, ": active must be [G, C=", C, "], got ",
                    a.sizes());
  TORCH_CHECK_VALUE(a.device() == logits.device(), op, ": active is on ", a.device(),
                    " but logits are on ", logits.device());
  if (row_group.has_value()) {
    const auto& g = *row_group;
    TORCH_CHECK_VALUE(g.scalar_type() == at::kLong, op, ": row_group must be int64 here, got ",
                      g.scalar_type());
    TORCH_CHECK_VALUE(g.dim() == 1 && g.size(0) == N, op, ": row_group must be [N=", N, "], got ",
                      g.sizes());
    TORCH_CHECK_VALUE(g.device() == logits.device(), op, ": row_group is on ", g.device(),
                      " but logits are on ", logits.device());
  } else {
    TORCH_CHECK_VALUE(a.size(0) == 1 || a.size(0) == N, op, ": active has ", a.size(0),
                      " rows for N=", N, " logits rows: pass row_group");
  }
}

// Contiguous forms of active / row_group, kept alive for the kernels, and the view they read.
struct ContiguousMask {
  c10::optional<at::Tensor> active, row_group;
  MaskView view;

  ContiguousMask(const c10::optional<at::Tensor>& a, const c10::optional<at::Tensor>& g) {
    if (!a.has_value()) return;
    active = a->contiguous();
    view.active = active->data_ptr<bool>();
    view.groups = active->size(0);
    view.classes = active->size(1);
    if (g.has_value()) {
      row_group = g->contiguous();
      view.row_group = row_group->data_ptr<int64_t>();
    }
  }
};

// Shape and dtype checks of pgd_linf_step_ (the Python wrapper checks the scalars).
inline void check_pgd_args(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_clean) {
  constexpr const char* op = "pgd_linf_step_";
  TORCH_CHECK_VALUE(at::isFloatingType(x_adv.scalar_type()), op, ": x_adv must be floating, got ", x_adv.scalar_type());
  TORCH_CHECK_VALUE(grad.sizes() == x_adv.sizes() && x_clean.sizes() == x_adv.sizes(), op,
                    ": grad and x_clean must have the shape of x_adv ", x_adv.sizes());
  TORCH_CHECK_VALUE(grad.scalar_type() == x_adv.scalar_type() && x_clean.scalar_type() == x_adv.scalar_type(), op,
                    ": grad and x_clean must have the dtype of x_adv (", x_adv.scalar_type(), ")");
  TORCH_CHECK_VALUE(grad.device() == x_adv.device() && x_clean.device() == x_adv.device(), op,
                    ": grad and x_clean must be on the device of x_adv (", x_adv.device(), ")");
  // The wrapper tests overlap exactly; this catches what reaches the kernel without it (compiled
  // graphs): x_adv is written in place, so it may share memory with nothing it reads.
  TORCH_CHECK_VALUE(at::has_internal_overlap(x_adv) != at::MemOverlap::Yes, op,
                    ": x_adv has elements that share memory (e.g. an expanded tensor): it is written in place");
  const auto check_apart = [&](const at::Tensor& t, const char* name) {
    const auto status = at::get_overlap_status(x_adv, t);
    TORCH_CHECK_VALUE(status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial, op,
                      ": x_adv must not share memory with ", name, " (it is written in place)");
  };
  check_apart(grad, "grad");
  check_apart(x_clean, "x_clean");
}

// x_adv is written in place from (x_adv, grad, x_clean), any strides.
inline at::TensorIterator pgd_iterator(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_clean) {
  return at::TensorIteratorConfig()
      .add_output(x_adv)
      .add_const_input(x_adv)
      .add_const_input(grad)
      .add_const_input(x_clean)
      .build();
}

// The eager chain of one PGD step in opmath: t = x + a * sign(g) (sign(NaN) = NaN),
// u = min(max(t, x0 - e), x0 + e) NaN-propagating, then clamp(u, l, h). a * sign(g) is exact, so
// the result has the eager chain's bits whether or not the compiler contracts to an fma.
template <typename T>
C10_HOST_DEVICE inline T nan_max(T u, T v) {
  return (u != u || v != v) ? u + v : (u > v ? u : v);
}
template <typename T>
C10_HOST_DEVICE inline T nan_min(T u, T v) {
  return (u != u || v != v) ? u + v : (u < v ? u : v);
}
template <typename T>
C10_HOST_DEVICE inline T pgd_scalar(T x, T g, T x0, T a, T e, T l, T h) {
  const T s = g != g ? g : T((g > T(0)) - (g < T(0)));
  const T u = nan_min(nan_max(x + a * s, x0 - e), x0 + e);
  if (u != u) return u;
  const T lo_clamped = u < l ? l : u;
  return h < lo_clamped ? h : lo_clamped;
}

inline void check_scalars(double mask_value, double offset, int64_t mode, const char* op) {
  TORCH_CHECK_VALUE(mode == kConst || mode == kDetach, op, ": mode must be 0 (const) or 1 (detach)");
  TORCH_CHECK_VALUE(!std::isnan(mask_value) && mask_value != INFINITY, op,
                    ": mask_value must be finite or -inf, got ", mask_value);
  TORCH_CHECK_VALUE(std::isfinite(offset), op, ": offset must be finite, got ", offset);
}

}  // namespace pyfastlab::continual
