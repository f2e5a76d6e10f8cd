// AVX2 + FMA build of the continual row kernels (CMake adds -mavx2 -mfma on x86-64 only).
#include "continual_kernels.h"
#ifdef CPU_CAPABILITY_AVX2
#define PFL_KERNEL_TABLE_FN kernels_avx2
#include "continual_kernels_impl.h"
#else
namespace pyfastlab::continual::cpu {
const KernelTable* kernels_avx2() { return nullptr; }
}  // namespace pyfastlab::continual::cpu
#endif
