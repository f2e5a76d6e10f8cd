#pragma once
// Shared pieces of the mixup ops pair_mix, mixed_logits_cross_entropy and uniformity_loss (spec
// mixup.md 3.1-3.3): argument checks used by the CPU and the CUDA kernels alike, so both see the
// same contract.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>

#include "pyfastlab/reduction.h"

namespace pyfastlab::mixup {

// x [B, D] floating; partner int64 [B] on x's device; lam absent, 0-dim or [B] floating.
inline void check_pair(const char* op, const char* xname, const at::Tensor& x, const at::Tensor& partner,
                       const c10::optional<at::Tensor>& lam) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": ", xname, " must be 2-D [B, D], got ", x.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()), op, ": ", xname, " must be floating, got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(partner.scalar_type() == at::kLong && partner.dim() == 1 && partner.size(0) == x.size(0), op,
                    ": partner must be int64 [B=", x.size(0), "], got ", partner.scalar_type(), " ", partner.sizes());
  TORCH_CHECK_VALUE(partner.device() == x.device(), op, ": partner must be on the device of ", xname);
  if (lam.has_value()) {
    TORCH_CHECK_VALUE(at::isFloatingType(lam->scalar_type()), op, ": lam must be floating, got ", lam->scalar_type());
    TORCH_CHECK_VALUE(lam->dim() == 0 || (lam->dim() == 1 && lam->size(0) == x.size(0)), op,
                      ": lam must be 0-dim or [B=", x.size(0), "], got ", lam->sizes());
    TORCH_CHECK_VALUE(lam->device() == x.device(), op, ": lam must be on the device of ", xname);
  }
}

inline void check_target(const char* op, const at::Tensor& logits, const at::Tensor& target) {
  TORCH_CHECK_VALUE(logits.size(1) > 0, op, ": logits must have at least one class (C = 0)");
  TORCH_CHECK_VALUE(target.scalar_type() == at::kLong && target.dim() == 1 && target.size(0) == logits.size(0), op,
                    ": target must be int64 [B=", logits.size(0), "], got ", target.scalar_type(), " ",
                    target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), op, ": target must be on the device of logits");
}

// The saved or incoming tensors of the backwards: a grad of another shape, a short lse or a
// 1-element grad_loss with reduction none would be read out of bounds or broadcast silently.
inline void check_pair_mix_grad(const at::Tensor& grad, const at::Tensor& x) {
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes(), "pair_mix_backward: grad must have the shape of x ", x.sizes(),
                    ", got ", grad.sizes());
}

inline void check_mixed_ce_saved(const char* op, const at::Tensor& grad_loss, const at::Tensor& lse, int64_t B,
                                 int64_t reduction) {
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == B, op, ": lse must be [B=", B, "], got ", lse.sizes());
  TORCH_CHECK_VALUE(reduction != kNone || grad_loss.numel() == B, op, ": grad_loss must have B=", B, " elements");
}

inline void check_uniformity(const char* op, const at::Tensor& x, double t) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D [N, D], got ", x.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()), op, ": x must be floating, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.size(0) >= 2, op, ": needs at least 2 rows, got N = ", x.size(0));
  TORCH_CHECK_VALUE(std::isfinite(t) && t >= 0, op, ": t must be finite and >= 0, got ", t);
}

}  // namespace pyfastlab::mixup
