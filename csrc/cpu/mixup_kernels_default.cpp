// Baseline x86-64 / any-CPU build of the mixup row kernels.
#define PFL_MIXUP_TABLE_FN kernels_default
#include "mixup_kernels_impl.h"
