#pragma once
// The matrix-exponential program of spec vae.md 3.1, written once for the CPU and the CUDA kernels:
// the choice of Taylor degree m and scaling s from ||A||_1, the Paterson-Stockmeyer evaluation of
// T_m(X), the s squarings, and the reverse-mode adjoint of exactly those products (same m and s).
//
// The program only sequences matrix operations; a backend supplies them through `Ctx`, which owns
// kSlots n x n work matrices and runs each operation to completion before returning (on the GPU a
// thread block cooperates and synchronises; on the CPU one thread runs it):
//   T* slot(int)                               the work matrices (contents persist across calls)
//   void mm(T* c, const T* a, bool ta, const T* b, bool tb, bool acc)   c (+)= op(a) op(b), c != a, b
//   void axpy(T* y, T alpha, const T* x)       y += alpha x
//   void add_identity(T* y, T alpha)           y += alpha I (the n x n diagonal only)
//   void fill_identity(T* y, T alpha)          y = alpha I
//   void zero(T* y)
//   void ldexp_copy(T* y, const T* x, int e)   y = x * 2^e, exact for every s (no underflowing 2^-s)
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace pyfastlab::vae {

// Degree set {1, 2, 4, 6, 9, 12, 16} of Paterson-Stockmeyer on 1/k!: cost {0, 1, 2, 3, 4, 5, 6}
// products, block size q = ceil(sqrt(m)) and r = m / q blocks (m = q r for every degree of the set).
constexpr int kNumDegrees = 7;
constexpr int kMaxScaling = 1100;  // s cap (vae.md 3.1): no finite norm reaches it

// theta_m: largest ||X||_1 with relative backward error <= unit roundoff (vae.md 3.1 table).
template <typename T>
struct ExpmTheta;
template <>
struct ExpmTheta<float> {
  C10_HOST_DEVICE static double at(int i) {
    constexpr double t[kNumDegrees] = {1.192093e-7, 5.978859e-4, 5.116619e-2, 0.2495289, 0.7795113, 1.461662, 2.478281};
    return t[i];
  }
};
template <>
struct ExpmTheta<double> {
  C10_HOST_DEVICE static double at(int i) {
    constexpr double t[kNumDegrees] = {2.220446e-16, 2.580957e-8, 3.397169e-4, 9.065656e-3, 8.957760e-2, 0.2996159,
                                       0.7802874};
    return t[i];
  }
};

C10_HOST_DEVICE inline int expm_degree(int i) {
  constexpr int m[kNumDegrees] = {1, 2, 4, 6, 9, 12, 16};
  return m[i];
}
C10_HOST_DEVICE inline int expm_block(int i) {
  constexpr int q[kNumDegrees] = {1, 2, 2, 3, 3, 4, 4};
  return q[i];
}

// 1/k! in double, rounded once to T by the caller.
C10_HOST_DEVICE inline double inv_factorial(int k) {
  double v = 1.0;
  for (int i = 2; i <= k; ++i) v /= i;
  return v;
}

struct ExpmPlan {
  int m = 1, q = 1, r = 1, s = 0;
  bool finite = true;  // false: ||A||_1 is NaN/inf (some entry is): the output is all NaN
};

// m and s from nu = ||A||_1 (computed in T, the accumulation type), per matrix, on the device.
template <typename T>
C10_HOST_DEVICE inline ExpmPlan expm_plan(T nu) {
  ExpmPlan p;
  if (!(nu - nu == T(0))) {  // NaN or inf
    p.finite = false;
    return p;
  }
  int i = 0;
  while (i < kNumDegrees - 1 && !(static_cast<double>(nu) <= ExpmTheta<T>::at(i))) ++i;
  const double top = ExpmTheta<T>::at(kNumDegrees - 1);
  if (static_cast<double>(nu) > top) {  // only the largest degree is left: scale
    double ratio = static_cast<double>(nu) / top;
    int s = static_cast<int>(::ceil(::log2(ratio)));
    // log2 is correctly rounded up to an ulp: make sure nu 2^-s <= theta really holds.
    while (s < kMaxScaling && ::ldexp(static_cast<double>(nu), -s) > top) ++s;
    p.s = s < 0 ? 0 : (s > kMaxScaling ? kMaxScaling : s);
  }
  p.m = expm_degree(i);
  p.q = expm_block(i);
  p.r = p.m / p.q;
  return p;
}

// Work-matrix slots used by the program.
enum ExpmSlot : int {
  kX = 0,        // X = A 2^-s; P_k (k = 1..4) lives in slot k - 1, P_1 = X
  kH0 = 4,       // Horner partial results H_0..H_3 (H_0 = T_m(X) = E_0)
  kE0 = 8,       // squarings ping-pong: E_i in kE0 + (i - 1) % 2 for i >= 1
  kG = 10,       // adjoint: current gradient and its successor
  kPbar1 = 12,   // adjoints of P_1..P_4
  kXbar = 16,
  kSlots = 17,
};

C10_HOST_DEVICE inline int power_slot(int k) { return k - 1; }  // P_k, k >= 1
C10_HOST_DEVICE inline int square_slot(int i) { return i == 0 ? kH0 : kE0 + (i - 1) % 2; }

// Forward: expects X = A 2^-s in slot kX; leaves every intermediate in its slot and returns the
// slot holding E = T_m(X)^(2^s).
template <typename T, typename Ctx>
C10_HOST_DEVICE int expm_forward_program(Ctx& c, const ExpmPlan& p) {
  const int q = p.q, r = p.r, m = p.m;
  for (int k = 2; k <= q; ++k) c.mm(c.slot(power_slot(k)), c.slot(power_slot(k - 1)), false, c.slot(kX), false, false);
  const T* Y = c.slot(power_slot(q));
  // B_j = sum_{i < q} c_{jq+i} P_i (P_0 = I); H_{r-1} = B_{r-1} + c_m Y; H_j = B_j + Y H_{j+1}.
  for (int j = r - 1; j >= 0; --j) {
    T* H = c.slot(kH0 + j);
    if (j == r - 1) {
      c.fill_identity(H, T(inv_factorial(j * q)));
      c.axpy(H, T(inv_factorial(m)), Y);
    } else {
      c.mm(H, Y, false, c.slot(kH0 + j + 1), false, false);
      c.add_identity(H, T(inv_factorial(j * q)));
    }
    for (int i = 1; i < q; ++i) c.axpy(H, T(inv_factorial(j * q + i)), c.slot(power_slot(i)));
  }
  for (int i = 1; i <= p.s; ++i) {
    const T* prev = c.slot(square_slot(i - 1));
    c.mm(c.slot(square_slot(i)), prev, false, prev, false, false);
  }
  return square_slot(p.s);
}

// Adjoint: expects the forward's slots (as expm_forward_program left them) and the upstream
// gradient of E in slot kG; leaves X_bar 2^-s = A_bar in slot kXbar. The squarings' inputs E_i are
// recomputed from H_0 (i squarings each; E_{s-1} is still in its slot), so no storage grows with s.
template <typename T, typename Ctx>
C10_HOST_DEVICE void expm_adjoint_program(Ctx& c, const ExpmPlan& p) {
  const int q = p.q, r = p.r, m = p.m;
  int g = kG, g_next = kG + 1;
  for (int i = p.s - 1; i >= 0; --i) {
    if (i < p.s - 1)  // E_i's slot was reused by E_{i+2}: rebuild E_1..E_i from H_0
      for (int t = 1; t <= i; ++t) {
        const T* prev = c.slot(square_slot(t - 1));
        c.mm(c.slot(square_slot(t)), prev, false, prev, false, false);
      }
    const T* E = c.slot(square_slot(i));
    // E_{i+1} = E_i E_i:  Ebar_i = Ebar_{i+1} E_i^T + E_i^T Ebar_{i+1}
    c.mm(c.slot(g_next), c.slot(g), false, E, true, false);
    c.mm(c.slot(g_next), E, true, c.slot(g), false, true);
    const int t = g; g = g_next; g_next = t;
  }
  for (int k = 1; k <= q; ++k) c.zero(c.slot(kPbar1 + k - 1));
  T* Ybar = c.slot(kPbar1 + q - 1);  // Y = P_q: its adjoint is P_q's
  const T* Y = c.slot(power_slot(q));
  for (int j = 0; j < r; ++j) {  // g holds H_bar_j
    for (int i = 1; i < q; ++i) c.axpy(c.slot(kPbar1 + i - 1), T(inv_factorial(j * q + i)), c.slot(g));
    if (j == r - 1) {
      c.axpy(Ybar, T(inv_factorial(m)), c.slot(g));
    } else {  // H_j = B_j + Y H_{j+1}
      c.mm(Ybar, c.slot(g), false, c.slot(kH0 + j + 1), true, true);
      c.mm(c.slot(g_next), Y, true, c.slot(g), false, false);
      const int t = g; g = g_next; g_next = t;
    }
  }
  // P_k = P_{k-1} X for k = q..2
  c.zero(c.slot(kXbar));
  for (int k = q; k >= 2; --k) {
    c.mm(c.slot(kPbar1 + k - 2), c.slot(kPbar1 + k - 1), false, c.slot(kX), true, true);
    c.mm(c.slot(kXbar), c.slot(power_slot(k - 1)), true, c.slot(kPbar1 + k - 1), false, true);
  }
  c.axpy(c.slot(kXbar), T(1), c.slot(kPbar1));
  c.ldexp_copy(c.slot(kXbar), c.slot(kXbar), -p.s);
}

}  // namespace pyfastlab::vae
