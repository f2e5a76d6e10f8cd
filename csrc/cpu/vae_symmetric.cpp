// CPU kernels of symmetric_expm and ipe_transform (spec vae.md 3.2, 3.3, 6).
// ATen calls: the batched symmetric eigendecomposition (at::linalg_eigh, LAPACK syevd), the
// symmetrisation and finiteness mask around it, and the two z GEMMs of ipe_transform (z_hat = z E_u
// and z_bar = sum_u Z_u E_u^T, E_bar_u = z^T Z_u). Custom kernels: E = Q diag(e^lam) Q^T, the
// Daleckii-Krein backward with the stable divided difference, the factor chains E_u = X_u1 ... X_uK
// and logdet from traces, and the prefix/suffix adjoint of the chains.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "pyfastlab/vae_ops.h"
#include "vae_small_matrix.h"

namespace pyfastlab::vae::cpu {
namespace {

int64_t batch_of(const at::Tensor& a) {
  const int64_t n = a.size(-1);
  return n == 0 ? 0 : a.numel() / (n * n);
}

// E = Q diag(e^lam) Q^T per matrix (NaN lam -> all-NaN E).
void reconstruct(const at::Tensor& Q, const at::Tensor& lam, at::Tensor& E) {
  const int64_t n = Q.size(-1), batch = batch_of(Q);
  if (batch == 0) return;
  AT_DISPATCH_FLOATING_TYPES(Q.scalar_type(), "symmetric_expm_reconstruct", [&] {
    const scalar_t *pq = Q.const_data_ptr<scalar_t>(), *pl = lam.const_data_ptr<scalar_t>();
    scalar_t* pe = E.data_ptr<scalar_t>();
    at::parallel_for(0, batch, std::max<int64_t>(1, 16384 / (n * n * n + 1)), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> v(n * n), el(n);
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* q = pq + b * n * n;
        for (int64_t k = 0; k < n; ++k) el[k] = std::exp(pl[b * n + k]);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t k = 0; k < n; ++k) v[i * n + k] = q[i * n + k] * el[k];
        scalar_t* e = pe + b * n * n;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < n; ++j) {
            scalar_t acc = 0;
            for (int64_t k = 0; k < n; ++k) acc += v[i * n + k] * q[j * n + k];
            e[i * n + j] = acc;
          }
      }
    });
  });
}

// (E, Q, lam) of expm(sym(w)) for w [..., n, n] (contiguous fp32/fp64).
std::tuple<at::Tensor, at::Tensor, at::Tensor> symmetric_forward(const at::Tensor& w) {
  at::Tensor lam_shape = at::empty(w.sizes().slice(0, w.dim() - 1), w.options());
  if (batch_of(w) == 0) return {at::empty_like(w), at::empty_like(w), lam_shape};
  auto [Q, lam] = guarded_eigh(w);
  at::Tensor E = at::empty_like(w);
  reconstruct(Q, lam, E);
  return {E, Q, lam};
}

// w_bar = Q (F o (Q^T sym(G) Q)) Q^T for one matrix; w: 5 work slots.
template <typename T, int LD>
void dk_backward_one(SmallMatrices<T, LD>& w, const T* g, const T* q, const T* lam, T* out, T add_diag) {
  const int n = w.n(), ld = w.ld();
  T *Gs = w.slot(0), *Q = w.slot(1), *tmp = w.slot(2), *H = w.slot(3), *R = w.slot(4);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) Gs[i * ld + j] = (g[i * n + j] + g[j * n + i]) / T(2);
  w.load(Q, q);
  w.mm(tmp, Gs, false, Q, false, false);
  w.mm(H, Q, true, tmp, false, false);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) H[i * ld + j] *= dk_weight<T>(lam[i], lam[j]);
  w.mm(tmp, Q, false, H, false, false);
  w.mm(R, tmp, false, Q, true, false);
  w.add_identity(R, add_diag);
  w.store(out, R);
}

// grad [batch, n, n], Q, lam -> w_bar; diag_add [batch] (or undefined) is added on each diagonal.
at::Tensor dk_backward(const at::Tensor& grad, const at::Tensor& Q, const at::Tensor& lam, const at::Tensor& diag_add) {
  at::Tensor out = at::empty_like(Q);
  const int64_t n = Q.size(-1), batch = batch_of(Q);
  if (batch == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(Q.scalar_type(), "symmetric_expm_backward_cpu", [&] {
    const scalar_t *pg = grad.const_data_ptr<scalar_t>(), *pq = Q.const_data_ptr<scalar_t>(),
                   *pl = lam.const_data_ptr<scalar_t>();
    const scalar_t* pd = diag_add.defined() ? diag_add.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* po = out.data_ptr<scalar_t>();
    with_padded_ld(n, [&]<int LD>() {
      at::parallel_for(0, batch, std::max<int64_t>(1, 16384 / (n * n * n + 1)), [&](int64_t begin, int64_t end) {
        SmallMatrices<scalar_t, LD> w(static_cast<int>(n), 5);
        for (int64_t b = begin; b < end; ++b)
          dk_backward_one(w, pg + b * n * n, pq + b * n * n, pl + b * n, po + b * n * n,
                          pd != nullptr ? pd[b] : scalar_t(0));
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> symmetric_expm_forward_cpu(const at::Tensor& w) {
  check_square_batch("symmetric_expm_forward", "w", w);
  return symmetric_forward(w.contiguous());
}

at::Tensor symmetric_expm_backward_cpu(const at::Tensor& grad, const at::Tensor& Q, const at::Tensor& lam) {
  check_square_batch("symmetric_expm_backward", "q", Q);
  check_grad_like("symmetric_expm_backward", "grad", grad, Q);
  return dk_backward(grad.contiguous(), Q.contiguous(), lam.contiguous(), at::Tensor());
}

// E_u = X_u1 ... X_uK (I for K = 0), one unit per task.
at::Tensor chain_products(const at::Tensor& X, int64_t U, int64_t K, int64_t n) {
  at::Tensor E = at::empty({U, n, n}, X.options());
  if (U == 0 || n == 0) return E;
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "ipe_chain", [&] {
    const scalar_t* px = X.const_data_ptr<scalar_t>();
    scalar_t* pe = E.data_ptr<scalar_t>();
    with_padded_ld(n, [&]<int LD>() {
      at::parallel_for(0, U, 1, [&](int64_t begin, int64_t end) {
        SmallMatrices<scalar_t, LD> w(static_cast<int>(n), 3);
        for (int64_t u = begin; u < end; ++u) {
          int cur = 0;
          w.fill_identity(w.slot(cur), scalar_t(1));
          for (int64_t k = 0; k < K; ++k) {
            w.load(w.slot(2), px + (u * K + k) * n * n);
            w.mm(w.slot(1 - cur), w.slot(cur), false, w.slot(2), false, false);
            cur = 1 - cur;
          }
          w.store(pe + u * n * n, w.slot(cur));
        }
      });
    });
  });
  return E;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ipe_transform_forward_cpu(
    const at::Tensor& z_in, const at::Tensor& w_in) {
  check_ipe("ipe_transform_forward", z_in, w_in);
  const at::Tensor z = z_in.contiguous(), w = w_in.contiguous();
  const int64_t U = w.size(0), K = w.size(1), n = w.size(2), B = z.size(0);
  auto [X, Q, lam] = symmetric_forward(w);
  at::Tensor E = chain_products(X, U, K, n);
  // logdet[u] = sum_k trace(w_uk), summed in the kernel's order
  at::Tensor logdet = at::empty({U}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "ipe_logdet", [&] {
    const scalar_t* pw = w.const_data_ptr<scalar_t>();
    scalar_t* pl = logdet.data_ptr<scalar_t>();
    for (int64_t u = 0; u < U; ++u) {
      scalar_t acc = 0;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t i = 0; i < n; ++i) acc += pw[((u * K + k) * n + i) * n + i];
      pl[u] = acc;
    }
  });
  at::Tensor z_hat = U == 0 ? at::empty({0, B, n}, z.options()) : at::matmul(z, E);  // ATen GEMM [U, B, n]
  return {z_hat, logdet, X, E, Q, lam};
}

// X_bar_uk = L_uk^T E_bar_u R_uk^T with prefix L_uk = X_u1..X_u(k-1), suffix R_uk = X_u(k+1)..X_uK.
at::Tensor chain_adjoint(const at::Tensor& X, const at::Tensor& Ebar, int64_t U, int64_t K, int64_t n) {
  at::Tensor Xbar = at::empty_like(X);
  if (U == 0 || K == 0 || n == 0) return Xbar;
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "ipe_chain_adjoint", [&] {
    const scalar_t *px = X.const_data_ptr<scalar_t>(), *pb = Ebar.const_data_ptr<scalar_t>();
    scalar_t* po = Xbar.data_ptr<scalar_t>();
    with_padded_ld(n, [&]<int LD>() {
      at::parallel_for(0, U, 1, [&](int64_t begin, int64_t end) {
        // slots: 0 L, 1 L next, 2 E_bar, 3 tmp, 4 X_k / X_bar_k, 5 + k: R_k
        SmallMatrices<scalar_t, LD> w(static_cast<int>(n), 5 + static_cast<int>(K));
        for (int64_t u = begin; u < end; ++u) {
          const scalar_t* xu = px + u * K * n * n;
          w.fill_identity(w.slot(5 + K - 1), scalar_t(1));
          for (int64_t k = K - 2; k >= 0; --k) {
            w.load(w.slot(4), xu + (k + 1) * n * n);
            w.mm(w.slot(5 + k), w.slot(4), false, w.slot(5 + k + 1), false, false);
          }
          w.load(w.slot(2), pb + u * n * n);
          int L = 0;
          w.fill_identity(w.slot(L), scalar_t(1));
          for (int64_t k = 0; k < K; ++k) {
            w.mm(w.slot(3), w.slot(2), false, w.slot(5 + k), true, false);
            w.mm(w.slot(4), w.slot(L), true, w.slot(3), false, false);
            w.store(po + (u * K + k) * n * n, w.slot(4));
            if (k + 1 < K) {
              w.load(w.slot(4), xu + k * n * n);
              w.mm(w.slot(1 - L), w.slot(L), false, w.slot(4), false, false);
              L = 1 - L;
            }
          }
        }
      });
    });
  });
  return Xbar;
}

std::tuple<at::Tensor, at::Tensor> ipe_transform_backward_cpu(const at::Tensor& gzh_in, const at::Tensor& gld_in,
                                                              const at::Tensor& z_in, const at::Tensor& X,
                                                              const at::Tensor& E, const at::Tensor& Q,
                                                              const at::Tensor& lam, bool need_z, bool need_w) {
  check_ipe_backward("ipe_transform_backward", gzh_in, z_in, X);
  const int64_t U = X.size(0), K = X.size(1), n = X.size(2), B = z_in.size(0);
  const at::Tensor z = z_in.contiguous(), gzh = gzh_in.contiguous(), gld = gld_in.contiguous();
  at::Tensor gz = at::empty({0}, z.options()), gw = at::empty({0}, z.options());
  if (need_z) {  // z_bar = [Z_1 .. Z_U] [E_1^T; ..; E_U^T]: one GEMM over the batch
    gz = U == 0 ? at::zeros_like(z)
                : at::mm(gzh.permute({1, 0, 2}).reshape({B, U * n}), E.transpose(1, 2).reshape({U * n, n}));
  }
  if (need_w) {
    const at::Tensor Ebar = at::matmul(z.t(), gzh).contiguous();  // [U, n, n]
    const at::Tensor Xbar = chain_adjoint(X.contiguous(), Ebar, U, K, n);
    const at::Tensor diag = gld.reshape({U, 1}).expand({U, K}).contiguous();
    gw = dk_backward(Xbar, Q.contiguous(), lam.contiguous(), diag).reshape({U, K, n, n});
  }
  return {gz, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CPU, m) {
  m.impl("symmetric_expm_forward", &symmetric_expm_forward_cpu);
  m.impl("symmetric_expm_backward", &symmetric_expm_backward_cpu);
  m.impl("ipe_transform_forward", &ipe_transform_forward_cpu);
  m.impl("ipe_transform_backward", &ipe_transform_backward_cpu);
}

}  // namespace pyfastlab::vae::cpu
