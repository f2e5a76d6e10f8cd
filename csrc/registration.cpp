// Every op schema of torch.ops.pyfastlab, in one place. Backends register their kernels in
// csrc/cpu/<family>.cpp and csrc/cuda/<family>.cu; Python adds fake kernels and autograd.
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "cpu/continual_kernels.h"
#include "pyfastlab/build_info.h"

TORCH_LIBRARY(pyfastlab, m) {
  // ---- continual: general masked softmax with stop-gradient -------------------------------
  // Resolved mask: `active` is [G, C] bool (or absent = all active); row i reads
  // active[row_group[i]] (-1 = all active) or, without row_group, row i (G == N) or row 0 (G == 1).
  // mode: 0 = const (masked entries = mask_value, no gradient), 1 = detach (sg(z) + offset).
  // reduction (every op): 0 = none, 1 = sum, 2 = mean (pyfastlab/reduction.h).
  // Outputs: loss (reduced, logits dtype), row_loss (opmath [N], unweighted, 0 if not counted),
  // grad ([N, C] gradient for upstream 1, or [0] when compute_grad is false), counted (bool [N]),
  // counts (int64 [3]: rows with a valid active target, counted rows, rows with a bad index).
  m.def(
      "masked_cross_entropy(Tensor logits, Tensor target, Tensor? active, Tensor? row_group, "
      "Tensor? weight, int mode, float mask_value, float offset, float old_grad_scale, "
      "float new_grad_scale, int ignore_index, int reduction, bool compute_grad) -> "
      "(Tensor loss, Tensor row_loss, Tensor grad, Tensor counted, Tensor counts)");
  // Scales the saved gradient buffer by the upstream gradient (rows not counted stay 0): in place
  // (eager CUDA: fwd + bwd touch N*C once each), or into a new tensor (CPU, torch.compile).
  m.def(
      "masked_cross_entropy_backward_(Tensor grad_loss, Tensor(a!) grad, Tensor counted, "
      "Tensor counts, int reduction) -> ()");
  m.def(
      "masked_cross_entropy_backward(Tensor grad_loss, Tensor grad, Tensor counted, "
      "Tensor counts, int reduction) -> Tensor");
  // masked_softmax takes the gradient scales only so that its autograd formula can see them.
  m.def(
      "masked_softmax(Tensor logits, Tensor? active, Tensor? row_group, int mode, "
      "float mask_value, float offset, float old_grad_scale, float new_grad_scale, bool log) -> Tensor");
  m.def(
      "masked_softmax_backward(Tensor grad_out, Tensor out, Tensor? active, Tensor? row_group, "
      "int mode, float old_grad_scale, float new_grad_scale, bool log) -> Tensor");
  m.def(
      "pgd_linf_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_clean, float eps, float step_size, "
      "float lo, float hi) -> ()");

  // ---- distill: kd_loss -------------------------------------------------------------------------
  // Rows [N, C] (the wrapper flattens the leading dims); target int64 [N] or absent.
  // reduction 2 is batchmean here: the sum over N_valid, the rows not ignored.
  // Outputs: loss (reduced, or [N] for none; student dtype), grad ([N, C] student dtype: the
  // gradient of each row's v_i l_i for a row upstream of 1, or [0] when compute_grad is false),
  // valid (bool [N]), n_valid (int64 scalar).
  m.def(
      "kd_loss_forward(Tensor student, Tensor teacher, Tensor? target, float temperature, "
      "float soft_weight, float hard_weight, int ignore_index, int reduction, bool compute_grad) -> "
      "(Tensor loss, Tensor grad, Tensor valid, Tensor n_valid)");
  // grad scaled by the upstream gradient into a new tensor (never in place: backward may run twice).
  m.def("kd_loss_backward(Tensor grad_loss, Tensor grad, Tensor valid, Tensor n_valid, int reduction) -> Tensor");
  // ---- end distill: kd_loss ---------------------------------------------------------------------
  // ---- distill: cka --------------------------------------------------------------------------
  // linear CKA of x [B, n, p] and y [B, n, q] (the wrapper flattens leading dims and gives both one
  // dtype). Gram form when debiased or n(p+q) <= p^2+q^2+pq, else the biased feature form.
  // Outputs: cka [B] (x dtype); stats [B, 3] opmath = (beta_x, beta_y, cka); u_hat, v_hat
  // [B, n, n] opmath = C(K)/beta, saved for the backward (Gram form with save), else [0].
  m.def(
      "linear_cka_forward(Tensor x, Tensor y, bool debiased, bool save) -> "
      "(Tensor cka, Tensor stats, Tensor u_hat, Tensor v_hat)");
  // Gradients for upstream grad [B]; a gradient not asked for comes back as [0].
  m.def(
      "linear_cka_backward(Tensor grad, Tensor x, Tensor y, Tensor stats, Tensor u_hat, Tensor v_hat, "
      "bool need_x, bool need_y) -> (Tensor grad_x, Tensor grad_y)");
  // All L x M pairs of 2-D layers xs[l] [n, p_l], ys[m] [n, q_m] (one dtype). Outputs: cka [L, M];
  // gx [L, n, n], gy [M, n, n] opmath = normalised projected Grams (0 for a degenerate layer);
  // beta_x [L], beta_y [M] opmath.
  m.def(
      "cka_matrix_forward(Tensor[] xs, Tensor[] ys, bool debiased) -> "
      "(Tensor cka, Tensor gx, Tensor gy, Tensor beta_x, Tensor beta_y)");
  // Gradients for upstream grad [L, M]; a side not asked for comes back as an empty list.
  m.def(
      "cka_matrix_backward(Tensor grad, Tensor[] xs, Tensor[] ys, Tensor cka, Tensor gx, Tensor gy, "
      "Tensor beta_x, Tensor beta_y, bool need_x, bool need_y) -> (Tensor[] grad_xs, Tensor[] grad_ys)");
  // ---- end distill: cka ----------------------------------------------------------------------
  // ---- vidvrd: viou ---------------------------------------------------------------------------
  // boxes [P, T, 4] and [Q, T, 4] (x1, y1, x2, y2; float32 or float64, one dtype), spans int64 [P, 2]
  // and [Q, 2] = [begin, end), clamped to the timeline. Output [P, Q] voluminal IoU in the boxes'
  // dtype, computed in fp64 with frame-ordered sums; pixel_inclusive adds 1 to widths and heights.
  m.def(
      "trajectory_viou(Tensor boxes_a, Tensor span_a, Tensor boxes_b, Tensor span_b, bool pixel_inclusive) "
      "-> Tensor");
  // evaluate's hit flags (CPU): trajectories flat, boxes float64 [N, 4], trajectory i on rows
  // offsets[i]..offsets[i+1] for frames begin[i].., one vIoU (float64 [K]) per pair (pair_a, pair_b).
  m.def(
      "trajectory_viou_pairs(Tensor boxes, Tensor offsets, Tensor begin, Tensor pair_a, Tensor pair_b, "
      "bool pixel_inclusive) -> Tensor");
  // ---- end vidvrd: viou -----------------------------------------------------------------------
  // ---- vidvrd: scores, tiou, nms --------------------------------------------------------------
  // pairwise_mlp_scores: a [B, N, H], b [B, M, H], w [H] (one floating dtype) -> s [B, N, M] (a dtype),
  // s = bias + sum_h w_h relu(a_ih + b_jh), computed without any [B, N, M, H] buffer.
  m.def("pairwise_mlp_scores_forward(Tensor a, Tensor b, Tensor w, float bias) -> Tensor");
  // Gradients for upstream grad [B, N, M]; one not asked for comes back as [0].
  m.def(
      "pairwise_mlp_scores_backward(Tensor grad, Tensor a, Tensor b, Tensor w, bool need_a, bool need_b, "
      "bool need_w) -> (Tensor grad_a, Tensor grad_b, Tensor grad_w)");
  // a [P, 2], b [Q, 2] spans [s, e) of one dtype -> IoU [P, Q] (float32 for integer spans).
  m.def("temporal_iou(Tensor a, Tensor b) -> Tensor");
  // spans [M, 2] fp32/fp64, scores [M], groups int64 [M] or absent -> kept indices (int64, score order).
  m.def("span_nms(Tensor spans, Tensor scores, float iou_threshold, Tensor? groups, int max_keep) -> Tensor");
  // ---- end vidvrd: scores, tiou, nms ----------------------------------------------------------
  // ---- mixup: pair_mix, mixed CE, uniformity ----------------------------------------------------
  // x [B, D] floating, partner int64 [B] (repeats allowed), lam absent (lam_scalar used), 0-dim or [B].
  // out[i] = lam_i x_i + (1 - lam_i) x_{p_i}, exactly x_i at lam 1 and x_{p_i} at lam 0.
  m.def("pair_mix(Tensor x, Tensor partner, Tensor? lam, float lam_scalar) -> Tensor");
  // grad_lam in lam's shape, or empty when lam_grad is false.
  m.def(
      "pair_mix_backward(Tensor grad, Tensor x, Tensor partner, Tensor? lam, float lam_scalar, bool lam_grad) "
      "-> (Tensor grad_x, Tensor grad_lam)");
  // CE of the mixed logits without storing them; lse opmath [B].
  m.def(
      "mixed_logits_cross_entropy(Tensor logits, Tensor partner, Tensor? lam, float lam_scalar, Tensor target, "
      "int reduction) -> (Tensor loss, Tensor lse)");
  m.def(
      "mixed_logits_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor partner, Tensor? lam, "
      "float lam_scalar, Tensor target, Tensor lse, int reduction, bool lam_grad) -> (Tensor grad_logits, "
      "Tensor grad_lam)");
  // log mean_{a<b} exp(-t ||x_a - x_b||^2), tiled (never [N, N]); lse opmath 0-dim.
  m.def("uniformity_loss(Tensor x, float t) -> (Tensor loss, Tensor lse)");
  m.def("uniformity_loss_backward(Tensor grad, Tensor x, float t, Tensor lse) -> Tensor");
  // ---- end mixup --------------------------------------------------------------------------------
  // ---- vae: expm, symmetric_expm, ipe_transform, composite_symmetry --------------------------
  // Batched matrix exponential a [..., n, n] (fp32/fp64; the wrapper upcasts half types) by
  // scaling and squaring with a Taylor approximant, degree and scaling chosen per matrix on the
  // device; the backward is the adjoint of the same products (same m and s): L_exp(a^T, grad).
  m.def("expm_forward(Tensor a) -> Tensor");
  m.def("expm_backward(Tensor grad, Tensor a) -> Tensor");
  // expm(sym(w)) through the symmetric eigendecomposition; q [..., n, n], lam [..., n] are saved for
  // the Daleckii-Krein backward (lam is NaN for a matrix with a non-finite entry).
  m.def("symmetric_expm_forward(Tensor w) -> (Tensor out, Tensor q, Tensor lam)");
  m.def("symmetric_expm_backward(Tensor grad, Tensor q, Tensor lam) -> Tensor");
  // z [B, n], w [U, K, n, n] -> z_hat [U, B, n], logdet [U]; saved for the backward: the factors
  // x = expm(sym(w)) [U, K, n, n], their products e [U, n, n], q and lam of every factor.
  m.def(
      "ipe_transform_forward(Tensor z, Tensor w) -> "
      "(Tensor z_hat, Tensor logdet, Tensor x, Tensor e, Tensor q, Tensor lam)");
  // A gradient not asked for comes back as [0].
  m.def(
      "ipe_transform_backward(Tensor grad_z_hat, Tensor grad_logdet, Tensor z, Tensor x, Tensor e, Tensor q, "
      "Tensor lam, bool need_z, bool need_w) -> (Tensor grad_z, Tensor grad_w)");
  // codebook [K, n, n], weights [P, K], z1, z2 [P, n] -> y1 = z1 expm(A_p), y2 = z2 expm(-A_p) with
  // A = weights @ codebook (returned, [P, n, n], for the backward).
  m.def(
      "composite_symmetry_forward(Tensor codebook, Tensor weights, Tensor z1, Tensor z2) -> "
      "(Tensor y1, Tensor y2, Tensor a)");
  m.def(
      "composite_symmetry_backward(Tensor grad_y1, Tensor grad_y2, Tensor codebook, Tensor weights, Tensor z1, "
      "Tensor z2, Tensor a, bool need_codebook, bool need_weights, bool need_z1, bool need_z2) -> "
      "(Tensor grad_codebook, Tensor grad_weights, Tensor grad_z1, Tensor grad_z2)");
  // ---- end vae -------------------------------------------------------------------------------
}

namespace {

// The out-of-place backward, for every backend: a copy rescaled by the in-place op.
at::Tensor masked_cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& grad,
                                         const at::Tensor& counted, const at::Tensor& counts,
                                         int64_t reduction) {
  at::Tensor out = grad.clone(at::MemoryFormat::Contiguous);
  static auto inplace = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("pyfastlab::masked_cross_entropy_backward_", "")
                            .typed<void(const at::Tensor&, at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, int64_t)>();
  inplace.call(grad_loss, out, counted, counts, reduction);
  return out;
}

// Which build of the CPU row kernels this machine runs (DEFAULT or AVX2).
PyObject* cpu_kernel_capability(PyObject*, PyObject*) {
  return PyUnicode_FromString(pyfastlab::continual::cpu::kernels().name);
}
PyMethodDef kMethods[] = {
    {"cpu_kernel_capability", cpu_kernel_capability, METH_NOARGS, "CPU row-kernel build in use"},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CompositeExplicitAutograd, m) {
  m.impl("masked_cross_entropy_backward", &masked_cross_entropy_backward);
}

// Module init: importing pyfastlab._C runs the static registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "pyfastlab compiled ops", -1, kMethods};
  PyObject* mod = PyModule_Create(&def);
  if (mod == nullptr) return nullptr;
  PyModule_AddStringConstant(mod, "torch_build_version", PFL_TORCH_BUILD_VERSION);
  PyModule_AddIntConstant(mod, "with_cuda", pyfastlab::kWithCuda ? 1 : 0);
  PyModule_AddStringConstant(mod, "cuda_archs", pyfastlab::kCudaArchs);
  PyModule_AddStringConstant(mod, "cuda_version", pyfastlab::kCudaVersion);
  return mod;
}
