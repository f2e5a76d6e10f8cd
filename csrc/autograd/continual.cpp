// Autograd of the compiled continual ops, in C++: at continual-learning sizes (N <= 512,
// C <= 1000) a Python autograd.Function costs more than the kernels themselves.
//
// masked_cross_entropy's forward already returns the gradient for an upstream gradient of 1; the
// backward only rescales that buffer. A plain loss.backward() needs no rescale: on the CPU the
// buffer is handed over as it is; on CUDA it is rescaled in place on the device (no host sync)
// and its version bumped, so a second backward through the same graph is refused, never wrong.
// Under tracing (torch.compile, fake tensors) the functional backward op is used.
#include <ATen/ATen.h>
#include <ATen/FunctionalTensorWrapper.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include "pyfastlab/continual.h"

namespace pyfastlab::continual {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using CrossEntropySig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, int64_t, double,
    double, double, double, int64_t, int64_t, bool);
using ScaleInplaceSig = void(const at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
using ScaleSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
using SoftmaxSig = at::Tensor(const at::Tensor&, const OptTensor&, const OptTensor&, int64_t, double, double, double,
                              double, bool);
using SoftmaxBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                                      int64_t, double, double, bool);

// Values cannot be read on the host while tracing.
bool traced(const at::Tensor& a, const at::Tensor& b) {
  return at::areAnyTensorSubclassLike({a, b}) || at::functionalization::impl::isFunctionalTensor(a) ||
         at::functionalization::impl::isFunctionalTensor(b);
}

// The buffer's multiplier for sum / mean (CPU tensors: reading it costs nothing).
double host_scale(const at::Tensor& grad_loss, const at::Tensor& counts, int64_t reduction) {
  double scale = grad_loss.item<double>();
  if (reduction == kMean) {
    const int64_t* c = counts.const_data_ptr<int64_t>();
    scale *= static_cast<double>(std::max<int64_t>(c[0], 1)) / static_cast<double>(std::max<int64_t>(c[1], 1));
  }
  return scale;
}

struct MaskedCrossEntropyFunction : public torch::autograd::Function<MaskedCrossEntropyFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                               const OptTensor& active, const OptTensor& row_group, const OptTensor& weight,
                               int64_t mode, double mask_value, double offset, double old_grad_scale,
                               double new_grad_scale, int64_t ignore_index, int64_t reduction, bool compute_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<CrossEntropySig>("pyfastlab::masked_cross_entropy");
    auto [loss, row_loss, grad, counted, counts] =
        op.call(logits, target, active, row_group, weight, mode, mask_value, offset, old_grad_scale, new_grad_scale,
                ignore_index, reduction, compute_grad);
    ctx->save_for_backward({grad, row_loss, counted, counts});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["weight_dtype"] = weight.has_value() ? int64_t(weight->scalar_type()) : int64_t(-1);
    // needs_input_grad counts only the tensors passed: logits, target, active?, row_group?, weight?
    ctx->saved_data["weight_edge"] =
        weight.has_value() ? int64_t(2 + active.has_value() + row_group.has_value()) : int64_t(-1);
    ctx->mark_non_differentiable({row_loss, grad, counted, counts});
    ctx->set_materialize_grads(false);  // else autograd fills a zero [N, C] upstream for `grad`
    return {loss, row_loss, grad, counted, counts};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor buffer = saved[0];
    const at::Tensor &row_loss = saved[1], &counted = saved[2], &counts = saved[3];
    const at::Tensor& grad_loss = grad_outputs[0];
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    variable_list grads(13);
    if (!grad_loss.defined()) return grads;
    if (ctx->needs_input_grad(0)) {
      static auto scale = find_op<ScaleSig>("pyfastlab::masked_cross_entropy_backward");
      static auto scale_inplace = find_op<ScaleInplaceSig>("pyfastlab::masked_cross_entropy_backward_");
      if (traced(grad_loss, buffer)) {
        grads[0] = scale.call(grad_loss, buffer, counted, counts, reduction);
      } else if (buffer.is_cpu()) {
        const bool unit = reduction != kNone && host_scale(grad_loss, counts, reduction) == 1.0;
        grads[0] = unit ? buffer : scale.call(grad_loss, buffer, counted, counts, reduction);
      } else {
        scale_inplace.call(grad_loss, buffer, counted, counts, reduction);
        torch::autograd::impl::bump_version(buffer);
        grads[0] = buffer;
      }
    }
    const int64_t weight_edge = ctx->saved_data["weight_edge"].toInt();
    if (weight_edge >= 0 && ctx->needs_input_grad(weight_edge)) {  // dL/dw_i = c_i * r_i * l_i
      at::Tensor upstream = grad_loss.to(row_loss.scalar_type());
      if (reduction == kMean) upstream = upstream / counts.select(0, 1).clamp_min(1);
      const auto weight_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
      grads[4] = at::where(counted, upstream * row_loss, at::zeros_like(row_loss)).to(weight_dtype);
    }
    return grads;
  }
};

struct MaskedSoftmaxFunction : public torch::autograd::Function<MaskedSoftmaxFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const OptTensor& active,
                            const OptTensor& row_group, int64_t mode, double mask_value, double offset,
                            double old_grad_scale, double new_grad_scale, bool log) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<SoftmaxSig>("pyfastlab::masked_softmax");
    at::Tensor out = op.call(logits, active, row_group, mode, mask_value, offset, old_grad_scale, new_grad_scale, log);
    ctx->save_for_backward({out, active.value_or(at::Tensor()), row_group.value_or(at::Tensor())});
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["old_grad_scale"] = old_grad_scale;
    ctx->saved_data["new_grad_scale"] = new_grad_scale;
    ctx->saved_data["log"] = log;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto op = find_op<SoftmaxBackwardSig>("pyfastlab::masked_softmax_backward");
    const auto saved = ctx->get_saved_variables();
    const auto optional = [](const at::Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); };
    variable_list grads(9);
    grads[0] = op.call(grad_outputs[0], saved[0], optional(saved[1]), optional(saved[2]),
                       ctx->saved_data["mode"].toInt(), ctx->saved_data["old_grad_scale"].toDouble(),
                       ctx->saved_data["new_grad_scale"].toDouble(), ctx->saved_data["log"].toBool());
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_cross_entropy_autograd(
    const at::Tensor& logits, const at::Tensor& target, const OptTensor& active, const OptTensor& row_group,
    const OptTensor& weight, int64_t mode, double mask_value, double offset, double old_grad_scale,
    double new_grad_scale, int64_t ignore_index, int64_t reduction, bool compute_grad) {
  auto out = MaskedCrossEntropyFunction::apply(logits, target, active, row_group, weight, mode, mask_value, offset,
                                               old_grad_scale, new_grad_scale, ignore_index, reduction, compute_grad);
  return {out[0], out[1], out[2], out[3], out[4]};
}

at::Tensor masked_softmax_autograd(const at::Tensor& logits, const OptTensor& active, const OptTensor& row_group,
                                   int64_t mode, double mask_value, double offset, double old_grad_scale,
                                   double new_grad_scale, bool log) {
  return MaskedSoftmaxFunction::apply(logits, active, row_group, mode, mask_value, offset, old_grad_scale,
                                      new_grad_scale, log);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, Autograd, m) {
  m.impl("masked_cross_entropy", &masked_cross_entropy_autograd);
  m.impl("masked_softmax", &masked_softmax_autograd);
}

}  // namespace pyfastlab::continual
