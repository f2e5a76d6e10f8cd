// CPU kernels of the CKA ops (distill.md 3.2-3.6, 6.2), registered for the CPU dispatch key.
//
// Work is split into (problem, fixed column group) items spread over at::parallel_for. Each item
// centres kChunk feature columns at a time in a thread-local buffer (all n rows are present, so
// the column means are exact: centre first, never a Gram centred afterwards) and adds their
// n x n Gram with a single-threaded BLAS call (nested parallel regions run serially). Partial
// Grams are summed in group order and the groups depend on the shapes only, so results are
// bit-identical for any thread count. The projection C(.) and the sums <U,V>, ||U||^2, ||V||^2
// run in one fp64 pass over the Grams.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "pyfastlab/cka.h"

namespace pyfastlab::cka::cpu {
namespace {

constexpr int64_t kChunk = 2048;              // feature columns centred at once (fits L2 for n <= 128)
constexpr int64_t kPartialElems = int64_t(1) << 25;  // partial Gram entries held at once (128 MB fp32)
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Centres columns [c0, c0 + w) of one problem x [n, d] (row-major) into xc [n, w]: fp64 column sums.
template <typename scalar_t, typename T>
void centre_columns(const scalar_t* x, int64_t n, int64_t d, int64_t c0, int64_t w, T* xc, double* mean) {
  // mean of x - x_0 (the first row): a constant column centres to exactly 0 at any magnitude
  const scalar_t* first = x + c0;
  std::fill(mean, mean + w, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* row = x + i * d + c0;
    for (int64_t j = 0; j < w; ++j) mean[j] += static_cast<double>(row[j]) - static_cast<double>(first[j]);
  }
  for (int64_t j = 0; j < w; ++j) mean[j] /= static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* row = x + i * d + c0;
    T* out = xc + i * w;
    for (int64_t j = 0; j < w; ++j)
      out[j] = static_cast<T>((static_cast<double>(row[j]) - static_cast<double>(first[j])) - mean[j]);
  }
}

// Column ranges of one problem: chunks of kChunk grouped so that B * groups partial Grams fit
// kPartialElems. A function of the shapes only (never of the thread count).
struct Groups {
  int64_t count, width;  // number of groups, columns per group (a multiple of kChunk)
};
Groups column_groups(int64_t problems, int64_t n, int64_t d) {
  const int64_t chunks = (d + kChunk - 1) / kChunk;
  const int64_t max_groups = std::max<int64_t>(1, kPartialElems / std::max<int64_t>(1, problems * n * n));
  const int64_t per_group = (chunks + std::min(chunks, max_groups) - 1) / std::min(chunks, max_groups);
  return {(chunks + per_group - 1) / per_group, per_group * kChunk};
}

// gram [n, n] (T, contiguous) = Xc Xc^T over columns [c_begin, c_end) of one problem.
template <typename scalar_t, typename T>
void centred_gram(const scalar_t* x, int64_t n, int64_t d, int64_t c_begin, int64_t c_end, at::Tensor gram) {
  const int64_t cap = std::min(kChunk, c_end - c_begin);
  std::vector<T> buffer(n * cap);
  std::vector<double> mean(cap);
  const auto options = gram.options();
  for (int64_t c = c_begin; c < c_end; c += kChunk) {
    const int64_t w = std::min(kChunk, c_end - c);
    centre_columns(x, n, d, c, w, buffer.data(), mean.data());
    const at::Tensor xc = at::from_blob(buffer.data(), {n, w}, options);
    if (c == c_begin) {
      at::mm_out(gram, xc, xc.t());
    } else {
      gram.addmm_(xc, xc.t());
    }
  }
}

// Centred Grams [B, n, n] (opmath) of every problem of x [B, n, d] (contiguous).
template <typename scalar_t>
at::Tensor centred_grams(const at::Tensor& x) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), n = x.size(1), d = x.size(2);
  const Groups groups = column_groups(B, n, d);
  at::Tensor partial = at::empty({B, groups.count, n, n}, x.options().dtype(c10::CppTypeToScalarType<T>::value));
  const scalar_t* data = x.const_data_ptr<scalar_t>();
  at::parallel_for(0, B * groups.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / groups.count, g = item % groups.count;
      const int64_t c0 = g * groups.width, c1 = std::min(d, c0 + groups.width);
      centred_gram<scalar_t, T>(data + b * n * d, n, d, c0, c1, partial.select(0, b).select(0, g));
    }
  });
  at::Tensor total = partial.select(1, 0).clone();
  for (int64_t g = 1; g < groups.count; ++g) total.add_(partial.select(1, g));  // fixed order
  return total;
}

// Entry (i, j) of C(K) in fp64 from one centred Gram [n, n].
template <typename T>
struct Projector {
  const T* k;
  int64_t n;
  bool debiased;
  std::vector<double> s;
  double inv = 0, total_term = 0;

  Projector(const T* k_, int64_t n_, bool debiased_) : k(k_), n(n_), debiased(debiased_), s(debiased_ ? n_ : 0) {
    if (!debiased) return;
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += (s[i] = static_cast<double>(k[i * n + i]));
    inv = 1.0 / static_cast<double>(n - 2);
    total_term = total / static_cast<double>((n - 1) * (n - 2));
  }
  double operator()(int64_t i, int64_t j) const {
    const double kc = static_cast<double>(k[i * n + j]);
    return debiased ? projected<double>(kc, s[i], s[j], i == j, true, inv, total_term) : kc;
  }
};

// C(K)/beta into out [n, n] (zero when beta == 0: a degenerate side has no gradient).
template <typename T>
void write_normalised(const Projector<T>& u, double beta, T* out) {
  const double scale = beta == 0 ? 0.0 : 1.0 / beta;
  for (int64_t i = 0; i < u.n; ++i)
    for (int64_t j = 0; j < u.n; ++j) out[i * u.n + j] = static_cast<T>(u(i, j) * scale);
}

// One problem's squared norm ||C(K)||^2 in fp64, rows summed in order.
template <typename T>
double squared_norm(const Projector<T>& u) {
  double total = 0;
  for (int64_t i = 0; i < u.n; ++i) {
    double row = 0;
    for (int64_t j = 0; j < u.n; ++j) row += u(i, j) * u(i, j);
    total += row;
  }
  return total;
}

// gx_b [n, d] = M_b [n, n] Xc_b for every problem with its M (opmath [B, n, n]), chunked like the
// forward; Xc is recomputed from x (exact column means again), the result cast to x's dtype.
template <typename scalar_t>
void multiply_centred(const at::Tensor& m, const at::Tensor& x, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), n = x.size(1), d = x.size(2);
  const int64_t chunks = (d + kChunk - 1) / kChunk;
  const scalar_t* data = x.const_data_ptr<scalar_t>();
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    const int64_t cap = std::min(kChunk, d);
    std::vector<T> buffer(n * cap), product(n * cap);
    std::vector<double> mean(cap);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks, c0 = (item % chunks) * kChunk, w = std::min(kChunk, d - c0);
      centre_columns(data + b * n * d, n, d, c0, w, buffer.data(), mean.data());
      const at::Tensor xc = at::from_blob(buffer.data(), {n, w}, m.options());
      at::Tensor result = at::from_blob(product.data(), {n, w}, m.options());
      at::mm_out(result, m.select(0, b), xc);
      out.select(0, b).narrow(1, c0, w).copy_(result);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cka_forward_cpu(const at::Tensor& x_in,
                                                                                  const at::Tensor& y_in,
                                                                                  bool debiased, bool save) {
  constexpr const char* op = "linear_cka_forward";
  check_pair(x_in, y_in, debiased, op);
  const int64_t B = x_in.size(0), n = x_in.size(1);
  if (!use_gram_form(n, x_in.size(2), y_in.size(2), debiased)) {
    auto [cka, stats] = feature_forward(x_in, y_in, /*fp64_sums=*/true);
    return {cka, stats, at::empty({0}, stats.options()), at::empty({0}, stats.options())};
  }
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const auto opmath = at::toOpMathType(x.scalar_type());
  at::Tensor stats = at::empty({B, 3}, x.options().dtype(opmath));
  const std::vector<int64_t> saved_shape = save ? std::vector<int64_t>{B, n, n} : std::vector<int64_t>{0};
  at::Tensor u_hat = at::empty(saved_shape, stats.options());
  at::Tensor v_hat = at::empty_like(u_hat);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor kx = centred_grams<scalar_t>(x), ky = centred_grams<scalar_t>(y);
    T* st = stats.data_ptr<T>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const Projector<T> u(kx.const_data_ptr<T>() + b * n * n, n, debiased);
        const Projector<T> v(ky.const_data_ptr<T>() + b * n * n, n, debiased);
        double uv = 0, uu = 0, vv = 0;
        for (int64_t i = 0; i < n; ++i) {
          double row_uv = 0, row_uu = 0, row_vv = 0;
          for (int64_t j = 0; j < n; ++j) {
            const double a = u(i, j), c = v(i, j);
            row_uv += a * c, row_uu += a * a, row_vv += c * c;
          }
          uv += row_uv, uu += row_uu, vv += row_vv;
        }
        const double bx = std::sqrt(uu), by = std::sqrt(vv);
        st[3 * b] = static_cast<T>(bx);
        st[3 * b + 1] = static_cast<T>(by);
        st[3 * b + 2] = static_cast<T>(bx == 0 || by == 0 ? kNaN : uv / (bx * by));
        if (save) {
          write_normalised(u, bx, u_hat.data_ptr<T>() + b * n * n);
          write_normalised(v, by, v_hat.data_ptr<T>() + b * n * n);
        }
      }
    });
  });
  // a fresh tensor even when x is in opmath: outputs must not alias
  return {stats.select(1, 2).to(x.scalar_type(), /*non_blocking=*/false, /*copy=*/true), stats, u_hat, v_hat};
}

// M = coef (P - c Q) per problem, coef = 2 g / beta; exactly 0 for a degenerate problem.
at::Tensor combine(const at::Tensor& p, const at::Tensor& q, const at::Tensor& c, const at::Tensor& coef,
                   const at::Tensor& degenerate) {
  const auto column = [](const at::Tensor& t) { return t.view({-1, 1, 1}); };
  const at::Tensor m = (p - q * column(c)) * column(coef);
  return at::where(column(degenerate), at::zeros_like(m), m);
}

std::tuple<at::Tensor, at::Tensor> linear_cka_backward_cpu(const at::Tensor& grad, const at::Tensor& x_in,
                                                           const at::Tensor& y_in, const at::Tensor& stats,
                                                           const at::Tensor& u_hat, const at::Tensor& v_hat,
                                                           bool need_x, bool need_y) {
  constexpr const char* op = "linear_cka_backward";
  check_pair(x_in, y_in, false, op);
  if (u_hat.numel() == 0 && x_in.size(0) > 0) return feature_backward(grad, x_in, y_in, stats, need_x, need_y);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const at::Tensor g = grad.to(stats.scalar_type());
  const at::Tensor bx = stats.select(1, 0), by = stats.select(1, 1), cka = stats.select(1, 2);
  const at::Tensor degenerate = (bx == 0).logical_or(by == 0);
  at::Tensor gx = need_x ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor gy = need_y ? at::empty(y.sizes(), y.options()) : at::empty({0}, y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    if (need_x) multiply_centred<scalar_t>(combine(v_hat, u_hat, cka, 2 * g / bx, degenerate), x, gx);
    if (need_y) multiply_centred<scalar_t>(combine(u_hat, v_hat, cka, 2 * g / by, degenerate), y, gy);
  });
  return {gx, gy};
}

// Normalised projected Grams [L, n, n] and betas [L] of 2-D layers, one layer per work item.
std::tuple<at::Tensor, at::Tensor> normalised_grams(at::TensorList layers, bool debiased) {
  const int64_t L = static_cast<int64_t>(layers.size()), n = layers[0].size(0);
  const auto dtype = layers[0].scalar_type();
  const auto options = layers[0].options().dtype(at::toOpMathType(dtype));
  at::Tensor stack = at::empty({L, n, n}, options);
  at::Tensor beta = at::empty({L}, options);
  std::vector<at::Tensor> contiguous(layers.begin(), layers.end());
  for (auto& t : contiguous) t = t.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cka_matrix_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    at::parallel_for(0, L, 1, [&](int64_t begin, int64_t end) {
      at::Tensor gram = at::empty({n, n}, options);
      for (int64_t l = begin; l < end; ++l) {
        const int64_t d = contiguous[l].size(1);
        centred_gram<scalar_t, T>(contiguous[l].const_data_ptr<scalar_t>(), n, d, 0, d, gram);
        const Projector<T> u(gram.const_data_ptr<T>(), n, debiased);
        const double b = std::sqrt(squared_norm(u));
        beta.data_ptr<T>()[l] = static_cast<T>(b);
        write_normalised(u, b, stack.data_ptr<T>() + l * n * n);
      }
    });
  });
  return {stack, beta};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cka_matrix_forward_cpu(at::TensorList xs,
                                                                                             at::TensorList ys,
                                                                                             bool debiased) {
  check_layers(xs, ys, debiased, "cka_matrix_forward");
  auto [gx, beta_x] = normalised_grams(xs, debiased);
  auto [gy, beta_y] = normalised_grams(ys, debiased);
  return {pair_cka(gx, gy, beta_x, beta_y, xs[0].scalar_type()), gx, gy, beta_x, beta_y};
}

// dX_l = (2/beta_l)(W_l - c_l U_hat_l) Xc_l for every layer of one side.
std::vector<at::Tensor> layer_gradients(at::TensorList layers, const at::Tensor& w, const at::Tensor& c,
                                        const at::Tensor& own, const at::Tensor& beta) {
  const at::Tensor m = combine(w, own, c, 2 / beta, beta == 0);
  std::vector<at::Tensor> grads(layers.size());
  at::parallel_for(0, static_cast<int64_t>(layers.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t l = begin; l < end; ++l) {
      const at::Tensor x = layers[l].contiguous().unsqueeze(0);
      at::Tensor out = at::empty(x.sizes(), x.options());
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cka_matrix_backward", [&] {
        multiply_centred<scalar_t>(m.narrow(0, l, 1), x, out);
      });
      grads[l] = out.squeeze(0);
    }
  });
  return grads;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> cka_matrix_backward_cpu(
    const at::Tensor& grad, at::TensorList xs, at::TensorList ys, const at::Tensor& cka, const at::Tensor& gx,
    const at::Tensor& gy, const at::Tensor& beta_x, const at::Tensor& beta_y, bool need_x, bool need_y) {
  check_layers(xs, ys, false, "cka_matrix_backward");
  return matrix_backward(grad, xs, ys, cka, gx, gy, beta_x, beta_y, need_x, need_y, &layer_gradients);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfastlab, CPU, m) {
  m.impl("linear_cka_forward", &linear_cka_forward_cpu);
  m.impl("linear_cka_backward", &linear_cka_backward_cpu);
  m.impl("cka_matrix_forward", &cka_matrix_forward_cpu);
  m.impl("cka_matrix_backward", &cka_matrix_backward_cpu);
}

}  // namespace pyfastlab::cka::cpu
