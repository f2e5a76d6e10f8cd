// Row kernels of the continual ops. Included once per CPU capability by
// continual_kernels_<capability>.cpp, which defines PFL_KERNEL_TABLE_FN; everything here lives
// in a namespace named after CPU_CAPABILITY so the builds never collide.
//
// One thread owns a row and sweeps an opmath scratch copy of it that stays in L1/L2: build the
// masked row v and its max, exponentiate and sum, then write the output. DRAM sees one read of
// the logits and one write of the output.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/cpu/Loops.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "continual_kernels.h"
#include "vec_row_helpers.h"

namespace pyfastlab::continual::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

using namespace pyfastlab::cpu_vec;

// The mask row of a group as a vector select pattern (all bits set = active), for blendv. Rebuilt
// only when the group changes: consecutive rows usually belong to the same task.
template <typename opmath_t>
class RowMask {
 public:
  RowMask(const MaskView& mask, int64_t C) : mask_(mask), C_(C) {}

  // Sets arow (nullptr = all active) and bits for row i's group.
  void select(int64_t i) {
    const int64_t g = mask_.group_of(i);
    arow = mask_.row(g);
    if (arow == nullptr || g == group_) return;
    bits_.resize(C_);
    opmath_t ones;
    std::memset(&ones, 0xff, sizeof(ones));
    for (int64_t k = 0; k < C_; ++k) bits_[k] = arow[k] ? ones : opmath_t(0);
    constexpr int64_t kLanes = Vectorized<opmath_t>::size();
    all_masked_.assign(C_ / kLanes, 1);
    for (int64_t k = 0; k < C_ / kLanes * kLanes; ++k) all_masked_[k / kLanes] &= !arow[k];
    group_ = g;
  }
  const bool* arow = nullptr;
  const opmath_t* bits() const { return bits_.data(); }
  // Whether every lane of the j-th full vector of the row is masked.
  bool vector_masked(int64_t j) const { return arow != nullptr && all_masked_[j]; }
  // A mask that keeps every class.
  static const RowMask& none() {
    static const MaskView all_active;
    static const RowMask mask(all_active, 0);
    return mask;
  }

 private:
  const MaskView& mask_;
  int64_t C_;
  int64_t group_ = -1;
  std::vector<opmath_t> bits_;
  std::vector<uint8_t> all_masked_;
};

// v_k = z_k (active) | m (const-masked) | z_k + d (detach-masked), in opmath.
// Returns max_k v_k, NaN-propagating.
template <typename scalar_t, typename opmath_t>
inline opmath_t build_row(const scalar_t* z, const RowMask<opmath_t>& mask, int64_t C, bool detach, opmath_t m,
                          opmath_t d, opmath_t* v) {
  using Vec = Vectorized<opmath_t>;
  const bool* arow = mask.arow;
  const opmath_t* bits = mask.bits();
  const Vec vm(m), vd(d);
  Vec vmax(neg_inf<opmath_t>());
  int64_t k = 0;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {  // one pass: load, select, store, max
    for (; k + Vec::size() <= C; k += Vec::size()) {
      Vec x = Vec::loadu(z + k);
      if (arow != nullptr) x = Vec::blendv(detach ? x + vd : vm, x, Vec::loadu(bits + k));
      x.store(v + k);
      vmax = at::vec::maximum(vmax, x);
    }
  }
  opmath_t tail_max = neg_inf<opmath_t>();
  for (; k < C; ++k) {
    opmath_t x = static_cast<opmath_t>(z[k]);
    if (arow != nullptr && !arow[k]) x = detach ? x + d : m;
    v[k] = x;
    tail_max = (std::isnan(x) || x > tail_max) ? x : tail_max;
  }
  const opmath_t head_max = at::vec::vec_reduce_all<opmath_t>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); },
                                                              vmax);
  return (std::isnan(head_max) || std::isnan(tail_max)) ? head_max + tail_max : std::max(head_max, tail_max);
}

// out_k = v_k * c * (active ? a : b), rounded once to scalar_t. A zero scale a or b selects 0
// rather than multiplying: a stopped gradient stays 0 next to a NaN or inf.
template <typename scalar_t, typename opmath_t>
inline void scale_row(const opmath_t* v, const RowMask<opmath_t>& mask, int64_t C, opmath_t c, opmath_t a,
                      opmath_t b, scalar_t* out) {
  using Vec = Vectorized<opmath_t>;
  const bool* arow = mask.arow;
  const opmath_t ca = c * a, cb = c * b;
  int64_t k = 0;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    const Vec vca(ca), vcb(cb);
    const opmath_t* bits = mask.bits();
    for (; k + Vec::size() <= C; k += Vec::size()) {
      const Vec x = Vec::loadu(v + k);
      Vec y = a == opmath_t(0) ? Vec(0) : x * vca;
      if (arow != nullptr) y = Vec::blendv(b == opmath_t(0) ? Vec(0) : x * vcb, y, Vec::loadu(bits + k));
      y.store(out + k);
    }
  }
  for (; k < C; ++k) {
    const bool active = arow == nullptr || arow[k];
    const opmath_t s = active ? a : b;
    out[k] = static_cast<scalar_t>(s == opmath_t(0) ? opmath_t(0) : v[k] * (active ? ca : cb));
  }
}

// sum_k exp(v_k - M) with a fixed lane order; with kStore, v_k is replaced by exp(v_k - M).
// With const_mask (const mode: every masked entry holds m), vectors whose lanes are all masked
// take exp(m - M) once per row instead of one exp per entry.
template <typename opmath_t, bool kStore>
inline opmath_t exp_sum(opmath_t* v, int64_t C, opmath_t M, const RowMask<opmath_t>* const_mask, opmath_t m) {
  using Vec = Vectorized<opmath_t>;
  const Vec vM(M);
  const bool skip = const_mask != nullptr && const_mask->arow != nullptr;
  const Vec e_masked = skip ? (Vec(m) - vM).exp() : Vec(0);
  Vec acc(0);
  int64_t k = 0;
  for (; k + Vec::size() <= C; k += Vec::size()) {
    const Vec e = skip && const_mask->vector_masked(k / Vec::size()) ? e_masked : (Vec::loadu(v + k) - vM).exp();
    if constexpr (kStore) e.store(v + k);
    acc = acc + e;
  }
  if (k < C) {  // the tail as one partial vector: no scalar exp calls
    const int64_t rest = C - k;
    const Vec e = Vec::set(Vec(0), (Vec::loadu(v + k, rest) - vM).exp(), rest);
    if constexpr (kStore) e.store(v + k, rest);
    acc = acc + e;
  }
  return at::vec::vec_reduce_all<opmath_t>([](Vec& a, Vec& b) { return a + b; }, acc);
}

// Gradient multipliers: s_n on active entries; s_o on detach-masked ones, 0 on const-masked ones.
template <typename opmath_t>
struct EntryScale {
  opmath_t active, masked;
};

template <typename opmath_t>
EntryScale<opmath_t> entry_scale(bool detach, double old_grad_scale, double new_grad_scale) {
  return {static_cast<opmath_t>(new_grad_scale), detach ? static_cast<opmath_t>(old_grad_scale) : opmath_t(0)};
}

// out_k = v_k + c, rounded once to scalar_t.
template <typename scalar_t, typename opmath_t>
inline void shift_row(const opmath_t* v, int64_t C, opmath_t c, scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    at::vec::map([c](Vectorized<opmath_t> x) { return x + Vectorized<opmath_t>(c); }, out, v, C);
  } else {
    for (int64_t k = 0; k < C; ++k) out[k] = static_cast<scalar_t>(v[k] + c);
  }
}

void cross_entropy(const CrossEntropyArgs& a) {
  const int64_t N = a.logits.size(0), C = a.logits.size(1);
  const bool want_grad = a.grad.defined() && a.grad.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.logits.scalar_type(), "masked_cross_entropy_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* z_ptr = a.logits.const_data_ptr<scalar_t>();
    const int64_t* y_ptr = a.target.const_data_ptr<int64_t>();
    scalar_t* g_ptr = want_grad ? a.grad.data_ptr<scalar_t>() : nullptr;
    const opmath_t* w_ptr = a.weight.defined() ? a.weight.const_data_ptr<opmath_t>() : nullptr;
    opmath_t* loss_ptr = a.row_loss.data_ptr<opmath_t>();
    opmath_t* out_ptr = a.row_out.data_ptr<opmath_t>();
    bool* counted_ptr = a.counted.data_ptr<bool>();
    const opmath_t m = static_cast<opmath_t>(a.mask_value), d = static_cast<opmath_t>(a.offset);
    const auto scale = entry_scale<opmath_t>(a.detach, a.old_grad_scale, a.new_grad_scale);
    const opmath_t mean_coef = static_cast<opmath_t>(a.mean_coef);
    const MaskView mask = a.mask;

    at::parallel_for(0, N, row_grain(C), [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> scratch(C);
      opmath_t* v = scratch.data();
      RowMask<opmath_t> row_mask(mask, C);
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* g = want_grad ? g_ptr + i * C : nullptr;
        const int64_t y = y_ptr[i];
        row_mask.select(i);
        const bool valid = y != a.ignore_index && (row_mask.arow == nullptr || row_mask.arow[y]);
        const opmath_t M = valid ? build_row(z_ptr + i * C, row_mask, C, a.detach, m, d, v) : neg_inf<opmath_t>();
        if (M == neg_inf<opmath_t>()) {  // not counted: zero loss, zero gradient
          counted_ptr[i] = false;
          loss_ptr[i] = out_ptr[i] = opmath_t(0);
          if (g != nullptr) std::fill(g, g + C, scalar_t(0));
          continue;
        }
        const opmath_t zy = v[y];
        const opmath_t S = exp_sum<opmath_t, true>(v, C, M, a.detach ? nullptr : &row_mask, m);
        const opmath_t l = (M - zy) + std::log(S);  // M + log S - zy rounds log S away once |M| >> log S
        const opmath_t w = w_ptr ? w_ptr[i] : opmath_t(1);
        counted_ptr[i] = true;
        loss_ptr[i] = l;
        out_ptr[i] = w * l;
        if (g == nullptr) continue;
        const opmath_t coef = w * mean_coef;
        const opmath_t inv = coef / S;
        scale_row(v, row_mask, C, inv, scale.active, scale.masked, g);
        // p_y - 1 in opmath before rounding: no cancellation in reduced precision.
        if (scale.active != opmath_t(0)) g[y] = static_cast<scalar_t>((v[y] / S - opmath_t(1)) * coef * scale.active);
      }
    });
  });
}

void scale_rows(at::Tensor& grad, const at::Tensor& counted, const at::Tensor& row_scale) {
  const int64_t N = grad.size(0), C = grad.size(1);
  const bool per_row = row_scale.numel() == N && N != 1;
  const bool* counted_ptr = counted.const_data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "masked_ce_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    scalar_t* g_ptr = grad.data_ptr<scalar_t>();
    const opmath_t* s_ptr = row_scale.const_data_ptr<opmath_t>();
    at::parallel_for(0, N, row_grain(C), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (!counted_ptr[i]) continue;  // select, not multiply: stays 0 even for a NaN upstream
        const opmath_t s = s_ptr[per_row ? i : 0];
        scalar_t* g = g_ptr + i * C;
        for (int64_t k = 0; k < C; ++k) g[k] = static_cast<scalar_t>(static_cast<opmath_t>(g[k]) * s);
      }
    });
  });
}

void softmax_forward(const SoftmaxArgs& a) {
  const int64_t N = a.logits.size(0), C = a.logits.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.logits.scalar_type(), "masked_softmax_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* z_ptr = a.logits.const_data_ptr<scalar_t>();
    scalar_t* o_ptr = a.out.data_ptr<scalar_t>();
    const opmath_t m = static_cast<opmath_t>(a.mask_value), d = static_cast<opmath_t>(a.offset);
    const MaskView mask = a.mask;
    at::parallel_for(0, N, row_grain(C), [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> scratch(C);
      opmath_t* v = scratch.data();
      RowMask<opmath_t> row_mask(mask, C);
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* o = o_ptr + i * C;
        row_mask.select(i);
        const opmath_t M = build_row(z_ptr + i * C, row_mask, C, a.detach, m, d, v);
        if (M == neg_inf<opmath_t>()) {  // every entry -inf: defined as all 0 (log: all -inf)
          std::fill(o, o + C, a.log ? scalar_t(neg_inf<opmath_t>()) : scalar_t(0));
          continue;
        }
        if (a.log) {
          const opmath_t lse = M + std::log(exp_sum<opmath_t, false>(v, C, M, a.detach ? nullptr : &row_mask, m));
          shift_row(v, C, -lse, o);
        } else {
          const opmath_t inv = opmath_t(1) / exp_sum<opmath_t, true>(v, C, M, a.detach ? nullptr : &row_mask, m);
          scale_row(v, RowMask<opmath_t>::none(), C, inv, opmath_t(1), opmath_t(1), o);
        }
      }
    });
  });
}

void softmax_backward(const SoftmaxArgs& a) {
  const int64_t N = a.out.size(0), C = a.out.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.out.scalar_type(), "masked_softmax_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    using Vec = Vectorized<opmath_t>;
    const scalar_t* y_ptr = a.out.const_data_ptr<scalar_t>();
    const scalar_t* gb_ptr = a.grad_out.const_data_ptr<scalar_t>();
    scalar_t* dz_ptr = a.dz.data_ptr<scalar_t>();
    const auto scale = entry_scale<opmath_t>(a.detach, a.old_grad_scale, a.new_grad_scale);
    const bool log = a.log;
    const MaskView mask = a.mask;
    at::parallel_for(0, N, row_grain(C), [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> scratch(3 * C);
      opmath_t *yv_buf = scratch.data(), *gv_buf = yv_buf + C, *dv = gv_buf + C;
      RowMask<opmath_t> row_mask(mask, C);
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* y = y_ptr + i * C;
        const scalar_t* gb = gb_ptr + i * C;
        scalar_t* dzi = dz_ptr + i * C;
        const opmath_t *yv = yv_buf, *gv = gv_buf;
        if constexpr (std::is_same_v<scalar_t, opmath_t>) {
          yv = reinterpret_cast<const opmath_t*>(y), gv = reinterpret_cast<const opmath_t*>(gb);
        } else {
          for (int64_t k = 0; k < C; ++k) yv_buf[k] = static_cast<opmath_t>(y[k]);
          for (int64_t k = 0; k < C; ++k) gv_buf[k] = static_cast<opmath_t>(gb[k]);
        }
        // Row sums with vector-lane partials: accurate for long rows, fixed order.
        const opmath_t ymax = at::vec::reduce_all<opmath_t>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, yv, C);
        // softmax: sum_j gbar_j p_j; log: sum_j gbar_j
        const opmath_t dot = log ? at::vec::reduce_all<opmath_t>([](Vec& a, Vec& b) { return a + b; }, gv, C)
                                 : at::vec::map2_reduce_all<opmath_t>([](Vec a, Vec b) { return a * b; },
                                                                     [](Vec a, Vec b) { return a + b; }, yv, gv, C);
        // A dead row (every v = -inf) is all 0 (log: all -inf); its gradient is defined as 0.
        if (log ? ymax == neg_inf<opmath_t>() : ymax == opmath_t(0)) {
          std::fill(dzi, dzi + C, scalar_t(0));
          continue;
        }
        const Vec vdot(dot);
        row_mask.select(i);
        if (log) {  // dv = gbar - exp(y) * sum(gbar)
          // Entries whose scale is 0 are dropped by scale_row: no exp for vectors made only of them.
          const bool skip_masked = scale.masked == opmath_t(0);
          int64_t k = 0;
          for (; k + Vec::size() <= C; k += Vec::size()) {
            const Vec d = skip_masked && row_mask.vector_masked(k / Vec::size())
                              ? Vec(0)
                              : Vec::loadu(gv + k) - Vec::loadu(yv + k).exp() * vdot;
            d.store(dv + k);
          }
          at::vec::map2([=](Vec yk, Vec gk) { return gk - yk.exp() * vdot; }, dv + k, yv + k, gv + k, C - k);
        } else {  // dv = y * (gbar - sum(gbar * y))
          at::vec::map2([=](Vec yk, Vec gk) { return yk * (gk - vdot); }, dv, yv, gv, C);
        }
        scale_row(dv, row_mask, C, opmath_t(1), scale.active, scale.masked, dzi);
      }
    });
  });
}

template <typename scalar_t>
void pgd_step_typed(at::TensorIteratorBase& iter, double eps, double step_size, double lo, double hi) {
  using opmath_t = at::opmath_type<scalar_t>;
  // Scalars rounded to opmath first, as the eager chain does with Python scalars.
  const opmath_t a = static_cast<opmath_t>(step_size), e = static_cast<opmath_t>(eps);
  const opmath_t l = static_cast<opmath_t>(lo), h = static_cast<opmath_t>(hi);
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    using Vec = Vectorized<scalar_t>;
    at::native::cpu_kernel_vec(
        iter, [=](scalar_t x, scalar_t g, scalar_t x0) -> scalar_t { return pgd_scalar<opmath_t>(x, g, x0, a, e, l, h); },
        [=](Vec x, Vec g, Vec x0) -> Vec {
          const Vec zero(0), one(1);
          Vec s = (Vec(g > zero) & one) - (Vec(g < zero) & one);
          s = Vec::blendv(s, g, g.isnan());
          const Vec u = at::vec::minimum(at::vec::maximum(x + Vec(a) * s, x0 - Vec(e)), x0 + Vec(e));
          return at::vec::clamp(u, Vec(l), Vec(h));
        });
  } else {  // half types: opmath throughout, one rounding
    at::native::cpu_kernel(iter, [=](scalar_t x, scalar_t g, scalar_t x0) -> scalar_t {
      return static_cast<scalar_t>(pgd_scalar<opmath_t>(x, g, x0, a, e, l, h));
    });
  }
}

void pgd_step(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_clean, double eps, double step_size,
              double lo, double hi) {
  auto iter = pgd_iterator(x_adv, grad, x_clean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_adv.scalar_type(), "pgd_linf_step_cpu",
                                  [&] { pgd_step_typed<scalar_t>(iter, eps, step_size, lo, hi); });
}

#define PFL_STRINGIFY2(x) #x
#define PFL_STRINGIFY(x) PFL_STRINGIFY2(x)
constexpr KernelTable kTable{&cross_entropy, &scale_rows, &softmax_forward, &softmax_backward, &pgd_step,
                             PFL_STRINGIFY(CPU_CAPABILITY)};

}  // namespace
}  // namespace CPU_CAPABILITY

const KernelTable* PFL_KERNEL_TABLE_FN() { return &CPU_CAPABILITY::kTable; }

}  // namespace pyfastlab::continual::cpu
