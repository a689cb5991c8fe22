// actfocus_native::token_stats on CPU: OpenMP over rows, each row read by the vectorised row kernels.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "core/token_loss.h"
#include "cpu/token_row.h"
#include "glue/checks.h"
#include "glue/row_args.h"
#include "ops.h"

namespace actfocus {

TokenStatsResult token_stats_cpu(const at::Tensor& logits, const at::Tensor& targets_in,
                                 double temperature, int64_t ignore_index) {
  const TokenStatsArgs args = token_stats_args(logits, targets_in, temperature);
  const int64_t n = logits.size(0);
  const int64_t vocab = logits.size(1);
  checks::check_targets_in_range(args.targets, vocab, ignore_index);
  if (n == 0) return args.result();

  const cpu::RowKernels& kernels = cpu::row_kernels(checks::row_dtype(logits));
  const char* rows = static_cast<const char*>(logits.const_data_ptr());
  const int64_t row_bytes = logits.stride(0) * logits.element_size();
  const int64_t* target_values = args.targets.const_data_ptr<int64_t>();
  float* logp_out = args.logp.data_ptr<float>();
  float* energy_out = args.energy.data_ptr<float>();
  float* entropy_out = args.entropy.data_ptr<float>();
  const float inv_temperature = clamped_over_temperature(1.0, temperature);

  cpu::for_each_row(n, vocab, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const cpu::TokenRow stats =
          cpu::token_row(kernels, rows + row * row_bytes, vocab, target_values[row], ignore_index,
                         temperature, inv_temperature, row + 1 < end ? rows + (row + 1) * row_bytes : nullptr);
      logp_out[row] = static_cast<float>(stats.logp);
      energy_out[row] = stats.energy;
      entropy_out[row] = stats.entropy;
    }
  });
  return args.result();
}

}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CPU, m) {
  m.impl("token_stats", &actfocus::token_stats_cpu);
}
