// Autograd of the compiled kd_loss, in C++, and its backward op for every backend.
//
// kd_loss_forward returns, beside the loss, the gradient of each row's loss for a row upstream of
// 1 (before the 1/N_valid of batchmean). The backward scales that buffer by the upstream gradient
// into a new tensor, never in place: a second backward through the same graph must see the
// buffer unchanged (spec distill.md 6.2). Only the student gets a gradient.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "pyfastlab/kd_loss.h"

namespace pyfastlab::kd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

using ForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const OptTensor&, double, double, double, int64_t, int64_t, bool);
using BackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);

// grad * s_i with s_i = v_i * (upstream_i | upstream | upstream / max(N_valid, 1)): an O(N)
// vector of row scales, then one fused multiply over [N, C] written in the student dtype.
// Ignored rows take a selected 0, so a NaN upstream never reaches them.
at::Tensor kd_loss_backward(const at::Tensor& grad_loss, const at::Tensor& grad, const at::Tensor& valid,
                            const at::Tensor& n_valid, int64_t reduction) {
  TORCH_CHECK(grad.dim() == 2, "kd_loss_backward: the forward ran without compute_grad (no gradient buffer)");
  const int64_t N = grad.size(0);
  const auto opmath_dtype = at::toOpMathType(grad.scalar_type());
  at::Tensor scale = grad_loss.to(opmath_dtype);
  if (reduction == kNone) {
    TORCH_CHECK_VALUE(scale.numel() == N, "kd_loss_backward: grad_loss must have N=", N,
                      " elements for reduction='none'");
    scale = scale.reshape({N});
  } else if (reduction == kMean) {
    scale = scale / n_valid.clamp_min(1).to(opmath_dtype);
  }
  scale = at::where(valid, scale, at::zeros({}, scale.options()));
  at::Tensor out = at::empty({N, grad.size(1)}, grad.options());
  at::mul_out(out, grad, scale.unsqueeze(1));
  return out;
}

struct KDLossFunction : public torch::autograd::Function<KDLossFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher,
                               const OptTensor& target, double temperature, double soft_weight, double hard_weight,
                               int64_t ignore_index, int64_t reduction, bool compute_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("pyfastlab::kd_loss_forward", "").typed<ForwardSig>();
    auto [loss, grad, valid, n_valid] = op.call(student, teacher, target, temperature, soft_weight, hard_weight,
                                                ignore_index, reduction, compute_grad);
    ctx->save_for_backward({grad, valid, n_valid});
    ctx->saved_data["reduction"] = reduction;
    ctx->mark_non_differentiable({grad, valid, n_valid});
    ctx->set_materialize_grads(false);  // else autograd fills a zero [N, C] upstream for `grad`
    return {loss, grad, valid, n_valid};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list grads(9);  // the teacher, like every other input, gets None
    if (!grad_outputs[0].defined() || !ctx->needs_input_grad(0)) return grads;
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("pyfastlab::kd_loss_backward", "").typed<BackwardSig>();
    const auto saved = ctx->get_saved_variables();
    grads[0] = op.call(grad_outputs[0], saved[0], saved[1], saved[2], ctx->saved_data["reduction"].toInt());
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kd_loss_forward_autograd(
    const at::Tensor& student, const at::Tensor& teacher, const OptTensor& target, double temperature,
    double soft_weight, double hard_weight, int64_t ignore_index, int64_t reduction, bool compute_grad) {
  auto out = KDLossFunction::apply(student, teacher, target, temperature, soft_weight, hard_weight, ignore_index,
                                   reduction, compute_grad);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CompositeExplicitAutograd, m) { m.impl("kd_loss_backward", &kd_loss_backward); }

TORCH_LIBRARY_IMPL(pyfastlab, Autograd, m) { m.impl("kd_loss_forward", &kd_loss_forward_autograd); }

}  // namespace pyfastlab::kd
