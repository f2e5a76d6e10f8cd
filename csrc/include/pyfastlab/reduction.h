#pragma once
// The reduction codes of every op schema that takes `int reduction`, one definition for all
// families (Python: pyfastlab/ops/_reduction.py). kd_loss's "batchmean" is kMean: the mean over
// the rows that count.
#include <c10/util/Exception.h>

#include <cstdint>

namespace pyfastlab {

enum Reduction : int64_t { kNone = 0, kSum = 1, kMean = 2 };

inline void check_reduction(const char* op, int64_t reduction) {
  TORCH_CHECK_VALUE(reduction == kNone || reduction == kSum || reduction == kMean, op,
                    ": reduction must be 0 (none), 1 (sum) or 2 (mean), got ", reduction);
}

}  // namespace pyfastlab
