// Row kernels of kd_loss. Included once per CPU capability by kd_kernels_<capability>.cpp, which
// defines PFL_KD_TABLE_FN; everything lives in a namespace named after CPU_CAPABILITY so the
// builds never collide.
//
// One thread owns a row (spec distill.md 6.2): a max pass over s and t, then one pass that
// exponentiates the three softmax streams s/T, t/T and s, sums them and accumulates the KL
// numerator, keeping the exponentials in an L1-resident scratch, then the gradient pass. DRAM sees
// one read of each logit row and one write of the gradient.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kd_kernels.h"
#include "vec_row_helpers.h"
#include "pyfastlab/kd_loss.h"

namespace pyfastlab::kd::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using namespace pyfastlab::cpu_vec;

// l = soft_T2 * KL + hard * CE of one valid row; writes the row's gradient into g unless null.
// With a = (t - M_t)/T and b = (s - M_s)/T: KL = sum e^a (a - b) / S_t - log S_t + log S_q, where
// terms with e^a = 0 (teacher -inf) are 0 and a student -inf under e^a > 0 makes KL +inf.
template <typename T>
T kd_row(const T* s, const T* t, int64_t C, int64_t y, const Weights<T>& w, T* scratch, T* g) {
  using Vec = Vectorized<T>;
  const T Ms = row_max(s, C);
  const T Mt = w.use_soft ? row_max(t, C) : T(0);
  if (Ms == neg_inf<T>() || Mt == neg_inf<T>()) {  // all -inf: zero loss, zero gradient
    if (g != nullptr) std::fill(g, g + C, T(0));
    return T(0);
  }
  if (!std::isfinite(Ms) || !std::isfinite(Mt)) {  // NaN or +inf in a row that matters
    if (g != nullptr) std::fill(g, g + C, std::numeric_limits<T>::quiet_NaN());
    return std::numeric_limits<T>::quiet_NaN();
  }
  T *eq = scratch, *et = scratch + C, *er = scratch + 2 * C;
  const Vec vMs(Ms), vMt(Mt), inv_T(w.inv_T), zero(0);
  Vec acc_q(0), acc_t(0), acc_r(0), acc_k(0);
  for (int64_t k = 0; k < C; k += Vec::size()) {
    const int64_t n = std::min<int64_t>(Vec::size(), C - k);
    const Vec vs = load(s + k, n, T(0));
    if (w.use_soft) {
      const Vec b = (vs - vMs) * inv_T, a = (load(t + k, n, T(0)) - vMt) * inv_T;
      const Vec e_q = keep(fast_exp(b), n), e_t = keep(fast_exp(a), n);
      acc_q = acc_q + e_q;
      acc_t = acc_t + e_t;
      acc_k = acc_k + Vec::blendv(zero, e_t * (a - b), e_t > zero);
      store(eq + k, e_q, n);
      store(et + k, e_t, n);
    }
    if (w.use_hard) {
      const Vec e_r = keep(fast_exp(vs - vMs), n);
      acc_r = acc_r + e_r;
      store(er + k, e_r, n);
    }
  }
  const T Sq = sum_lanes(acc_q), St = sum_lanes(acc_t), Sr = sum_lanes(acc_r);
  T loss = 0;
  if (w.use_soft) loss += w.soft_T2 * (sum_lanes(acc_k) / St - std::log(St) + std::log(Sq));
  if (w.use_hard) loss += w.hard * ((Ms - s[y]) + std::log(Sr));  // M + log S - s_y loses log S at |M| >> 1
  if (g == nullptr) return loss;
  const Vec cq(w.use_soft ? w.soft_T / Sq : T(0)), ct(w.use_soft ? w.soft_T / St : T(0));
  const Vec cr(w.use_hard ? w.hard / Sr : T(0));
  for (int64_t k = 0; k < C; k += Vec::size()) {
    const int64_t n = std::min<int64_t>(Vec::size(), C - k);
    Vec gv = zero;
    if (w.use_soft) gv = load(eq + k, n, T(0)) * cq - load(et + k, n, T(0)) * ct;
    if (w.use_hard) gv = gv + load(er + k, n, T(0)) * cr;
    store(g + k, gv, n);
  }
  if (w.use_hard) g[y] -= w.hard;  // softmax(s)_y - 1 in opmath, before any rounding
  return loss;
}

// A template rather than the dispatch lambda, so that `if constexpr` discards the other branch.
template <typename scalar_t>
void rows_typed(const RowArgs& a) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool kSame = std::is_same_v<scalar_t, opmath_t>;
  const int64_t N = a.student.size(0), C = a.student.size(1);
  const bool want_grad = a.grad.defined() && a.grad.numel() > 0;
  const int64_t* y_ptr = a.target.defined() ? a.target.const_data_ptr<int64_t>() : nullptr;
  const Weights<opmath_t> w(a.temperature, a.soft_weight, a.hard_weight);
  const scalar_t* s_ptr = a.student.const_data_ptr<scalar_t>();
  const scalar_t* t_ptr = a.teacher.const_data_ptr<scalar_t>();
  scalar_t* g_ptr = want_grad ? a.grad.data_ptr<scalar_t>() : nullptr;
  opmath_t* loss_ptr = a.row_loss.data_ptr<opmath_t>();
  bool* valid_ptr = a.valid.data_ptr<bool>();
  at::parallel_for(0, N, row_grain(C), [&](int64_t begin, int64_t end) {
    // 3 C for the exponentials; half types add opmath copies of s, t and the gradient.
    std::vector<opmath_t> scratch((kSame ? 3 : 6) * C);
    opmath_t* conv = scratch.data() + 3 * C;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t y = y_ptr == nullptr ? -1 : y_ptr[i];
      const bool valid = y_ptr == nullptr || y != a.ignore_index;
      scalar_t* g = want_grad ? g_ptr + i * C : nullptr;
      valid_ptr[i] = valid;
      if (!valid) {  // ignored rows are out of both terms
        loss_ptr[i] = opmath_t(0);
        if (g != nullptr) std::fill(g, g + C, scalar_t(0));
        continue;
      }
      if constexpr (kSame) {
        loss_ptr[i] = kd_row<opmath_t>(s_ptr + i * C, t_ptr + i * C, C, y, w, scratch.data(), g);
      } else {
        opmath_t *s = conv, *t = conv + C, *gv = g == nullptr ? nullptr : conv + 2 * C;
        for (int64_t k = 0; k < C; ++k) s[k] = static_cast<opmath_t>(s_ptr[i * C + k]);
        if (w.use_soft)
          for (int64_t k = 0; k < C; ++k) t[k] = static_cast<opmath_t>(t_ptr[i * C + k]);
        loss_ptr[i] = kd_row<opmath_t>(s, t, C, y, w, scratch.data(), gv);
        if (g != nullptr)
          for (int64_t k = 0; k < C; ++k) g[k] = static_cast<scalar_t>(gv[k]);
      }
    }
  });
}

void rows(const RowArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.student.scalar_type(), "kd_loss_cpu",
                                  [&] { rows_typed<scalar_t>(a); });
}

#define PFL_KD_STRINGIFY2(x) #x
#define PFL_KD_STRINGIFY(x) PFL_KD_STRINGIFY2(x)
constexpr KernelTable kTable{&rows, PFL_KD_STRINGIFY(CPU_CAPABILITY)};

}  // namespace
}  // namespace CPU_CAPABILITY

const KernelTable* PFL_KD_TABLE_FN() { return &CPU_CAPABILITY::kTable; }

}  // namespace pyfastlab::kd::cpu
