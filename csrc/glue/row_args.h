// Argument records of the actfocus_native ops, shared by the CPU and CUDA glue. Each record has one
// field per schema argument (csrc/torch_bindings.cpp), with the schema's names in its order, then the
// op's outputs (filled by prepare() in ops.h after the checks of glue/checks.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <optional>
#include <tuple>

#include "core/row_transform.h"
#include "core/token_loss.h"

namespace actfocus {

// (logp, energy, entropy, log_sum_sq_probs, mean_logits, is_top1): [N] float32 (is_top1 bool), the
// last three empty [0] tensors without extra_stats.
using TokenStatsResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (token_loss, logp, energy, entropy, ratio, clipped): [N] float32, clipped [N] bool.
using PolicyLossResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct TokenStatsArgs {
  at::Tensor logits;
  at::Tensor targets;
  double temperature;
  int64_t ignore_index;
  double logit_scale;
  double softcap;
  bool extra_stats;
  // outputs
  at::Tensor logp, energy, entropy, log_sum_sq_probs, mean_logits, is_top1;

  RowTransform transform() const { return {temperature, logit_scale, softcap}; }
  TokenStatsResult result() const { return {logp, energy, entropy, log_sum_sq_probs, mean_logits, is_top1}; }
};

struct PolicyLossArgs {
  at::Tensor logits;
  at::Tensor targets;
  std::optional<at::Tensor> old_logp;
  at::Tensor advantages;
  std::optional<at::Tensor> ref_logp;
  at::Tensor weights;
  at::Tensor scale;
  double temperature;
  double logit_scale;
  double softcap;
  double clip_low;
  double clip_high;
  double dual_clip;
  double kl_coef;
  int64_t kl_type;
  double entropy_coef;
  int64_t ignore_index;
  std::optional<at::Tensor> dlogits;
  // outputs
  at::Tensor token_loss, logp, energy, entropy, ratio, clipped;

  RowTransform transform() const { return {temperature, logit_scale, softcap}; }
  LossOptions options() const {
    LossOptions out;
    out.clip_low = static_cast<float>(clip_low);
    out.clip_high = static_cast<float>(clip_high);
    out.dual_clip = static_cast<float>(dual_clip);
    out.kl_coef = static_cast<float>(kl_coef);
    out.kl_type = static_cast<int>(kl_type);
    out.entropy_coef = static_cast<float>(entropy_coef);
    out.has_old_logp = old_logp.has_value();
    out.has_ref_logp = ref_logp.has_value();
    return out;
  }
  PolicyLossResult result() const { return {token_loss, logp, energy, entropy, ratio, clipped}; }
};

struct RowGradientArgs {
  at::Tensor logits;
  at::Tensor targets;
  at::Tensor target_coef;
  at::Tensor prob_coef;
  at::Tensor centred_coef;
  double temperature;
  double logit_scale;
  double softcap;
  int64_t ignore_index;
  at::Tensor dlogits;

  RowTransform transform() const { return {temperature, logit_scale, softcap}; }
};

// An [N] output of the rows of logits (or [0] when empty), on their device.
inline at::Tensor per_token_output(const at::Tensor& logits, at::ScalarType dtype = at::kFloat, bool empty = false) {
  return at::empty({empty ? 0 : logits.size(0)}, logits.options().dtype(dtype));
}

inline std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& values) {
  return values.has_value() ? std::optional<at::Tensor>(values->contiguous()) : std::nullopt;
}

}  // namespace actfocus
