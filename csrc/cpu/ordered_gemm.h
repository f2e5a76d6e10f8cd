#pragma once
// A GEMM whose every output element is one sum over k in the order 0, 1, ..., K - 1, computed by
// one thread: bit-identical for any thread count. The BLAS is not (MKL splits the reduction
// differently at 4 threads than at 1), so ops that promise thread-count determinism use this
// for their CPU GEMMs. Row-major, contiguous operands; register tiles of kRows x 2 vectors.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace pyfastlab::cpu {

namespace ordered_gemm_detail {

template <typename T>
void tile(const T* a, const T* b, T* out, int64_t K, int64_t N, int64_t i0, int64_t rows, int64_t j0,
          int64_t cols) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t kRows = 4, V = Vec::size();
  Vec acc[kRows][2];
  for (int64_t r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = Vec(T(0));
  const int64_t n0 = std::min(cols, V), n1 = cols - n0;
  for (int64_t k = 0; k < K; ++k) {
    const T* bk = b + k * N + j0;
    const Vec b0 = n0 == V ? Vec::loadu(bk) : Vec::loadu(bk, n0);
    const Vec b1 = n1 == V ? Vec::loadu(bk + V) : (n1 > 0 ? Vec::loadu(bk + V, n1) : Vec(T(0)));
    for (int64_t r = 0; r < rows; ++r) {
      const Vec ar(a[(i0 + r) * K + k]);
      acc[r][0] = at::vec::fmadd(ar, b0, acc[r][0]);
      acc[r][1] = at::vec::fmadd(ar, b1, acc[r][1]);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    T* o = out + (i0 + r) * N + j0;
    acc[r][0].store(o, n0);
    if (n1 > 0) acc[r][1].store(o + V, n1);
  }
}

}  // namespace ordered_gemm_detail

// out [M, N] = a [M, K] @ b [K, N] (fp32 or fp64, contiguous).
inline at::Tensor ordered_mm(const at::Tensor& a_in, const at::Tensor& b_in) {
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  at::Tensor out = at::empty({M, N}, a.options());
  if (out.numel() == 0) return out;
  if (K == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "ordered_mm", [&] {
    constexpr int64_t kRows = 4, kCols = 2 * at::vec::Vectorized<scalar_t>::size();
    const int64_t row_tiles = (M + kRows - 1) / kRows, col_tiles = (N + kCols - 1) / kCols;
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    // tiles of ~64 kFLOP per task (a tile is 2 K kRows kCols); the partition never changes a tile's sums
    const int64_t grain = std::max<int64_t>(1, 32768 / (K * kRows * kCols));
    at::parallel_for(0, row_tiles * col_tiles, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t i0 = t / col_tiles * kRows, j0 = t % col_tiles * kCols;
        ordered_gemm_detail::tile(pa, pb, po, K, N, i0, std::min(kRows, M - i0), j0, std::min(kCols, N - j0));
      }
    });
  });
  return out;
}

}  // namespace pyfastlab::cpu
