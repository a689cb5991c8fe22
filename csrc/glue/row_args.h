// Argument records of the actfocus_native ops, shared by the CPU and CUDA glue: the checked inputs
// made contiguous and the per-token outputs allocated, so each backend only runs its kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <optional>

#include "core/token_loss.h"
#include "glue/checks.h"
#include "ops.h"

namespace actfocus {

// An [N] output of the rows of logits, on their device.
inline at::Tensor per_token_output(const at::Tensor& logits, at::ScalarType dtype = at::kFloat) {
  return at::empty({logits.size(0)}, logits.options().dtype(dtype));
}

// token_stats: the targets and the statistics outputs (policy_loss writes them too).
struct TokenStatsArgs {
  at::Tensor targets;
  at::Tensor logp, energy, entropy;  // [N] float32 outputs

  TokenStatsResult result() const { return {logp, energy, entropy}; }
};

// The contiguous targets and the statistics outputs of checked rows.
inline TokenStatsArgs token_stats_outputs(const at::Tensor& logits, const at::Tensor& targets) {
  return {targets.contiguous(), per_token_output(logits), per_token_output(logits),
          per_token_output(logits)};
}

inline TokenStatsArgs token_stats_args(const at::Tensor& logits, const at::Tensor& targets,
                                       double temperature) {
  checks::check_token_stats(logits, targets, temperature);
  return token_stats_outputs(logits, targets);
}

struct PolicyLossArgs {
  TokenStatsArgs rows;  // targets, logp, energy, entropy
  at::Tensor advantages, weights, scale;
  std::optional<at::Tensor> old_logp, ref_logp;
  at::Tensor token_loss, ratio, clipped;  // [N] outputs (clipped bool)
  LossOptions options;

  PolicyLossResult result() const {
    return {token_loss, rows.logp, rows.energy, rows.entropy, ratio, clipped};
  }
};

inline std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& values) {
  return values.has_value() ? std::optional<at::Tensor>(values->contiguous()) : std::nullopt;
}

inline PolicyLossArgs policy_loss_args(const at::Tensor& logits, const at::Tensor& targets,
                                       const std::optional<at::Tensor>& old_logp,
                                       const at::Tensor& advantages,
                                       const std::optional<at::Tensor>& ref_logp,
                                       const at::Tensor& weights, const at::Tensor& scale,
                                       double temperature, double clip_low, double clip_high,
                                       double dual_clip, double kl_coef, int64_t kl_type,
                                       double entropy_coef,
                                       const std::optional<at::Tensor>& dlogits) {
  checks::check_policy_loss(logits, targets, old_logp, advantages, ref_logp, weights, scale,
                            temperature, kl_type, dlogits);
  PolicyLossArgs args;
  args.rows = token_stats_outputs(logits, targets);
  args.advantages = advantages.contiguous();
  args.weights = weights.contiguous();
  args.scale = scale.contiguous();
  args.old_logp = contiguous(old_logp);
  args.ref_logp = contiguous(ref_logp);
  args.token_loss = per_token_output(logits);
  args.ratio = per_token_output(logits);
  args.clipped = per_token_output(logits, at::kBool);
  args.options.clip_low = static_cast<float>(clip_low);
  args.options.clip_high = static_cast<float>(clip_high);
  args.options.dual_clip = static_cast<float>(dual_clip);
  args.options.kl_coef = static_cast<float>(kl_coef);
  args.options.kl_type = static_cast<int>(kl_type);
  args.options.entropy_coef = static_cast<float>(entropy_coef);
  args.options.has_old_logp = old_logp.has_value();
  args.options.has_ref_logp = ref_logp.has_value();
  return args;
}

// row_gradient: the contiguous targets and per-row coefficients of checked rows.
struct RowGradientArgs {
  at::Tensor targets, target_coef, prob_coef, entropy_coef;
};

inline RowGradientArgs row_gradient_args(const at::Tensor& logits, const at::Tensor& targets,
                                         const at::Tensor& target_coef, const at::Tensor& prob_coef,
                                         const at::Tensor& entropy_coef, double temperature,
                                         const at::Tensor& dlogits) {
  checks::check_row_gradient(logits, targets, target_coef, prob_coef, entropy_coef, temperature,
                             dlogits);
  return {targets.contiguous(), target_coef.contiguous(), prob_coef.contiguous(),
          entropy_coef.contiguous()};
}

}  // namespace actfocus
