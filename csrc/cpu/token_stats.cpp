// actfocus_native::token_stats on CPU: OpenMP over rows, each row read once by the vectorised row
// kernels (with the extra statistics from the same pass when asked).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/token_row.h"
#include "glue/checks.h"
#include "ops.h"

namespace actfocus {
namespace {

void token_stats_cpu(const TokenStatsArgs& args) {
  const at::Tensor& logits = args.logits;
  const int64_t n = logits.size(0);
  const int64_t vocab = logits.size(1);
  checks::check_targets_in_range(args.targets, vocab, args.ignore_index);

  const cpu::RowKernels& kernels = cpu::row_kernels(checks::row_dtype(logits));
  const cpu::RowForm form(args.transform());
  const char* rows = static_cast<const char*>(logits.const_data_ptr());
  const int64_t row_bytes = logits.stride(0) * logits.element_size();
  const int64_t* target_values = args.targets.const_data_ptr<int64_t>();
  float* logp_out = args.logp.data_ptr<float>();
  float* energy_out = args.energy.data_ptr<float>();
  float* entropy_out = args.entropy.data_ptr<float>();
  const bool extra_stats = args.extra_stats;
  float* log_sum_sq_out = extra_stats ? args.log_sum_sq_probs.data_ptr<float>() : nullptr;
  float* mean_out = extra_stats ? args.mean_logits.data_ptr<float>() : nullptr;
  bool* top1_out = extra_stats ? args.is_top1.data_ptr<bool>() : nullptr;

  cpu::for_each_row(n, vocab, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      cpu::RowExtras sums;
      const int64_t target = target_values[row];
      const cpu::TokenRow stats =
          cpu::token_row(kernels, rows + row * row_bytes, vocab, target, args.ignore_index, form,
                         row + 1 < end ? rows + (row + 1) * row_bytes : nullptr, extra_stats ? &sums : nullptr);
      logp_out[row] = static_cast<float>(stats.logp);
      energy_out[row] = stats.energy;
      entropy_out[row] = stats.entropy;
      if (!extra_stats) continue;
      const cpu::TokenExtras extras = cpu::token_extras(stats, sums, vocab, target, form.transform);
      log_sum_sq_out[row] = extras.log_sum_sq_probs;
      mean_out[row] = extras.mean_logits;
      top1_out[row] = extras.is_top1;
    }
  });
}

}  // namespace
}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CPU, m) {
  m.impl("token_stats", &actfocus::token_stats_op<&actfocus::token_stats_cpu>);
}
