// Vectorised kernels over one logits row (CPU). Each is compiled once per CPU capability
// (row_kernels_default.cpp, row_kernels_avx2.cpp, row_kernels_avx512.cpp) and picked at run time by
// row_kernels().
#pragma once

#include <cstdint>

#include "core/row_dtype.h"

namespace actfocus::cpu {

// The float constants of a row's logit transform (core/row_transform.h): without softcap
// x_v = (z_v - max z) slope; with softcap (cap_in > 0) x_v = cap_out (tanh(cap_in z_v) - tanh(cap_in max z))
// and ds/dz = slope (1 - tanh^2(cap_in z)). x is exact for extreme logits without softcap (the
// difference is taken before the scaling).
struct RowTransformFloats {
  float slope;    // logit_scale / T
  float cap_in;   // logit_scale / softcap; 0: no softcap
  float cap_out;  // softcap / T
};

// Softmax statistics of a row on its centred logits x_v, with fp32 sums:
//   sum = sum_v exp(x_v), log_sum = log(sum), mean_shift = sum_v exp(x_v) x_v / sum,
//   lse = s(max z) + log_sum,  entropy = log_sum - mean_shift.
struct RowStats {
  float max;  // max z (raw)
  float sum;
  float log_sum;  // log(sum) rounded to fp32, for the gradient
  float mean_shift;
  float cap_max;  // with softcap: the kernels' own transform of max z (their tanh or sigmoid of it: the x of max z is 0)
  bool tanh_in_range;  // with softcap: the statistics pass took its transform's in-range variant (every
                       // |2 cap_in z| <= 80, no -inf); the gradient pass takes the same
};

// The extra statistics of a row (token_stats' extra_stats), from the same pass:
//   sum_sq = sum_v exp(2 x_v); sum_base = sum_v z_v without softcap, sum_v tanh(cap_in z_v) with it (so that
//   mean_v s_v = (logit_scale or softcap) sum_base / (V T)), accumulated in float64 from accurate terms (the
//   mean may cancel), -inf when an entry is -inf; first_max = the first index v with x_v = 0 (the first
//   maximum of s), -1 for none (a NaN row).
struct RowExtras {
  float sum_sq;
  double sum_base;
  int64_t first_max;
};

struct RowKernels {
  // Statistics of row[0:vocab]; -inf entries contribute 0 (the row needs one finite entry); extras
  // (may be null) receives the extra statistics. next_row (may be null): the row read next by this
  // thread, which the kernel may prefetch into L2 while it computes (the memory read of one row then
  // overlaps the arithmetic of the previous one).
  RowStats (*stats)(const void* row, int64_t vocab, const RowTransformFloats& transform, const void* next_row,
                    RowExtras* extras);
  // grad_row[v] = grad_scale * ds/dz_v / slope * (centred_coef * p_v (x_v - mean_shift) - coef * p_v)
  // with p_v = exp(x_v - log_sum): the row gradient without its one-hot term.
  // grad_row may equal row (each element is read before it is written).
  void (*grad)(const void* row, void* grad_row, int64_t vocab, const RowTransformFloats& transform,
               const RowStats& stats, float grad_scale, float coef, float centred_coef);
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
