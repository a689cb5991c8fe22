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
  double logp;    // s[y] - lse in float64 (from the fp32 sum), 0 when y == ignore_index
  float energy;   // -T lse
  float entropy;  // lse - sum p s
  float target_centred;  // (z[y] - max z) / T floored at -FLT_MAX, read before any gradient write
  bool has_target;
};

// The row's statistics; the per-row scalars (log sum, the target's centred logit, logp) in float64.
inline TokenRow token_row(const RowKernels& kernels, const void* row, int64_t vocab, int64_t target,
                          int64_t ignore_index, double temperature, float inv_temperature) {
  TokenRow out;
  out.stats = kernels.stats(row, vocab, inv_temperature);
  const double log_sum = std::log(static_cast<double>(out.stats.sum));
  out.has_target = target != ignore_index;
  const float target_logit = out.has_target ? kernels.load(row, target) : 0.0f;
  out.logp = out.has_target
                 ? (static_cast<double>(target_logit) - out.stats.max) / temperature - log_sum
                 : 0.0;
  out.target_centred = std::max((target_logit - out.stats.max) * inv_temperature, -FLT_MAX);
  out.energy = static_cast<float>(-(out.stats.max + temperature * log_sum));
  out.entropy = static_cast<float>(log_sum - out.stats.mean_shift);
  return out;
}

// The gradient of a row with its statistics: grad_row[v] = grad_scale (target_coef 1{v = y} -
// prob_coef p_v + entropy_coef p_v (x_v - mean)); the one-hot term is added in fp32 before the one
// rounding, from the target's logit read before any write (grad_row may be row).
inline void row_gradient(const RowKernels& kernels, const void* row, void* grad_row, int64_t vocab,
                         float inv_temperature, const TokenRow& stats, int64_t target, float grad_scale,
                         float target_coef, float prob_coef, float entropy_coef) {
  kernels.grad(row, grad_row, vocab, inv_temperature, stats.stats, grad_scale, prob_coef, entropy_coef);
  if (!stats.has_target) return;
  const float x = stats.target_centred;
  const float p = std::exp(x - stats.stats.log_sum);
  // one product: with p = 1 the bracket cancels to 0 before a huge grad_scale (tiny T) multiplies it
  const float value = grad_scale * (entropy_coef * (p * (x - stats.stats.mean_shift)) - prob_coef * p + target_coef);
  kernels.store(grad_row, target, value);
}

// Rows per parallel task: enough elements to amortise a task.
inline int64_t rows_per_task(int64_t vocab) {
  constexpr int64_t kElementsPerTask = 32768;
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(vocab, 1));
}

}  // namespace actfocus::cpu
