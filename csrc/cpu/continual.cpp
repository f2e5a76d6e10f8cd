// CPU entry points of the continual ops: argument checks, output allocation and the choice of
// row kernels (continual_kernels_impl.h) for this CPU. Registered for the CPU dispatch key.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "continual_kernels.h"
#include "pyfastlab/cpu_capability.h"
#include "pyfastlab/continual.h"

namespace pyfastlab::continual::cpu {

const KernelTable& kernels() {
  static const KernelTable* table = pick_cpu_kernels(&kernels_default, &kernels_avx2);
  return *table;
}

namespace {

void check_groups(const MaskView& mask, int64_t N, const char* op) {
  for (int64_t i = 0; i < N; ++i) {
    const int64_t g = mask.group_of(i);
    TORCH_CHECK_VALUE(mask.group_ok(g), op, ": row_group[", i, "] = ", g, " is outside [-1, ", mask.groups, ")");
  }
}

// Raises on a bad target or group and counts rows with a valid, active target (n_pre): the forward
// scales the gradient by 1 / n_pre for the mean, the backward corrects by n_pre / n.
int64_t count_valid_targets(const at::Tensor& target, const MaskView& mask, int64_t C, int64_t ignore_index) {
  const int64_t* y_ptr = target.const_data_ptr<int64_t>();
  int64_t n_pre = 0;
  for (int64_t i = 0; i < target.size(0); ++i) {
    const int64_t g = mask.group_of(i);
    TORCH_CHECK_VALUE(mask.group_ok(g), "masked_cross_entropy: row_group[", i, "] = ", g, " is outside [-1, ",
                      mask.groups, ")");
    const int64_t y = y_ptr[i];
    if (y == ignore_index) continue;
    TORCH_CHECK_VALUE(y >= 0 && y < C, "masked_cross_entropy: target[", i, "] = ", y, " is outside [0, ", C,
                      ") and is not ignore_index (", ignore_index, ")");
    const bool* arow = mask.row(g);
    n_pre += (arow == nullptr || arow[y]) ? 1 : 0;
  }
  return n_pre;
}

// Fixed blocks summed in a fixed order: bit-identical whatever the thread count.
template <typename opmath_t>
opmath_t blocked_sum(const opmath_t* x, int64_t n) {
  constexpr int64_t kBlock = 1024;
  opmath_t total = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    opmath_t part = 0;
    for (int64_t i = b; i < std::min(n, b + kBlock); ++i) part += x[i];
    total += part;
  }
  return total;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_cross_entropy_cpu(
    const at::Tensor& logits, const at::Tensor& target, const c10::optional<at::Tensor>& active,
    const c10::optional<at::Tensor>& row_group, const c10::optional<at::Tensor>& weight, int64_t mode,
    double mask_value, double offset, double old_grad_scale, double new_grad_scale, int64_t ignore_index,
    int64_t reduction, bool compute_grad) {
  constexpr const char* op = "masked_cross_entropy";
  check_logits(logits, op);
  check_mask(logits, active, row_group, op);
  check_scalars(mask_value, offset, mode, op);
  check_reduction(op, reduction);
  const int64_t N = logits.size(0), C = logits.size(1);
  TORCH_CHECK_VALUE(target.scalar_type() == at::kLong, op, ": target must be int64, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == N, op, ": target must be [N=", N, "], got ",
                    target.sizes());

  const ContiguousMask mask(active, row_group);
  CrossEntropyArgs args;
  args.logits = logits.contiguous();
  args.target = target.contiguous();
  const auto opmath_dtype = at::toOpMathType(logits.scalar_type());
  if (weight.has_value()) {
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == N, op, ": weight must be [N=", N, "], got ",
                      weight->sizes());
    args.weight = weight->to(opmath_dtype).contiguous();
  }
  args.mask = mask.view;
  args.detach = mode == kDetach;
  args.mask_value = mask_value;
  args.offset = offset;
  args.old_grad_scale = old_grad_scale;
  args.new_grad_scale = new_grad_scale;
  args.ignore_index = ignore_index;
  const int64_t n_pre = count_valid_targets(args.target, mask.view, C, ignore_index);
  args.mean_coef = reduction == kMean ? 1.0 / std::max<int64_t>(n_pre, 1) : 1.0;
  args.row_loss = at::empty({N}, logits.options().dtype(opmath_dtype));
  args.row_out = at::empty({N}, logits.options().dtype(opmath_dtype));
  args.counted = at::empty({N}, logits.options().dtype(at::kBool));
  args.grad = compute_grad ? at::empty({N, C}, logits.options()) : at::empty({0}, logits.options());
  kernels().cross_entropy(args);

  const bool* counted_ptr = args.counted.const_data_ptr<bool>();
  const int64_t n = std::count(counted_ptr, counted_ptr + N, true);
  at::Tensor counts = at::empty({3}, logits.options().dtype(at::kLong));
  auto* counts_ptr = counts.data_ptr<int64_t>();
  counts_ptr[0] = n_pre, counts_ptr[1] = n, counts_ptr[2] = 0;
  at::Tensor loss;
  if (reduction == kNone) {
    loss = args.row_out.to(logits.scalar_type());
  } else {
    AT_DISPATCH_FLOATING_TYPES(opmath_dtype, "masked_cross_entropy_reduce", [&] {
      scalar_t total = blocked_sum(args.row_out.const_data_ptr<scalar_t>(), N);
      if (reduction == kMean) total /= static_cast<scalar_t>(std::max<int64_t>(n, 1));
      loss = at::scalar_tensor(total, logits.options());  // rounded once to the logits dtype
    });
  }
  return {loss, args.row_loss, args.grad, args.counted, counts};
}

void masked_cross_entropy_backward_cpu(const at::Tensor& grad_loss, at::Tensor& grad, const at::Tensor& counted,
                                       const at::Tensor& counts, int64_t reduction) {
  constexpr const char* op = "masked_cross_entropy_backward_";
  if (grad.numel() == 0) return;
  TORCH_CHECK(grad.dim() == 2 && grad.is_contiguous(), op, ": grad buffer must be a contiguous [N, C] tensor");
  const int64_t N = grad.size(0);
  const auto opmath_dtype = at::toOpMathType(grad.scalar_type());
  at::Tensor row_scale;  // gbar_i (none), gbar (sum), gbar * n_pre / max(n, 1) (mean)
  if (reduction == kNone) {
    TORCH_CHECK_VALUE(grad_loss.numel() == N, op, ": grad_loss must have N=", N, " elements for reduction='none'");
    row_scale = grad_loss.to(opmath_dtype).contiguous().view({N});
  } else {
    const auto* c = counts.const_data_ptr<int64_t>();
    double s = grad_loss.item<double>();
    if (reduction == kMean) s *= static_cast<double>(std::max<int64_t>(c[0], 1)) / std::max<int64_t>(c[1], 1);
    if (s == 1.0) return;  // plain loss.backward(): the buffer already holds the gradient
    row_scale = at::full({1}, s, grad.options().dtype(opmath_dtype));
  }
  kernels().scale_rows(grad, counted.contiguous(), row_scale);
}

at::Tensor masked_softmax_cpu(const at::Tensor& logits, const c10::optional<at::Tensor>& active,
                              const c10::optional<at::Tensor>& row_group, int64_t mode, double mask_value,
                              double offset, double /*old_grad_scale*/, double /*new_grad_scale*/, bool log) {
  constexpr const char* op = "masked_softmax";
  check_logits(logits, op);
  check_mask(logits, active, row_group, op);
  check_scalars(mask_value, offset, mode, op);
  const ContiguousMask mask(active, row_group);
  check_groups(mask.view, logits.size(0), op);
  SoftmaxArgs args;
  args.logits = logits.contiguous();
  args.out = at::empty(logits.sizes(), logits.options());
  args.mask = mask.view;
  args.detach = mode == kDetach;
  args.log = log;
  args.mask_value = mask_value;
  args.offset = offset;
  kernels().softmax_forward(args);
  return args.out;
}

at::Tensor masked_softmax_backward_cpu(const at::Tensor& grad_out, const at::Tensor& out,
                                       const c10::optional<at::Tensor>& active,
                                       const c10::optional<at::Tensor>& row_group, int64_t mode,
                                       double old_grad_scale, double new_grad_scale, bool log) {
  constexpr const char* op = "masked_softmax_backward";
  check_logits(out, op);
  check_mask(out, active, row_group, op);
  TORCH_CHECK_VALUE(grad_out.sizes() == out.sizes(), op, ": grad_out must have the shape of out ", out.sizes());
  const ContiguousMask mask(active, row_group);
  check_groups(mask.view, out.size(0), op);
  SoftmaxArgs args;
  args.out = out.contiguous();
  args.grad_out = grad_out.to(out.scalar_type()).contiguous();
  args.dz = at::empty(out.sizes(), out.options());
  args.mask = mask.view;
  args.detach = mode == kDetach;
  args.log = log;
  args.old_grad_scale = old_grad_scale;
  args.new_grad_scale = new_grad_scale;
  kernels().softmax_backward(args);
  return args.dz;
}

void pgd_linf_step_cpu(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_clean, double eps,
                       double step_size, double lo, double hi) {
  check_pgd_args(x_adv, grad, x_clean);
  at::Tensor x = x_adv;
  kernels().pgd_step(x, grad, x_clean, eps, step_size, lo, hi);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CPU, m) {
  m.impl("masked_cross_entropy", &masked_cross_entropy_cpu);
  m.impl("masked_cross_entropy_backward_", &masked_cross_entropy_backward_cpu);
  m.impl("masked_softmax", &masked_softmax_cpu);
  m.impl("masked_softmax_backward", &masked_softmax_backward_cpu);
  m.impl("pgd_linf_step_", &pgd_linf_step_cpu);
}

}  // namespace pyfastlab::continual::cpu
