// actfocus_native::policy_loss on CPU: per row, the statistics pass, the token loss, then (when
// dlogits is given) the gradient pass while the row is still in cache.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "core/token_loss.h"
#include "cpu/token_row.h"
#include "glue/checks.h"
#include "ops.h"

namespace actfocus {
namespace {

void policy_loss_cpu(const PolicyLossArgs& args) {
  const at::Tensor& logits = args.logits;
  const int64_t n = logits.size(0);
  const int64_t vocab = logits.size(1);
  checks::check_targets_in_range(args.targets, vocab, args.ignore_index);
  const LossOptions loss_options = args.options();

  const cpu::RowKernels& kernels = cpu::row_kernels(checks::row_dtype(logits));
  const cpu::RowForm form(args.transform());
  const char* rows = static_cast<const char*>(logits.const_data_ptr());
  const int64_t row_bytes = logits.stride(0) * logits.element_size();
  const std::optional<at::Tensor>& dlogits = args.dlogits;
  char* grad_rows = dlogits.has_value() ? static_cast<char*>(dlogits->data_ptr()) : nullptr;
  const int64_t grad_row_bytes = dlogits.has_value() ? dlogits->stride(0) * dlogits->element_size() : 0;
  if (grad_rows != nullptr && grad_rows != rows) cpu::advise_huge_pages(grad_rows, n * grad_row_bytes);
  const int64_t* target_values = args.targets.const_data_ptr<int64_t>();
  const float* old_values = args.old_logp.has_value() ? args.old_logp->const_data_ptr<float>() : nullptr;
  const float* ref_values = args.ref_logp.has_value() ? args.ref_logp->const_data_ptr<float>() : nullptr;
  const float* advantage_values = args.advantages.const_data_ptr<float>();
  const float* weight_values = args.weights.const_data_ptr<float>();
  const float* scale_values = args.scale.const_data_ptr<float>();
  float* token_loss_out = args.token_loss.data_ptr<float>();
  float* logp_out = args.logp.data_ptr<float>();
  float* energy_out = args.energy.data_ptr<float>();
  float* entropy_out = args.entropy.data_ptr<float>();
  float* ratio_out = args.ratio.data_ptr<float>();
  bool* clipped_out = args.clipped.data_ptr<bool>();
  const float entropy_coef = loss_options.entropy_coef;

  cpu::for_each_row(n, vocab, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const void* row_ptr = rows + row * row_bytes;
      const void* next_row = row + 1 < end ? rows + (row + 1) * row_bytes : nullptr;
      const cpu::TokenRow stats =
          cpu::token_row(kernels, row_ptr, vocab, target_values[row], args.ignore_index, form, next_row);
      TokenInputs inputs;
      inputs.has_target = stats.has_target;
      inputs.scale = scale_values[row];
      inputs.old_logp = old_values != nullptr ? old_values[row] : 0.0f;
      inputs.advantage = advantage_values[row];
      inputs.ref_logp = ref_values != nullptr ? ref_values[row] : 0.0f;
      inputs.weight = weight_values[row];
      const TokenLoss loss = actfocus::token_loss(stats.logp, stats.entropy, inputs, loss_options);
      token_loss_out[row] = loss.loss;
      logp_out[row] = static_cast<float>(stats.logp);
      energy_out[row] = stats.energy;
      entropy_out[row] = stats.entropy;
      ratio_out[row] = loss.ratio;
      clipped_out[row] = loss.clipped;
      if (grad_rows == nullptr) continue;

      void* grad_row = grad_rows + row * grad_row_bytes;
      if (!stats.has_target || inputs.scale == 0.0f) {  // inactive row: exactly zero gradient
        kernels.zero(grad_row, vocab);
        continue;
      }
      // scale ds/dz without softcap: scale logit_scale / T
      const float grad_scale = clamped_over_temperature(inputs.scale * form.transform.logit_scale, form.transform.temperature);
      cpu::row_gradient(kernels, row_ptr, grad_row, vocab, form, stats, target_values[row], grad_scale, loss.coef,
                        loss.coef, entropy_coef);
    }
  });
}

}  // namespace
}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CPU, m) {
  m.impl("policy_loss", &actfocus::policy_loss_op<&actfocus::policy_loss_cpu>);
}
