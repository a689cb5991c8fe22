// actfocus_native::policy_loss on CUDA: checks, then the row kernels on the current stream (the
// sm_90 cluster kernel where it applies). Targets are not range-checked here (that would
// synchronise): the API checks them; an out-of-range target gives a NaN logp, never a bad read.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "core/checks.h"
#include "cuda/kernels/launch.h"
#include "cuda/row_params.h"
#include "ops.h"

namespace actfocus {

PolicyLossResult policy_loss_cuda(const at::Tensor& logits, const at::Tensor& targets_in,
                                  const std::optional<at::Tensor>& old_logp_in,
                                  const at::Tensor& advantages_in,
                                  const std::optional<at::Tensor>& ref_logp_in,
                                  const at::Tensor& weights_in, const at::Tensor& scale_in,
                                  double temperature, double clip_low, double clip_high,
                                  double dual_clip, double kl_coef, int64_t kl_type,
                                  double entropy_coef, int64_t ignore_index,
                                  const std::optional<at::Tensor>& dlogits) {
  checks::check_policy_loss(logits, targets_in, old_logp_in, advantages_in, ref_logp_in,
                            weights_in, scale_in, temperature, kl_type, dlogits);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  const int64_t n = logits.size(0);
  const at::Tensor targets = targets_in.contiguous();
  const std::optional<at::Tensor> old_logp =
      old_logp_in.has_value() ? std::optional<at::Tensor>(old_logp_in->contiguous()) : std::nullopt;
  const std::optional<at::Tensor> ref_logp =
      ref_logp_in.has_value() ? std::optional<at::Tensor>(ref_logp_in->contiguous()) : std::nullopt;
  const at::Tensor advantages = advantages_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();

  const auto options = logits.options().dtype(at::kFloat);
  at::Tensor token_loss = at::empty({n}, options);
  at::Tensor logp = at::empty({n}, options);
  at::Tensor energy = at::empty({n}, options);
  at::Tensor entropy = at::empty({n}, options);
  at::Tensor ratio = at::empty({n}, options);
  at::Tensor clipped = at::empty({n}, logits.options().dtype(at::kBool));
  if (n == 0) return {token_loss, logp, energy, entropy, ratio, clipped};

  cuda::RowParams params =
      row_params(logits, targets, temperature, ignore_index, logp, energy, entropy);
  params.old_logp = old_logp.has_value() ? old_logp->const_data_ptr<float>() : nullptr;
  params.advantages = advantages.const_data_ptr<float>();
  params.ref_logp = ref_logp.has_value() ? ref_logp->const_data_ptr<float>() : nullptr;
  params.weights = weights.const_data_ptr<float>();
  params.scale = scale.const_data_ptr<float>();
  params.token_loss = token_loss.data_ptr<float>();
  params.ratio = ratio.data_ptr<float>();
  params.clipped = clipped.data_ptr<bool>();
  if (dlogits.has_value()) {
    params.dlogits = dlogits->data_ptr();
    params.dlogits_row_stride = dlogits->stride(0);
  }
  params.loss.clip_low = static_cast<float>(clip_low);
  params.loss.clip_high = static_cast<float>(clip_high);
  params.loss.dual_clip = static_cast<float>(dual_clip);
  params.loss.kl_coef = static_cast<float>(kl_coef);
  params.loss.kl_type = static_cast<int>(kl_type);
  params.loss.entropy_coef = static_cast<float>(entropy_coef);
  params.loss.has_old_logp = old_logp.has_value();
  params.loss.has_ref_logp = ref_logp.has_value();
  C10_CUDA_CHECK(cuda::launch_policy_loss(params, c10::cuda::getCurrentCUDAStream().stream()));
  return {token_loss, logp, energy, entropy, ratio, clipped};
}

}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CUDA, m) {
  m.impl("policy_loss", &actfocus::policy_loss_cuda);
}
