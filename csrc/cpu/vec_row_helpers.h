// Vector helpers shared by the CPU row kernels (continual, kd, mixup). Included by each family's
// *_kernels_impl.h, itself compiled once per CPU capability: the helpers live in a namespace named
// after CPU_CAPABILITY so that the AVX2 and baseline builds never collide.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace pyfastlab::cpu_vec {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// Rows per at::parallel_for task: about `elements` values each, so short rows do not drown in
// scheduling overhead.
inline int64_t row_grain(int64_t cols, int64_t elements = 8192) {
  return std::max<int64_t>(1, elements / std::max<int64_t>(cols, 1));
}

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// For arguments <= 0 or -inf (callers settle NaN and +inf rows first), where exp_u20's 20 ulp are
// far inside the fp32 tolerance and its clamping never matters.
template <typename T>
inline Vectorized<T> fast_exp(const Vectorized<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// Lanes [0, n) of a vector at x (n < size: the other lanes are `fill`), the lanes [0, n) of v with
// zeros beyond, and the matching partial store.
template <typename T>
inline Vectorized<T> load(const T* x, int64_t n, T fill) {
  using Vec = Vectorized<T>;
  return n == Vec::size() ? Vec::loadu(x) : Vec::set(Vec(fill), Vec::loadu(x, n), n);
}
template <typename T>
inline Vectorized<T> keep(const Vectorized<T>& v, int64_t n) {
  using Vec = Vectorized<T>;
  return n == Vec::size() ? v : Vec::set(Vec(0), v, n);
}
template <typename T>
inline void store(T* x, const Vectorized<T>& v, int64_t n) {
  n == Vectorized<T>::size() ? v.store(x) : v.store(x, n);
}

template <typename T>
inline T sum_lanes(const Vectorized<T>& v) {
  return at::vec::vec_reduce_all<T>([](Vectorized<T>& a, Vectorized<T>& b) { return a + b; }, v);
}
template <typename T>
inline T max_lanes(const Vectorized<T>& v) {
  return at::vec::vec_reduce_all<T>([](Vectorized<T>& a, Vectorized<T>& b) { return at::vec::maximum(a, b); }, v);
}

// NaN-propagating max of x[0, n).
template <typename T>
inline T row_max(const T* x, int64_t n) {
  using Vec = Vectorized<T>;
  Vec acc(neg_inf<T>());
  for (int64_t k = 0; k < n; k += Vec::size())
    acc = at::vec::maximum(acc, load(x + k, std::min<int64_t>(Vec::size(), n - k), neg_inf<T>()));
  return max_lanes(acc);
}

}  // namespace CPU_CAPABILITY
}  // namespace pyfastlab::cpu_vec
