// Vectorised kernels over one logits row (CPU). Each is compiled once per CPU capability
// (row_kernels_default.cpp, row_kernels_avx2.cpp) and picked at run time by row_kernels().
#pragma once

#include <cstdint>

#include "core/row_dtype.h"

namespace actfocus::cpu {

// Softmax statistics of a row s = z / T, on the centred logits x_v = (z_v - max z) / T (exact for
// extreme logits: the difference is taken before the scaling), with fp32 sums:
//   sum = sum_v exp(x_v), log_sum = log(sum), mean_shift = sum_v exp(x_v) x_v / sum,
//   lse = max z / T + log_sum,  energy = -(max z + T log_sum),  entropy = log_sum - mean_shift.
struct RowStats {
  float max;  // max z (unscaled)
  float sum;
  float log_sum;  // log(sum) rounded to fp32, for the gradient
  float mean_shift;
};

struct RowKernels {
  // Statistics of row[0:vocab]; -inf entries contribute 0 (the row needs one finite entry).
  // next_row (may be null): the row read next by this thread, which the kernel may prefetch into L2
  // while it computes (the memory read of one row then overlaps the arithmetic of the previous one).
  RowStats (*stats)(const void* row, int64_t vocab, float inv_temperature, const void* next_row);
  // grad_row[v] = grad_scale * (entropy_coef * p_v (x_v - mean_shift) - coef * p_v) with
  // p_v = exp(x_v - log_sum): the row gradient without its one-hot term.
  // grad_row may equal row (each element is read before it is written).
  void (*grad)(const void* row, void* grad_row, int64_t vocab, float inv_temperature,
               const RowStats& stats, float grad_scale, float coef, float entropy_coef);
  // row[index] as float, and row[index] = value rounded to the row's dtype.
  float (*load)(const void* row, int64_t index);
  void (*store)(void* row, int64_t index, float value);
  // row[0:vocab] = 0.
  void (*zero)(void* row, int64_t vocab);
};

// Kernels for dtype on this machine's best compiled capability ("avx512", "avx2" or "default"),
// respecting ATEN_CPU_CAPABILITY.
const RowKernels& row_kernels(RowDtype dtype);
const char* row_kernels_capability();

// Per-capability tables (one per translation unit); avx2 / avx512 are null where not compiled.
const RowKernels* row_kernels_default(RowDtype dtype);
const RowKernels* row_kernels_avx2(RowDtype dtype);
const RowKernels* row_kernels_avx512(RowDtype dtype);

}  // namespace actfocus::cpu
