// AVX2 + FMA build of the mixup row kernels (CMake adds -mavx2 -mfma on x86-64 only).
#include "mixup_kernels.h"
#ifdef CPU_CAPABILITY_AVX2
#define PFL_MIXUP_TABLE_FN kernels_avx2
#include "mixup_kernels_impl.h"
#else
namespace pyfastlab::mixup::cpu {
const KernelTable* kernels_avx2() { return nullptr; }
}  // namespace pyfastlab::mixup::cpu
#endif
