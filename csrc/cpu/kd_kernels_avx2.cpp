// AVX2 + FMA build of the kd_loss row kernels (CMake adds -mavx2 -mfma on x86-64 only).
#include "kd_kernels.h"
#ifdef CPU_CAPABILITY_AVX2
#define PFL_KD_TABLE_FN kernels_avx2
#include "kd_kernels_impl.h"
#else
namespace pyfastlab::kd::cpu {
const KernelTable* kernels_avx2() { return nullptr; }
}  // namespace pyfastlab::kd::cpu
#endif
