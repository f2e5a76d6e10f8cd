// Autograd of the compiled CKA ops, in C++ like the continual ops: the forward saves the
// normalised projected Grams (Gram form) or nothing but the stats (feature form), and the
// backward is its own registered op, so torch.compile and opcheck see dispatchable ops.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <vector>

namespace pyfastlab::cka {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using TensorVector = std::vector<at::Tensor>;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using ForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                              bool, bool);
using BackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
                                                       bool);
using MatrixSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(at::TensorList, at::TensorList,
                                                                                        bool);
using MatrixBackwardSig = std::tuple<TensorVector, TensorVector>(const at::Tensor&, at::TensorList, at::TensorList,
                                                                 const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, bool, bool);

struct LinearCkaFunction : public torch::autograd::Function<LinearCkaFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y, bool debiased,
                               bool save) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<ForwardSig>("pyfastlab::linear_cka_forward");
    auto [cka, stats, u_hat, v_hat] = op.call(x, y, debiased, save);
    ctx->save_for_backward({x, y, stats, u_hat, v_hat});
    ctx->mark_non_differentiable({stats, u_hat, v_hat});
    return {cka, stats, u_hat, v_hat};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto op = find_op<BackwardSig>("pyfastlab::linear_cka_backward");
    const auto saved = ctx->get_saved_variables();
    const bool need_x = ctx->needs_input_grad(0), need_y = ctx->needs_input_grad(1);
    auto [gx, gy] = op.call(grad_outputs[0], saved[0], saved[1], saved[2], saved[3], saved[4], need_x, need_y);
    return {need_x ? gx : at::Tensor(), need_y ? gy : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct CkaMatrixFunction : public torch::autograd::Function<CkaMatrixFunction> {
  static variable_list forward(AutogradContext* ctx, at::TensorList xs, at::TensorList ys, bool debiased) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<MatrixSig>("pyfastlab::cka_matrix_forward");
    auto [cka, gx, gy, beta_x, beta_y] = op.call(xs, ys, debiased);
    TensorVector saved(xs.begin(), xs.end());
    saved.insert(saved.end(), ys.begin(), ys.end());
    saved.insert(saved.end(), {cka, gx, gy, beta_x, beta_y});
    ctx->save_for_backward(saved);
    ctx->saved_data["layers_x"] = static_cast<int64_t>(xs.size());
    ctx->mark_non_differentiable({gx, gy, beta_x, beta_y});
    return {cka, gx, gy, beta_x, beta_y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto op = find_op<MatrixBackwardSig>("pyfastlab::cka_matrix_backward");
    const auto saved = ctx->get_saved_variables();
    const int64_t L = ctx->saved_data["layers_x"].toInt(), M = static_cast<int64_t>(saved.size()) - 5 - L;
    const TensorVector xs(saved.begin(), saved.begin() + L), ys(saved.begin() + L, saved.begin() + L + M);
    bool need_x = false, need_y = false;
    for (int64_t i = 0; i < L; ++i) need_x = need_x || ctx->needs_input_grad(i);
    for (int64_t i = 0; i < M; ++i) need_y = need_y || ctx->needs_input_grad(L + i);
    const auto* stats = &saved[L + M];
    auto [gxs, gys] = op.call(grad_outputs[0], xs, ys, stats[0], stats[1], stats[2], stats[3], stats[4], need_x,
                              need_y);
    variable_list grads(L + M + 1);
    for (int64_t i = 0; i < L; ++i) grads[i] = need_x && ctx->needs_input_grad(i) ? gxs[i] : at::Tensor();
    for (int64_t i = 0; i < M; ++i) grads[L + i] = need_y && ctx->needs_input_grad(L + i) ? gys[i] : at::Tensor();
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cka_forward_autograd(const at::Tensor& x,
                                                                                       const at::Tensor& y,
                                                                                       bool debiased, bool save) {
  auto out = LinearCkaFunction::apply(x, y, debiased, save);
  return {out[0], out[1], out[2], out[3]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cka_matrix_forward_autograd(
    at::TensorList xs, at::TensorList ys, bool debiased) {
  auto out = CkaMatrixFunction::apply(xs, ys, debiased);
  return {out[0], out[1], out[2], out[3], out[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, Autograd, m) {
  m.impl("linear_cka_forward", &linear_cka_forward_autograd);
  m.impl("cka_matrix_forward", &cka_matrix_forward_autograd);
}

}  // namespace pyfastlab::cka
