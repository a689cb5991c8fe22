// Torch glue shared by the CPU and CUDA policy_loss: the checked inputs made contiguous, the
// per-token outputs allocated, and the loss options, so each backend only launches its kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <optional>

#include "core/checks.h"
#include "core/token_loss.h"
#include "ops.h"

namespace actfocus {

struct PolicyLossArgs {
  at::Tensor targets, advantages, weights, scale;
  std::optional<at::Tensor> old_logp, ref_logp;
  at::Tensor token_loss, logp, energy, entropy, ratio, clipped;  // [N] outputs
  LossOptions options;

  PolicyLossResult result() const { return {token_loss, logp, energy, entropy, ratio, clipped}; }
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
  args.targets = targets.contiguous();
  args.advantages = advantages.contiguous();
  args.weights = weights.contiguous();
  args.scale = scale.contiguous();
  args.old_logp = contiguous(old_logp);
  args.ref_logp = contiguous(ref_logp);
  const int64_t n = logits.size(0);
  const auto options = logits.options().dtype(at::kFloat);
  for (at::Tensor* out : {&args.token_loss, &args.logp, &args.energy, &args.entropy, &args.ratio}) {
    *out = at::empty({n}, options);
  }
  args.clipped = at::empty({n}, logits.options().dtype(at::kBool));
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

}  // namespace actfocus
