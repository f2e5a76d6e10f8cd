// Row kernels compiled twice, for baseline x86-64 and for AVX2+FMA: which table this CPU runs.
#pragma once

#include <cstdlib>
#include <cstring>

namespace pyfastlab {

// AVX2 when it was compiled in and the CPU has it, unless ATEN_CPU_CAPABILITY=default forces the
// baseline (the same switch ATen's own kernels obey).
template <typename Table>
const Table* pick_cpu_kernels(const Table* (*baseline)(), const Table* (*avx2)()) {
  const char* forced = std::getenv("ATEN_CPU_CAPABILITY");
  const bool force_baseline = forced != nullptr && std::strcmp(forced, "default") == 0;
#if defined(__x86_64__) || defined(_M_X64)
  if (!force_baseline && avx2() != nullptr && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return avx2();
#endif
  return baseline();
}

}  // namespace pyfastlab
