// Autograd of the compiled pairwise_mlp_scores, in C++. The forward saves only its inputs; the
// backward op recomputes the relu mask (nothing of size [B, N, M, H] is ever stored) and returns
// only the gradients autograd asks for. bias is a Python float: no gradient.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace pyfastlab::vidvrd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double);
using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                   const at::Tensor&, const at::Tensor&, bool, bool,
                                                                   bool);

struct PairwiseMlpScoresFunction : public torch::autograd::Function<PairwiseMlpScoresFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b, const at::Tensor& w,
                            double bias) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("pyfastlab::pairwise_mlp_scores_forward", "")
                         .typed<ForwardSig>();
    ctx->save_for_backward({a, b, w});
    return op.call(a, b, w, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list grads(4);
    const bool need_a = ctx->needs_input_grad(0), need_b = ctx->needs_input_grad(1), need_w = ctx->needs_input_grad(2);
    if (!grad_outputs[0].defined() || !(need_a || need_b || need_w)) return grads;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("pyfastlab::pairwise_mlp_scores_backward", "")
                         .typed<BackwardSig>();
    const auto saved = ctx->get_saved_variables();
    auto [ga, gb, gw] = op.call(grad_outputs[0], saved[0], saved[1], saved[2], need_a, need_b, need_w);
    if (need_a) grads[0] = ga;
    if (need_b) grads[1] = gb;
    if (need_w) grads[2] = gw;
    return grads;
  }
};

at::Tensor pairwise_mlp_scores_forward_autograd(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w,
                                                double bias) {
  return PairwiseMlpScoresFunction::apply(a, b, w, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, Autograd, m) {
  m.impl("pairwise_mlp_scores_forward", &pairwise_mlp_scores_forward_autograd);
}

}  // namespace pyfastlab::vidvrd
