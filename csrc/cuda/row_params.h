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
inline cuda::RowParams rows_params(const at::Tensor& logits, const at::Tensor& targets, const RowTransform& transform,
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
  params.transform = transform;
  params.ignore_index = ignore_index;
  return params;
}

// A token_stats launch: the rows and the statistics outputs (the extras when asked).
inline cuda::RowParams token_stats_params(const TokenStatsArgs& args) {
  cuda::RowParams params = rows_params(args.logits, args.targets, args.transform(), args.ignore_index);
  params.logp = args.logp.data_ptr<float>();
  params.energy = args.energy.data_ptr<float>();
  params.entropy = args.entropy.data_ptr<float>();
  if (args.extra_stats) {
    params.log_sum_sq_probs = args.log_sum_sq_probs.data_ptr<float>();
    params.mean_logits = args.mean_logits.data_ptr<float>();
    params.is_top1 = args.is_top1.data_ptr<bool>();
  }
  return params;
}

// Every field of a policy_loss launch; dlogits optional (the gradient pass is skipped without it).
inline cuda::RowParams policy_loss_params(const PolicyLossArgs& args) {
  cuda::RowParams params = rows_params(args.logits, args.targets, args.transform(), args.ignore_index);
  params.logp = args.logp.data_ptr<float>();
  params.energy = args.energy.data_ptr<float>();
  params.entropy = args.entropy.data_ptr<float>();
  params.old_logp = args.old_logp.has_value() ? args.old_logp->const_data_ptr<float>() : nullptr;
  params.advantages = args.advantages.const_data_ptr<float>();
  params.ref_logp = args.ref_logp.has_value() ? args.ref_logp->const_data_ptr<float>() : nullptr;
  params.weights = args.weights.const_data_ptr<float>();
  params.scale = args.scale.const_data_ptr<float>();
  params.token_loss = args.token_loss.data_ptr<float>();
  params.ratio = args.ratio.data_ptr<float>();
  params.clipped = args.clipped.data_ptr<bool>();
  if (args.dlogits.has_value()) {
    params.dlogits = args.dlogits->data_ptr();
    params.dlogits_row_stride = args.dlogits->stride(0);
  }
  params.loss = args.options();
  return params;
}

// A row_gradient launch: the rows, their coefficients and dlogits; no statistics outputs.
inline cuda::RowParams row_gradient_params(const RowGradientArgs& args) {
  cuda::RowParams params = rows_params(args.logits, args.targets, args.transform(), args.ignore_index);
  params.target_coef = args.target_coef.const_data_ptr<float>();
  params.prob_coef = args.prob_coef.const_data_ptr<float>();
  params.centred_coef = args.centred_coef.const_data_ptr<float>();
  params.dlogits = args.dlogits.data_ptr();
  params.dlogits_row_stride = args.dlogits.stride(0);
  return params;
}

}  // namespace actfocus
