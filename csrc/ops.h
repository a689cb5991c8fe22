// The C++ entry points of the actfocus_native ops (schemas in torch_bindings.cpp): one wrapper per op
// with the schema's signature, which fills the op's argument record by name (glue/row_args.h), checks
// and prepares it, and runs a backend's kernels on it. Each backend registers
//   m.impl("<op>", &<op>_op<&<its run function>>)
// with run(const <Op>Args&) (cpu/<op>.cpp, cuda/<op>.cpp), so the signature is written here once; the
// dispatcher checks it against the schema's types when the op is registered.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include "glue/checks.h"
#include "glue/row_args.h"

namespace actfocus {

// prepare(args): checks the record, makes its per-token inputs contiguous and allocates its outputs,
// so that each backend's run() only launches its kernels.
inline void prepare(TokenStatsArgs& args) {
  checks::check(args);
  args.targets = args.targets.contiguous();
  args.logp = per_token_output(args.logits);
  args.energy = per_token_output(args.logits);
  args.entropy = per_token_output(args.logits);
  const bool none = !args.extra_stats;
  args.log_sum_sq_probs = per_token_output(args.logits, at::kFloat, none);
  args.mean_logits = per_token_output(args.logits, at::kFloat, none);
  args.is_top1 = per_token_output(args.logits, at::kBool, none);
}

inline void prepare(PolicyLossArgs& args) {
  checks::check(args);
  args.targets = args.targets.contiguous();
  args.old_logp = contiguous(args.old_logp);
  args.advantages = args.advantages.contiguous();
  args.ref_logp = contiguous(args.ref_logp);
  args.weights = args.weights.contiguous();
  args.scale = args.scale.contiguous();
  args.token_loss = per_token_output(args.logits);
  args.logp = per_token_output(args.logits);
  args.energy = per_token_output(args.logits);
  args.entropy = per_token_output(args.logits);
  args.ratio = per_token_output(args.logits);
  args.clipped = per_token_output(args.logits, at::kBool);
}

inline void prepare(RowGradientArgs& args) {
  checks::check(args);
  args.targets = args.targets.contiguous();
  args.target_coef = args.target_coef.contiguous();
  args.prob_coef = args.prob_coef.contiguous();
  args.centred_coef = args.centred_coef.contiguous();
}


template <void (*run)(const TokenStatsArgs&)>
TokenStatsResult token_stats_op(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                int64_t ignore_index, double logit_scale, double softcap, bool extra_stats) {
  TokenStatsArgs args;
  args.logits = logits;
  args.targets = targets;
  args.temperature = temperature;
  args.ignore_index = ignore_index;
  args.logit_scale = logit_scale;
  args.softcap = softcap;
  args.extra_stats = extra_stats;
  prepare(args);
  if (logits.size(0) > 0) run(args);
  return args.result();
}

template <void (*run)(const PolicyLossArgs&)>
PolicyLossResult policy_loss_op(const at::Tensor& logits, const at::Tensor& targets,
                                const std::optional<at::Tensor>& old_logp, const at::Tensor& advantages,
                                const std::optional<at::Tensor>& ref_logp, const at::Tensor& weights,
                                const at::Tensor& scale, double temperature, double logit_scale, double softcap,
                                double clip_low, double clip_high, double dual_clip, double kl_coef, int64_t kl_type,
                                double entropy_coef, int64_t ignore_index, const std::optional<at::Tensor>& dlogits) {
  PolicyLossArgs args;
  args.logits = logits;
  args.targets = targets;
  args.old_logp = old_logp;
  args.advantages = advantages;
  args.ref_logp = ref_logp;
  args.weights = weights;
  args.scale = scale;
  args.temperature = temperature;
  args.logit_scale = logit_scale;
  args.softcap = softcap;
  args.clip_low = clip_low;
  args.clip_high = clip_high;
  args.dual_clip = dual_clip;
  args.kl_coef = kl_coef;
  args.kl_type = kl_type;
  args.entropy_coef = entropy_coef;
  args.ignore_index = ignore_index;
  args.dlogits = dlogits;
  prepare(args);
  if (logits.size(0) > 0) run(args);
  return args.result();
}

template <void (*run)(const RowGradientArgs&)>
void row_gradient_op(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& target_coef,
                     const at::Tensor& prob_coef, const at::Tensor& centred_coef, double temperature,
                     double logit_scale, double softcap, int64_t ignore_index, const at::Tensor& dlogits) {
  RowGradientArgs args;
  args.logits = logits;
  args.targets = targets;
  args.target_coef = target_coef;
  args.prob_coef = prob_coef;
  args.centred_coef = centred_coef;
  args.temperature = temperature;
  args.logit_scale = logit_scale;
  args.softcap = softcap;
  args.ignore_index = ignore_index;
  args.dlogits = dlogits;
  prepare(args);
  if (logits.size(0) > 0) run(args);
}

// What this build contains, for _C.build_info().
std::vector<std::string> built_backends();
std::vector<std::string> built_cuda_archs();  // e.g. {"sm_80", "sm_90a"}; empty without CUDA
std::vector<std::string> built_cuda_ptx();    // embedded PTX, e.g. {"compute_120"}; may be empty
std::string built_cuda_version();             // e.g. "13.0"; empty without CUDA
std::string built_torch_version();            // the torch compiled against, e.g. "2.14.1"
std::string cpu_kernels_capability();         // "avx512", "avx2" or "default", chosen at run time

}  // namespace actfocus
