// Row kernels of the mixup ops (spec mixup.md 3 and 6). Included once per CPU capability by
// mixup_kernels_<capability>.cpp, which defines PFL_MIXUP_TABLE_FN; everything lives in a namespace
// named after CPU_CAPABILITY so the builds never collide.
//
// pair_mix and the mixed cross-entropy own one row per iteration of at::parallel_for; a mixed row
// is formed on the fly from its two source rows (row-level end rule, so lam = 1 never reads the
// partner's values), the backward gathers partner contributions through the inverse CSR (no
// atomics, fixed order: bit-identical across runs and thread counts). uniformity_loss gets Gram
// tiles from BLAS and turns them into per-row (max, sum) partials or pair weights here.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "mixup_kernels.h"
#include "vec_row_helpers.h"

namespace pyfastlab::mixup::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using namespace pyfastlab::cpu_vec;

// Rows per parallel task: about 16 K elements.
inline int64_t mix_grain(int64_t cols) { return row_grain(cols, 16384); }

// dst[0, n) = mixed row of a (anchor) and b (partner) with weight l, by the end rule of 3.1.
// Same type: vectorised; half types convert element by element into the opmath buffer.
template <typename S, typename T>
inline void mix_row(const S* a, const S* b, T l, int64_t n, T* dst) {
  if (l == T(1)) {
    for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<T>(a[k]);
  } else if (l == T(0)) {
    for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<T>(b[k]);
  } else if constexpr (std::is_same_v<S, T>) {
    using Vec = Vectorized<T>;
    const Vec vl(l), vm(T(1) - l);
    int64_t k = 0;
    for (; k + Vec::size() <= n; k += Vec::size())
      (vl * Vec::loadu(a + k) + vm * Vec::loadu(b + k)).store(dst + k);
    for (; k < n; ++k) dst[k] = l * a[k] + (T(1) - l) * b[k];
  } else {
    for (int64_t k = 0; k < n; ++k) dst[k] = l * static_cast<T>(a[k]) + (T(1) - l) * static_cast<T>(b[k]);
  }
}

// ---- pair_mix ------------------------------------------------------------------------------------

template <typename S>
void pair_mix_forward_typed(const at::Tensor& x, const Pairs& pairs, const at::Tensor& out) {
  using T = at::opmath_type<S>;
  const int64_t B = x.size(0), D = x.size(1);
  const S* px = x.const_data_ptr<S>();
  const T* lam = pairs.lam.const_data_ptr<T>();
  S* po = out.data_ptr<S>();
  at::parallel_for(0, B, mix_grain(D), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(std::is_same_v<S, T> ? 0 : D);
    for (int64_t i = begin; i < end; ++i) {
      const S *a = px + i * D, *b = px + pairs.partner[i] * D;
      if constexpr (std::is_same_v<S, T>) {
        mix_row<S, T>(a, b, lam[i], D, po + i * D);
      } else {
        mix_row<S, T>(a, b, lam[i], D, buf.data());
        for (int64_t k = 0; k < D; ++k) po[i * D + k] = static_cast<S>(buf[k]);
      }
    }
  });
}

// dot(g, a - b) over n, vectorised lanes, then lanes and the tail in order.
template <typename T>
inline T diff_dot(const T* g, const T* a, const T* b, int64_t n) {
  using Vec = Vectorized<T>;
  Vec acc(T(0));
  int64_t k = 0;
  for (; k + Vec::size() <= n; k += Vec::size())
    acc = at::vec::fmadd(Vec::loadu(g + k), Vec::loadu(a + k) - Vec::loadu(b + k), acc);
  T s = sum_lanes(acc);
  for (; k < n; ++k) s += g[k] * (a[k] - b[k]);
  return s;
}

// One pass per row k: grad_x_k = lam_k G_k + sum_{i in inv(k)} (1 - lam_i) G_i, and
// grad_lam_k = dot(G_k, x_k - x_{p_k}): no [B, D] temporaries.
template <typename S>
void pair_mix_backward_typed(const at::Tensor& grad, const at::Tensor& x, const Pairs& pairs,
                             const at::Tensor& grad_x, const at::Tensor& grad_lam) {
  using T = at::opmath_type<S>;
  constexpr bool kSame = std::is_same_v<S, T>;
  const int64_t B = x.size(0), D = x.size(1);
  const S *pg = grad.const_data_ptr<S>(), *px = x.const_data_ptr<S>();
  const T* lam = pairs.lam.const_data_ptr<T>();
  S* pgx = grad_x.data_ptr<S>();
  T* pgl = grad_lam.defined() ? grad_lam.data_ptr<T>() : nullptr;
  at::parallel_for(0, B, mix_grain(D), [&](int64_t begin, int64_t end) {
    std::vector<T> acc_buf(kSame ? 0 : D), conv(kSame ? 0 : 3 * D);
    using Vec = Vectorized<T>;
    for (int64_t k = begin; k < end; ++k) {
      T* acc = kSame ? reinterpret_cast<T*>(pgx + k * D) : acc_buf.data();
      const S* gk = pg + k * D;
      const T lk = lam[k];
      if constexpr (kSame) {
        int64_t d = 0;
        for (; d + Vec::size() <= D; d += Vec::size()) (Vec(lk) * Vec::loadu(gk + d)).store(acc + d);
        for (; d < D; ++d) acc[d] = lk * gk[d];
      } else {
        for (int64_t d = 0; d < D; ++d) acc[d] = lk * static_cast<T>(gk[d]);
      }
      for (int64_t j = pairs.inv_offsets[k]; j < pairs.inv_offsets[k + 1]; ++j) {
        const int64_t i = pairs.inv_rows[j];
        const T w = T(1) - lam[i];
        const S* gi = pg + i * D;
        if constexpr (kSame) {
          int64_t d = 0;
          for (; d + Vec::size() <= D; d += Vec::size())
            at::vec::fmadd(Vec(w), Vec::loadu(gi + d), Vec::loadu(acc + d)).store(acc + d);
          for (; d < D; ++d) acc[d] += w * gi[d];
        } else {
          for (int64_t d = 0; d < D; ++d) acc[d] += w * static_cast<T>(gi[d]);
        }
      }
      if constexpr (!kSame)
        for (int64_t d = 0; d < D; ++d) pgx[k * D + d] = static_cast<S>(acc[d]);
      if (pgl != nullptr) {
        const S *xk = px + k * D, *xp = px + pairs.partner[k] * D;
        if constexpr (kSame) {
          pgl[k] = diff_dot<T>(gk, xk, xp, D);
        } else {
          T *g = conv.data(), *a = g + D, *b = a + D;
          for (int64_t d = 0; d < D; ++d) {
            g[d] = static_cast<T>(gk[d]);
            a[d] = static_cast<T>(xk[d]);
            b[d] = static_cast<T>(xp[d]);
          }
          pgl[k] = diff_dot<T>(g, a, b, D);
        }
      }
    }
  });
}

// ---- mixed_logits_cross_entropy -------------------------------------------------------------------

// (max, log sum exp(v - max)) of a row already in opmath: NaN for a NaN, +inf or all -inf row (as
// F.cross_entropy). Kept apart so the loss is (max - v_y) + log sum: max + log sum - v_y would round
// the log away once |max| >> log sum (logits near 1e8).
template <typename T>
inline std::pair<T, T> row_max_log_sum(const T* v, int64_t C) {
  using Vec = Vectorized<T>;
  const T m = row_max(v, C);
  if (!std::isfinite(m)) return {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::quiet_NaN()};
  Vec acc(T(0));
  for (int64_t k = 0; k < C; k += Vec::size()) {
    const int64_t n = std::min<int64_t>(Vec::size(), C - k);
    const Vec e = fast_exp(load(v + k, n, neg_inf<T>()) - Vec(m));
    acc = acc + keep(e, n);
  }
  return {m, std::log(sum_lanes(acc))};
}

template <typename S>
void mce_forward_typed(const at::Tensor& z, const Pairs& pairs, const at::Tensor& target, const at::Tensor& loss,
                       const at::Tensor& lse) {
  using T = at::opmath_type<S>;
  const int64_t B = z.size(0), C = z.size(1);
  const S* pz = z.const_data_ptr<S>();
  const int64_t* y = target.const_data_ptr<int64_t>();
  const T* lam = pairs.lam.const_data_ptr<T>();
  T *pl = loss.data_ptr<T>(), *pse = lse.data_ptr<T>();
  at::parallel_for(0, B, mix_grain(C), [&](int64_t begin, int64_t end) {
    std::vector<T> row(C);  // the one per-thread row buffer of 6
    for (int64_t i = begin; i < end; ++i) {
      mix_row<S, T>(pz + i * C, pz + pairs.partner[i] * C, lam[i], C, row.data());
      const auto [m, log_s] = row_max_log_sum(row.data(), C);
      pse[i] = m + log_s;
      pl[i] = (m - row[y[i]]) + log_s;
    }
  });
}

// Phase 1 (rows i): d_i = w_i (s_i - e_{y_i}) into an opmath scratch, and grad_lam_i.
// Phase 2 (rows k): grad_k = lam_k d_k + sum_{inv(k)} (1 - lam_i) d_i.
template <typename S>
void mce_backward_typed(const at::Tensor& w, const at::Tensor& z, const Pairs& pairs, const at::Tensor& target,
                        const at::Tensor& lse, const at::Tensor& grad_z, const at::Tensor& grad_lam) {
  using T = at::opmath_type<S>;
  using Vec = Vectorized<T>;
  constexpr bool kSame = std::is_same_v<S, T>;
  const int64_t B = z.size(0), C = z.size(1);
  const S* pz = z.const_data_ptr<S>();
  const int64_t* y = target.const_data_ptr<int64_t>();
  const T *lam = pairs.lam.const_data_ptr<T>(), *pw = w.const_data_ptr<T>(), *pse = lse.const_data_ptr<T>();
  T* pgl = grad_lam.defined() ? grad_lam.data_ptr<T>() : nullptr;
  std::vector<T> scratch(B * C);
  T* dsc = scratch.data();
  at::parallel_for(0, B, mix_grain(C), [&](int64_t begin, int64_t end) {
    std::vector<T> conv(kSame ? 0 : 2 * C);
    for (int64_t i = begin; i < end; ++i) {
      T* d = dsc + i * C;
      const S *zi = pz + i * C, *zp = pz + pairs.partner[i] * C;
      mix_row<S, T>(zi, zp, lam[i], C, d);  // same formula and rounding as the forward
      const T l = pse[i], wi = pw[i];
      if (std::isnan(l)) {
        std::fill(d, d + C, std::numeric_limits<T>::quiet_NaN());
      } else {
        int64_t k = 0;
        for (; k + Vec::size() <= C; k += Vec::size())
          (Vec(wi) * fast_exp(Vec::loadu(d + k) - Vec(l))).store(d + k);
        for (; k < C; ++k) d[k] = wi * std::exp(d[k] - l);
      }
      d[y[i]] -= wi;
      if (pgl != nullptr) {
        if constexpr (kSame) {
          pgl[i] = diff_dot<T>(d, zi, zp, C);
        } else {
          T *a = conv.data(), *b = a + C;
          for (int64_t c = 0; c < C; ++c) {
            a[c] = static_cast<T>(zi[c]);
            b[c] = static_cast<T>(zp[c]);
          }
          pgl[i] = diff_dot<T>(d, a, b, C);
        }
      }
    }
  });
  S* pgz = grad_z.data_ptr<S>();
  at::parallel_for(0, B, mix_grain(C), [&](int64_t begin, int64_t end) {
    std::vector<T> acc_buf(kSame ? 0 : C);
    for (int64_t k = begin; k < end; ++k) {
      T* acc = kSame ? reinterpret_cast<T*>(pgz + k * C) : acc_buf.data();
      const T* dk = dsc + k * C;
      const T lk = lam[k];
      int64_t c = 0;
      for (; c + Vec::size() <= C; c += Vec::size()) (Vec(lk) * Vec::loadu(dk + c)).store(acc + c);
      for (; c < C; ++c) acc[c] = lk * dk[c];
      for (int64_t j = pairs.inv_offsets[k]; j < pairs.inv_offsets[k + 1]; ++j) {
        const int64_t i = pairs.inv_rows[j];
        const T wgt = T(1) - lam[i];
        const T* di = dsc + i * C;
        c = 0;
        for (; c + Vec::size() <= C; c += Vec::size())
          at::vec::fmadd(Vec(wgt), Vec::loadu(di + c), Vec::loadu(acc + c)).store(acc + c);
        for (; c < C; ++c) acc[c] += wgt * di[c];
      }
      if constexpr (!kSame)
        for (c = 0; c < C; ++c) pgz[k * C + c] = static_cast<S>(acc[c]);
    }
  });
}

// ---- uniformity_loss ------------------------------------------------------------------------------

// e = -t max(0, n_a + n_b - 2 g) for a vector of columns (NaN kept by maximum). A squared norm
// that is +inf on one side only (a row near 1e20 in fp32) makes the distance +inf, not the NaN of
// inf - inf; +inf on both sides stays NaN (their distance is unknown).
template <typename T>
inline Vectorized<T> exponent(const Vectorized<T>& g, const Vectorized<T>& nb, T na, T t) {
  using Vec = Vectorized<T>;
  const Vec inf(std::numeric_limits<T>::infinity());
  Vec d2 = at::vec::maximum(Vec(T(0)), Vec(na) + nb - Vec(T(2)) * g);
  const Vec nb_inf = nb > Vec(std::numeric_limits<T>::max());  // == would meet C++20's rewritten candidates
  d2 = na == std::numeric_limits<T>::infinity() ? Vec::blendv(inf, d2, nb_inf) : Vec::blendv(d2, inf, nb_inf);
  return Vec(-t) * d2;
}

template <typename T>
void uniformity_forward_typed(const at::Tensor& gram, const at::Tensor& norms, int64_t a0, int64_t b0, double t_in,
                              const at::Tensor& row_max, const at::Tensor& row_sum) {
  using Vec = Vectorized<T>;
  const int64_t rows = gram.size(0), cols = gram.size(1);
  T* pg = gram.data_ptr<T>();
  const T* pn = norms.const_data_ptr<T>();
  double *pm = row_max.data_ptr<double>(), *ps = row_sum.data_ptr<double>();
  const T t = static_cast<T>(t_in);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t a = a0 + r;
      const int64_t first = std::max<int64_t>(0, a + 1 - b0);  // columns b > a only
      T* e = pg + r * cols;
      const T na = pn[a];
      Vec vmax(neg_inf<T>());
      for (int64_t c = first; c < cols; c += Vec::size()) {
        const int64_t n = std::min<int64_t>(Vec::size(), cols - c);
        const Vec v = exponent(load(e + c, n, T(0)), load(pn + b0 + c, n, T(0)), na, t);
        store(e + c, v, n);
        vmax = at::vec::maximum(vmax, n == Vec::size() ? v : Vec::set(Vec(neg_inf<T>()), v, n));
      }
      const T m = max_lanes(vmax);
      if (first >= cols || !std::isfinite(m)) {  // no pairs here, every pair at distance +inf, or NaN
        const bool none = first >= cols || m == neg_inf<T>();
        pm[r] = none ? neg_inf<double>() : static_cast<double>(m);
        ps[r] = none ? 0.0 : std::numeric_limits<double>::quiet_NaN();
        continue;
      }
      Vec acc(T(0));
      for (int64_t c = first; c < cols; c += Vec::size()) {
        const int64_t n = std::min<int64_t>(Vec::size(), cols - c);
        const Vec x = fast_exp(load(e + c, n, neg_inf<T>()) - Vec(m));
        acc = acc + keep(x, n);
      }
      pm[r] = m;
      ps[r] = sum_lanes(acc);
    }
  });
}

template <typename T>
void uniformity_backward_typed(const at::Tensor& gram, const at::Tensor& norms, int64_t a0, double t_in,
                               double lse_in, const at::Tensor& r_out) {
  using Vec = Vectorized<T>;
  const int64_t rows = gram.size(0), N = gram.size(1);
  T* pg = gram.data_ptr<T>();
  const T* pn = norms.const_data_ptr<T>();
  T* pr = r_out.data_ptr<T>();
  const T t = static_cast<T>(t_in), lse = static_cast<T>(lse_in);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t a = a0 + r;
      T* p = pg + r * N;
      const T na = pn[a];
      Vec acc(T(0));
      // columns [c0, c1): the diagonal is excluded by index (its exp(0 - lse) may overflow)
      auto span = [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; c += Vec::size()) {
          const int64_t n = std::min<int64_t>(Vec::size(), c1 - c);
          const Vec v = keep(fast_exp(exponent(load(p + c, n, T(0)), load(pn + c, n, T(0)), na, t) - Vec(lse)), n);
          store(p + c, v, n);
          acc = acc + v;
        }
      };
      span(0, a);
      span(a + 1, N);
      p[a] = T(0);
      const T sum = sum_lanes(acc);
      pr[r] = sum;
    }
  });
}

// ---- dispatch ------------------------------------------------------------------------------------

#define PFL_MIXUP_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

void pair_mix_forward(const at::Tensor& x, const Pairs& pairs, const at::Tensor& out) {
  PFL_MIXUP_DISPATCH(x.scalar_type(), "pair_mix_cpu", [&] { pair_mix_forward_typed<scalar_t>(x, pairs, out); });
}
void pair_mix_backward(const at::Tensor& grad, const at::Tensor& x, const Pairs& pairs, const at::Tensor& grad_x,
                       const at::Tensor& grad_lam) {
  PFL_MIXUP_DISPATCH(x.scalar_type(), "pair_mix_backward_cpu",
                     [&] { pair_mix_backward_typed<scalar_t>(grad, x, pairs, grad_x, grad_lam); });
}
void mce_forward(const at::Tensor& z, const Pairs& pairs, const at::Tensor& target, const at::Tensor& loss,
                 const at::Tensor& lse) {
  PFL_MIXUP_DISPATCH(z.scalar_type(), "mixed_ce_cpu", [&] { mce_forward_typed<scalar_t>(z, pairs, target, loss, lse); });
}
void mce_backward(const at::Tensor& w, const at::Tensor& z, const Pairs& pairs, const at::Tensor& target,
                  const at::Tensor& lse, const at::Tensor& grad_z, const at::Tensor& grad_lam) {
  PFL_MIXUP_DISPATCH(z.scalar_type(), "mixed_ce_backward_cpu",
                     [&] { mce_backward_typed<scalar_t>(w, z, pairs, target, lse, grad_z, grad_lam); });
}
void uniformity_rows_forward(const at::Tensor& gram, const at::Tensor& norms, int64_t a0, int64_t b0, double t,
                             const at::Tensor& row_max, const at::Tensor& row_sum) {
  AT_DISPATCH_FLOATING_TYPES(gram.scalar_type(), "uniformity_cpu",
                             [&] { uniformity_forward_typed<scalar_t>(gram, norms, a0, b0, t, row_max, row_sum); });
}
void uniformity_rows_backward(const at::Tensor& gram, const at::Tensor& norms, int64_t a0, double t, double lse,
                              const at::Tensor& r) {
  AT_DISPATCH_FLOATING_TYPES(gram.scalar_type(), "uniformity_backward_cpu",
                             [&] { uniformity_backward_typed<scalar_t>(gram, norms, a0, t, lse, r); });
}

#define PFL_MIXUP_STRINGIFY2(x) #x
#define PFL_MIXUP_STRINGIFY(x) PFL_MIXUP_STRINGIFY2(x)
constexpr KernelTable kTable{&pair_mix_forward,        &pair_mix_backward,        &mce_forward, &mce_backward,
                             &uniformity_rows_forward, &uniformity_rows_backward, PFL_MIXUP_STRINGIFY(CPU_CAPABILITY)};

}  // namespace
}  // namespace CPU_CAPABILITY

const KernelTable* PFL_MIXUP_TABLE_FN() { return &CPU_CAPABILITY::kTable; }

}  // namespace pyfastlab::mixup::cpu
