// Baseline x86-64 / any-CPU build of the kd_loss row kernels.
#define PFL_KD_TABLE_FN kernels_default
#include "kd_kernels_impl.h"
