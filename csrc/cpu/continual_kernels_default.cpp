// Baseline x86-64 / any-CPU build of the continual row kernels.
#define PFL_KERNEL_TABLE_FN kernels_default
#include "continual_kernels_impl.h"
