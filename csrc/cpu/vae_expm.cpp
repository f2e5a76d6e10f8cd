// CPU kernels of expm and composite_symmetry (spec vae.md 3.1, 3.4, 6): the scaling-and-squaring
// Taylor program of pyfastlab/expm_engine.h run per matrix inside one at::parallel_for over the
// batch, with per-thread padded scratch (vae_small_matrix.h). Custom kernels: the norm, the degree
// and scaling choice (per matrix, no grouping), the Paterson-Stockmeyer evaluation, the squarings,
// the adjoint recurrence, and composite_symmetry's +-exp, apply and rank-1 backward. Its codebook
// GEMMs (A = W G, and W_bar, G_bar) go through ordered_mm, not the BLAS: bit-identical results for
// any thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>

#include "pyfastlab/expm_engine.h"
#include "pyfastlab/vae_ops.h"
#include "ordered_gemm.h"
#include "vae_small_matrix.h"

namespace pyfastlab::vae::cpu {
namespace {

// Matrices per parallel task: at least ~64 kFLOP of products each (vae.md 6).
int64_t grain_for(int64_t n) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, 16 * n * n * n)); }

template <typename T, int LD>
ExpmPlan load_and_plan(SmallMatrices<T, LD>& w, const T* a, T sign) {
  w.load(w.slot(kX), a, sign);
  const ExpmPlan p = expm_plan<T>(w.norm1(w.slot(kX)));
  if (p.finite) w.ldexp_copy(w.slot(kX), w.slot(kX), -p.s);
  return p;
}

at::Tensor expm_forward_cpu(const at::Tensor& a_in) {
  check_square_batch("expm_forward", "a", a_in);
  const at::Tensor a = a_in.contiguous();
  at::Tensor out = at::empty_like(a);
  const int64_t n = a.size(-1), batch = n == 0 ? 0 : a.numel() / (n * n);
  if (batch == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "expm_forward_cpu", [&] {
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    with_padded_ld(n, [&]<int LD>() {
      at::parallel_for(0, batch, grain_for(n), [&](int64_t begin, int64_t end) {
        SmallMatrices<scalar_t, LD> w(static_cast<int>(n), kSlots);
        for (int64_t b = begin; b < end; ++b) {
          scalar_t* o = po + b * n * n;
          const ExpmPlan p = load_and_plan(w, pa + b * n * n, scalar_t(1));
          if (!p.finite) {
            std::fill(o, o + n * n, std::numeric_limits<scalar_t>::quiet_NaN());
            continue;
          }
          w.store(o, w.slot(expm_forward_program<scalar_t>(w, p)));
        }
      });
    });
  });
  return out;
}

// A_bar = L_exp(A^T, G_bar) by the adjoint of A's own forward (same m and s).
at::Tensor expm_backward_cpu(const at::Tensor& grad_in, const at::Tensor& a_in) {
  check_square_batch("expm_backward", "a", a_in);
  check_grad_like("expm_backward", "grad", grad_in, a_in);
  const at::Tensor a = a_in.contiguous(), g = grad_in.contiguous();
  at::Tensor out = at::empty_like(a);
  const int64_t n = a.size(-1), batch = n == 0 ? 0 : a.numel() / (n * n);
  if (batch == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "expm_backward_cpu", [&] {
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pg = g.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    with_padded_ld(n, [&]<int LD>() {
      at::parallel_for(0, batch, std::max<int64_t>(1, grain_for(n) / 3), [&](int64_t begin, int64_t end) {
        SmallMatrices<scalar_t, LD> w(static_cast<int>(n), kSlots);
        for (int64_t b = begin; b < end; ++b) {
          scalar_t* o = po + b * n * n;
          const ExpmPlan p = load_and_plan(w, pa + b * n * n, scalar_t(1));
          if (!p.finite) {
            std::fill(o, o + n * n, std::numeric_limits<scalar_t>::quiet_NaN());
            continue;
          }
          expm_forward_program<scalar_t>(w, p);
          w.load(w.slot(kG), pg + b * n * n);
          expm_adjoint_program<scalar_t>(w, p);
          w.store(o, w.slot(kXbar));
        }
      });
    });
  });
  return out;
}

void fill_nan(at::Tensor& t, int64_t row, int64_t n) {
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "fill_nan", [&] {
    scalar_t* p = t.data_ptr<scalar_t>() + row * n;
    std::fill(p, p + n, std::numeric_limits<scalar_t>::quiet_NaN());
  });
}

// (y1, y2, A): y1 = z1 expm(A_p), y2 = z2 expm(-A_p); A is returned for the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_symmetry_forward_cpu(const at::Tensor& codebook,
                                                                              const at::Tensor& weights,
                                                                              const at::Tensor& z1_in,
                                                                              const at::Tensor& z2_in) {
  check_composite("composite_symmetry_forward", codebook, weights, z1_in, z2_in);
  const int64_t K = codebook.size(0), n = codebook.size(1), P = weights.size(0);
  const at::Tensor A = pyfastlab::cpu::ordered_mm(weights, codebook.reshape({K, n * n})).reshape({P, n, n});
  const at::Tensor z1 = z1_in.contiguous(), z2 = z2_in.contiguous();
  at::Tensor y1 = at::empty_like(z1), y2 = at::empty_like(z2);
  if (P == 0 || n == 0) return {y1, y2, A};
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "composite_symmetry_forward_cpu", [&] {
    const scalar_t *pa = A.const_data_ptr<scalar_t>(), *p1 = z1.const_data_ptr<scalar_t>(),
                   *p2 = z2.const_data_ptr<scalar_t>();
    scalar_t *q1 = y1.data_ptr<scalar_t>(), *q2 = y2.data_ptr<scalar_t>();
    with_padded_ld(n, [&]<int LD>() {
      at::parallel_for(0, P, std::max<int64_t>(1, grain_for(n) / 2), [&](int64_t begin, int64_t end) {
        SmallMatrices<scalar_t, LD> w(static_cast<int>(n), kSlots);
        for (int64_t p = begin; p < end; ++p) {
          for (int sign = 1; sign >= -1; sign -= 2) {  // ||-A||_1 = ||A||_1: the same m and s for both
            const ExpmPlan plan = load_and_plan(w, pa + p * n * n, scalar_t(sign));
            at::Tensor& y = sign > 0 ? y1 : y2;
            if (!plan.finite) {
              fill_nan(y, p, n);
              continue;
            }
            const int e = expm_forward_program<scalar_t>(w, plan);
            w.vecmat((sign > 0 ? q1 : q2) + p * n, (sign > 0 ? p1 : p2) + p * n, w.slot(e), false);
          }
        }
      });
    });
  });
  return {y1, y2, A};
}

// Per pair: N = expm(-A) gives y2 = z2 N and z2_bar = y2_bar N^T; M = expm(A) gives z1_bar = y1_bar
// M^T; with M_bar = z1^T y1_bar and N_bar = z2^T y2_bar, the direction M_bar - N^T N_bar N^T =
// z1^T y1_bar - y2^T z2_bar (both rank 1) goes through one adjoint pass at A. Then two GEMMs.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_symmetry_backward_cpu(
    const at::Tensor& gy1_in, const at::Tensor& gy2_in, const at::Tensor& codebook, const at::Tensor& weights,
    const at::Tensor& z1_in, const at::Tensor& z2_in, const at::Tensor& A_in, bool need_codebook, bool need_weights,
    bool need_z1, bool need_z2) {
  check_composite("composite_symmetry_backward", codebook, weights, z1_in, z2_in);
  const at::Tensor z1 = z1_in.contiguous(), z2 = z2_in.contiguous(), A = A_in.contiguous();
  const at::Tensor gy1 = gy1_in.contiguous(), gy2 = gy2_in.contiguous();
  const int64_t P = A.size(0), n = A.size(1), K = codebook.size(0);
  at::Tensor gz1 = at::empty_like(z1), gz2 = at::empty_like(z2);
  const bool need_a = need_codebook || need_weights;
  at::Tensor gA = need_a ? at::empty_like(A) : at::empty({0}, A.options());
  if (P > 0 && n > 0) {
    AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "composite_symmetry_backward_cpu", [&] {
      const scalar_t *pa = A.const_data_ptr<scalar_t>(), *p1 = z1.const_data_ptr<scalar_t>(),
                     *p2 = z2.const_data_ptr<scalar_t>(), *g1 = gy1.const_data_ptr<scalar_t>(),
                     *g2 = gy2.const_data_ptr<scalar_t>();
      scalar_t *o1 = gz1.data_ptr<scalar_t>(), *o2 = gz2.data_ptr<scalar_t>();
      scalar_t* oa = need_a ? gA.data_ptr<scalar_t>() : nullptr;
      with_padded_ld(n, [&]<int LD>() {
        at::parallel_for(0, P, std::max<int64_t>(1, grain_for(n) / 4), [&](int64_t begin, int64_t end) {
          SmallMatrices<scalar_t, LD> w(static_cast<int>(n), kSlots);
          std::vector<scalar_t> y2(n);
          const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
          for (int64_t p = begin; p < end; ++p) {
            const ExpmPlan neg = load_and_plan(w, pa + p * n * n, scalar_t(-1));
            if (!neg.finite) {
              std::fill(o1 + p * n, o1 + (p + 1) * n, nan);
              std::fill(o2 + p * n, o2 + (p + 1) * n, nan);
              if (oa != nullptr) std::fill(oa + p * n * n, oa + (p + 1) * n * n, nan);
              continue;
            }
            const scalar_t* N = w.slot(expm_forward_program<scalar_t>(w, neg));
            w.vecmat(y2.data(), p2 + p * n, N, false);
            w.vecmat(o2 + p * n, g2 + p * n, N, true);
            const ExpmPlan pos = load_and_plan(w, pa + p * n * n, scalar_t(1));
            const scalar_t* M = w.slot(expm_forward_program<scalar_t>(w, pos));
            w.vecmat(o1 + p * n, g1 + p * n, M, true);
            if (oa == nullptr) continue;
            scalar_t* G = w.slot(kG);
            const int ld = w.ld();
            for (int64_t i = 0; i < n; ++i)
              for (int64_t j = 0; j < n; ++j)
                G[i * ld + j] = p1[p * n + i] * g1[p * n + j] - y2[i] * o2[p * n + j];
            expm_adjoint_program<scalar_t>(w, pos);
            w.store(oa + p * n * n, w.slot(kXbar));
          }
        });
      });
    });
  } else {
    gz1.zero_();
    gz2.zero_();
    if (need_a) gA.zero_();
  }
  at::Tensor gG = at::empty({0}, A.options()), gW = at::empty({0}, A.options());
  if (need_weights) gW = pyfastlab::cpu::ordered_mm(gA.reshape({P, n * n}), codebook.reshape({K, n * n}).t());
  if (need_codebook) gG = pyfastlab::cpu::ordered_mm(weights.t(), gA.reshape({P, n * n})).reshape({K, n, n});
  if (!need_z1) gz1 = at::empty({0}, A.options());
  if (!need_z2) gz2 = at::empty({0}, A.options());
  return {gG, gW, gz1, gz2};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CPU, m) {
  m.impl("expm_forward", &expm_forward_cpu);
  m.impl("expm_backward", &expm_backward_cpu);
  m.impl("composite_symmetry_forward", &composite_symmetry_forward_cpu);
  m.impl("composite_symmetry_backward", &composite_symmetry_backward_cpu);
}

}  // namespace pyfastlab::vae::cpu
