// RowParams of the CUDA launchers from the checked argument records (CUDA glue only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "cuda/kernels/launch.h"
#include "glue/checks.h"
#include "glue/row_args.h"

namespace actfocus {

// The rows and their options; every per-token field stays null.
inline cuda::RowParams rows_params(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                   int64_t ignore_index) {
  TORCH_CHECK(logits.size(0) <= std::numeric_limits<int32_t>::max(),
              "actfocus_native: at most 2^31 - 1 rows on CUDA, got ", logits.size(0));
  cuda::RowParams params = {};
  params.logits = logits.const_data_ptr();
  params.targets = targets.const_data_ptr<int64_t>();
  params.rows = logits.size(0);
  params.vocab = logits.size(1);
  params.logits_row_stride = logits.stride(0);
  params.dtype = checks::row_dtype(logits);
  params.temperature = temperature;
  params.ignore_index = ignore_index;
  return params;
}

// The rows and statistics outputs; the loss fields stay null / zero.
inline cuda::RowParams row_params(const at::Tensor& logits, const TokenStatsArgs& rows,
                                  double temperature, int64_t ignore_index) {
  cuda::RowParams params = rows_params(logits, rows.targets, temperature, ignore_index);
  params.logp = rows.logp.data_ptr<float>();
  params.energy = rows.energy.data_ptr<float>();
  params.entropy = rows.entropy.data_ptr<float>();
  return params;
}

// Every field of a policy_loss launch; dlogits optional (the gradient pass is skipped without it).
inline cuda::RowParams policy_loss_params(const at::Tensor& logits, const PolicyLossArgs& args,
                                          double temperature, int64_t ignore_index,
                                          const std::optional<at::Tensor>& dlogits) {
  cuda::RowParams params = row_params(logits, args.rows, temperature, ignore_index);
  params.old_logp = args.old_logp.has_value() ? args.old_logp->const_data_ptr<float>() : nullptr;
  params.advantages = args.advantages.const_data_ptr<float>();
  params.ref_logp = args.ref_logp.has_value() ? args.ref_logp->const_data_ptr<float>() : nullptr;
  params.weights = args.weights.const_data_ptr<float>();
  params.scale = args.scale.const_data_ptr<float>();
  params.token_loss = args.token_loss.data_ptr<float>();
  params.ratio = args.ratio.data_ptr<float>();
  params.clipped = args.clipped.data_ptr<bool>();
  if (dlogits.has_value()) {
    params.dlogits = dlogits->data_ptr();
    params.dlogits_row_stride = dlogits->stride(0);
  }
  params.loss = args.options;
  return params;
}

// A row_gradient launch: the rows, their coefficients and dlogits; no statistics outputs.
inline cuda::RowParams row_gradient_params(const at::Tensor& logits, const RowGradientArgs& args,
                                           double temperature, int64_t ignore_index,
                                           const at::Tensor& dlogits) {
  cuda::RowParams params = rows_params(logits, args.targets, temperature, ignore_index);
  params.target_coef = args.target_coef.const_data_ptr<float>();
  params.prob_coef = args.prob_coef.const_data_ptr<float>();
  params.entropy_coefs = args.entropy_coef.const_data_ptr<float>();
  params.dlogits = dlogits.data_ptr();
  params.dlogits_row_stride = dlogits.stride(0);
  return params;
}

}  // namespace actfocus
