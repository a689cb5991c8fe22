// Per-row statistics of the CPU ops: runs the row kernels and finishes logp / energy / entropy.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "core/row_transform.h"
#include "cpu/kernels/row_kernels.h"

namespace actfocus::cpu {

// A row's transform: the float64 parameters (core/row_transform.h) and the kernels' float constants.
struct RowForm {
  RowTransform transform;
  RowTransformFloats floats;

  explicit RowForm(const RowTransform& t)
      : transform(t), floats{t.slope(), t.cap_in(), t.cap_out()} {}
};

struct TokenRow {
  RowStats stats;
  double logp;    // s[y] - lse in float64 (from the fp32 sum), 0 when y == ignore_index
  float energy;   // -T lse
  float entropy;  // lse - sum p s
  float target_centred;  // x_y = s[y] - s(max z) floored at -FLT_MAX, read before any gradient write
  float target_slope;    // (ds/dz)_y / (logit_scale / T): 1 - tanh^2 with softcap, else 1
  bool has_target;
};

// The extra statistics of a row (token_stats' extra_stats).
struct TokenExtras {
  float log_sum_sq_probs;  // log sum_v p_v^2
  float mean_logits;       // mean_v s_v
  bool is_top1;            // y is the first index of max_v s_v
};

// The row's statistics; the per-row scalars (log sum, the target's centred logit, logp) in float64.
// next_row: the row this thread reads next (null: none), prefetched by the kernel; extras (may be
// null): the row's extra sums, filled by the same pass.
inline TokenRow token_row(const RowKernels& kernels, const void* row, int64_t vocab, int64_t target,
                          int64_t ignore_index, const RowForm& form, const void* next_row = nullptr,
                          RowExtras* extras = nullptr) {
  const RowTransform& t = form.transform;
  TokenRow out;
  out.stats = kernels.stats(row, vocab, form.floats, next_row, extras);
  const double log_sum = std::log(static_cast<double>(out.stats.sum));
  out.has_target = target != ignore_index;
  const float target_logit = out.has_target ? kernels.load(row, target) : 0.0f;
  out.logp = out.has_target ? t.centred(target_logit, out.stats.max) - log_sum : 0.0;
  out.target_centred = t.capped() ? std::max(static_cast<float>(t.centred(target_logit, out.stats.max)), -FLT_MAX)
                                  : std::max((target_logit - out.stats.max) * form.floats.slope, -FLT_MAX);
  out.target_slope = static_cast<float>(t.slope_factor(target_logit));
  out.energy = static_cast<float>(-(t.tempered(out.stats.max) + t.temperature * log_sum));
  out.entropy = static_cast<float>(log_sum - out.stats.mean_shift);
  return out;
}

// The extra statistics from a row's statistics and extra sums:
//   log sum p^2 = log sum exp(2 x) - 2 log sum exp(x),  mean s = (logit_scale or softcap) mean(z or tanh) / T,
//   is_top1 = the first x = 0 is at y (false for an ignored target or a NaN row).
inline TokenExtras token_extras(const TokenRow& row, const RowExtras& extras, int64_t vocab, int64_t target,
                                const RowTransform& transform) {
  TokenExtras out;
  const double log_sum = std::log(static_cast<double>(row.stats.sum));
  out.log_sum_sq_probs = static_cast<float>(std::log(static_cast<double>(extras.sum_sq)) - 2.0 * log_sum);
  const double base_scale = transform.capped() ? transform.softcap : transform.logit_scale;
  out.mean_logits = static_cast<float>(base_scale * (extras.sum_base / static_cast<double>(vocab)) / transform.temperature);
  out.is_top1 = row.has_target && row.stats.sum == row.stats.sum && extras.first_max == target;
  return out;
}

// The gradient of a row with its statistics: grad_row[v] = grad_scale ds/dz_v / slope (target_coef 1{v = y}
// - prob_coef p_v + centred_coef p_v (x_v - mean)); the one-hot term is added in fp32 before the one
// rounding, from the target's logit read before any write (grad_row may be row).
inline void row_gradient(const RowKernels& kernels, const void* row, void* grad_row, int64_t vocab,
                         const RowForm& form, const TokenRow& stats, int64_t target, float grad_scale,
                         float target_coef, float prob_coef, float centred_coef) {
  kernels.grad(row, grad_row, vocab, form.floats, stats.stats, grad_scale, prob_coef, centred_coef);
  if (!stats.has_target) return;
  const float x = stats.target_centred;
  const float p = std::exp(x - stats.stats.log_sum);
  // one product: with p = 1 the bracket cancels to 0 before a huge grad_scale (tiny T) multiplies it
  const float bracket = centred_coef * (p * (x - stats.stats.mean_shift)) - prob_coef * p + target_coef;
  const float value = form.transform.capped() ? grad_scale * (stats.target_slope * bracket) : grad_scale * bracket;
  kernels.store(grad_row, target, value);
}

// A gradient buffer that is not the logits, about to be written: ask Linux for transparent huge pages
// on it. A fresh torch buffer above glibc's mmap threshold (32 MiB) is new anonymous memory every call,
// and its first touch costs one page fault per 4 KiB (32 000 faults, 40-65 ms for 125 MiB in the dev
// VM: more than the loss itself); with 2 MiB pages it is ~500x fewer faults. Advice only: a no-op where
// THP is off ("never") or the pages already exist; errors are ignored. Only the 2 MiB-aligned inside
// of the buffer is advised, so nothing outside it changes.
inline void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  constexpr int64_t kMinBytes = int64_t{8} << 20;
  if (data == nullptr || bytes < kMinBytes) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// Parallel loop over rows: body(begin, end) on row ranges.
//
// - Serial below kMinElementsPerThread elements per thread: a parallel region on a loaded machine waits
//   for its slowest thread to be scheduled (milliseconds on a shared 2-core box), more than a small
//   call's whole work (docs/performance.md: the floor at N <= 64).
// - Above, one task per thread that takes blocks of about kElementsPerBlock elements from a shared
//   counter (dynamic scheduling): a thread descheduled for a while leaves its rows to the others
//   instead of holding the whole call up to its static share.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 20;  // 4 MiB of fp32 logits, ~0.2 ms
constexpr int64_t kElementsPerBlock = int64_t{1} << 18;  // 1 MiB of fp32: 8 rows at V = 32000

template <typename Body>
void for_each_row(int64_t rows, int64_t vocab, const Body& body) {
  const int64_t elements = rows * std::max<int64_t>(vocab, 1);
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), elements / kMinElementsPerThread);
  if (threads <= 1 || at::in_parallel_region()) {
    body(int64_t{0}, rows);
    return;
  }
  const int64_t block = std::max<int64_t>(1, kElementsPerBlock / std::max<int64_t>(vocab, 1));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (;;) {
      const int64_t begin = next.fetch_add(block, std::memory_order_relaxed);
      if (begin >= rows) break;
      body(begin, std::min(rows, begin + block));
    }
  });
}

}  // namespace actfocus::cpu
