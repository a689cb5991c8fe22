// Per-row statistics of the CPU ops: runs the row kernels and finishes logp / energy / entropy.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "cpu/kernels/row_kernels.h"

namespace actfocus::cpu {

struct TokenRow {
  RowStats stats;
  float logp;     // s[y] - lse, 0 when y == ignore_index
  float energy;   // -T lse
  float entropy;  // lse - sum p s
  float target_centred;  // (z[y] - max z) / T floored at -FLT_MAX, read before any gradient write
  bool has_target;
};

inline TokenRow token_row(const RowKernels& kernels, const void* row, int64_t vocab, int64_t target,
                          int64_t ignore_index, float temperature, float inv_temperature) {
  TokenRow out;
  out.stats = kernels.stats(row, vocab, inv_temperature);
  out.has_target = target != ignore_index;
  const float target_centred =
      out.has_target ? (kernels.load(row, target) - out.stats.max) * inv_temperature : 0.0f;
  out.logp = out.has_target ? target_centred - out.stats.log_sum : 0.0f;
  out.target_centred = std::max(target_centred, -FLT_MAX);
  out.energy = -(out.stats.max + temperature * out.stats.log_sum);
  out.entropy = out.stats.log_sum - out.stats.mean_shift;
  return out;
}

// Rows per parallel task: enough elements to amortise a task.
inline int64_t rows_per_task(int64_t vocab) {
  constexpr int64_t kElementsPerTask = 32768;
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(vocab, 1));
}

}  // namespace actfocus::cpu
