#pragma once
// CPU work matrices for the expm program (pyfastlab/expm_engine.h): one thread, one matrix at a
// time, `slots` n x n matrices stored with a padded row stride LD (8/16/32/64, or n when LD = 0).
// Zero padding is exact for products and 1-norms, and a compile-time row length lets the compiler
// vectorise every inner loop (spec vae.md 6, CPU). Padding columns stay zero: operations write the
// first n rows only and their columns beyond n are products/sums of zero padding.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace pyfastlab::vae::cpu {

template <typename T, int LD>
class SmallMatrices {
 public:
  SmallMatrices(int n, int slots) : n_(n), ld_(LD > 0 ? LD : n), data_(static_cast<size_t>(slots + 1) * n * ld_, T(0)) {
    tmp_ = data_.data() + static_cast<size_t>(slots) * n * ld_;
  }

  int n() const { return n_; }
  int ld() const { return ld_; }
  T* slot(int i) { return data_.data() + static_cast<size_t>(i) * n_ * ld_; }

  // c (+)= op(a) op(b). op(b) = b^T goes through a transposed copy so the inner loop stays contiguous.
  void mm(T* __restrict c, const T* a, bool ta, const T* b, bool tb, bool acc) {
    const T* bb = b;
    if (tb) {
      transpose(tmp_, b);
      bb = tmp_;
    }
    const int n = n_, ld = ld_;
    for (int i = 0; i < n; ++i) {
      T* __restrict cr = c + static_cast<size_t>(i) * ld;
      if (!acc) std::fill(cr, cr + width(), T(0));
      for (int k = 0; k < n; ++k) {
        const T aik = ta ? a[static_cast<size_t>(k) * ld + i] : a[static_cast<size_t>(i) * ld + k];
        const T* __restrict br = bb + static_cast<size_t>(k) * ld;
        row_axpy(cr, aik, br);
      }
    }
  }

  void axpy(T* y, T alpha, const T* x) {
    for (int i = 0; i < n_; ++i) row_axpy(y + static_cast<size_t>(i) * ld_, alpha, x + static_cast<size_t>(i) * ld_);
  }
  void add_identity(T* y, T alpha) {
    for (int i = 0; i < n_; ++i) y[static_cast<size_t>(i) * ld_ + i] += alpha;
  }
  void fill_identity(T* y, T alpha) {
    zero(y);
    add_identity(y, alpha);
  }
  void zero(T* y) { std::fill(y, y + static_cast<size_t>(n_) * ld_, T(0)); }
  void ldexp_copy(T* y, const T* x, int e) {
    for (size_t i = 0; i < static_cast<size_t>(n_) * ld_; ++i) y[i] = std::ldexp(x[i], e);
  }
  void fill(T* y, T value) {  // n x n entries; the padding stays zero
    for (int i = 0; i < n_; ++i) std::fill(y + static_cast<size_t>(i) * ld_, y + static_cast<size_t>(i) * ld_ + n_, value);
  }

  // dense n x n <-> slot
  void load(T* y, const T* src, T sign = T(1)) {
    for (int i = 0; i < n_; ++i)
      for (int j = 0; j < n_; ++j) y[static_cast<size_t>(i) * ld_ + j] = sign * src[static_cast<size_t>(i) * n_ + j];
  }
  void store(T* dst, const T* y) const {
    for (int i = 0; i < n_; ++i)
      for (int j = 0; j < n_; ++j) dst[static_cast<size_t>(i) * n_ + j] = y[static_cast<size_t>(i) * ld_ + j];
  }
  // max column abs-sum, in T
  T norm1(const T* y) const {
    T best = T(0);
    std::vector<T>& s = colsum_;
    s.assign(ld_, T(0));
    for (int i = 0; i < n_; ++i)
      for (int j = 0; j < n_; ++j) s[j] += std::abs(y[static_cast<size_t>(i) * ld_ + j]);
    for (int j = 0; j < n_; ++j) {
      if (!(s[j] - s[j] == T(0))) return s[j] != s[j] ? s[j] : std::numeric_limits<T>::infinity();
      best = std::max(best, s[j]);
    }
    return best;
  }
  // out[j] = sum_i v[i] y[i, j] (row vector times matrix), or with y^T
  void vecmat(T* out, const T* v, const T* y, bool ty) const {
    for (int j = 0; j < n_; ++j) {
      T acc = T(0);
      for (int i = 0; i < n_; ++i)
        acc += v[i] * (ty ? y[static_cast<size_t>(j) * ld_ + i] : y[static_cast<size_t>(i) * ld_ + j]);
      out[j] = acc;
    }
  }

 private:
  int width() const { return LD > 0 ? LD : n_; }
  void row_axpy(T* __restrict y, T alpha, const T* __restrict x) const {
    if constexpr (LD > 0) {
      for (int j = 0; j < LD; ++j) y[j] += alpha * x[j];
    } else {
      for (int j = 0; j < n_; ++j) y[j] += alpha * x[j];
    }
  }
  void transpose(T* dst, const T* src) const {
    for (int i = 0; i < n_; ++i)
      for (int j = 0; j < n_; ++j) dst[static_cast<size_t>(j) * ld_ + i] = src[static_cast<size_t>(i) * ld_ + j];
  }

  int n_, ld_;
  std::vector<T> data_;
  T* tmp_;
  mutable std::vector<T> colsum_;
};

// Calls f.template operator()<LD>() with the padded row stride for n (vae.md 6: 8/16/32/64, else n).
template <typename F>
void with_padded_ld(int64_t n, F&& f) {
  if (n <= 8) f.template operator()<8>();
  else if (n <= 16) f.template operator()<16>();
  else if (n <= 32) f.template operator()<32>();
  else if (n <= 64) f.template operator()<64>();
  else f.template operator()<0>();
}

}  // namespace pyfastlab::vae::cpu
