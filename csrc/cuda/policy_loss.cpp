// actfocus_native::policy_loss on CUDA: checks, then the row kernels on the current stream (the
// sm_90 cluster kernel where it applies). Targets are not range-checked here (that would
// synchronise): the API checks them; an out-of-range target gives a NaN logp, never a bad read.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/kernels/launch.h"
#include "cuda/row_params.h"
#include "glue/row_args.h"
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
  const c10::cuda::CUDAGuard device_guard(logits.device());
  const PolicyLossArgs args =
      policy_loss_args(logits, targets_in, old_logp_in, advantages_in, ref_logp_in, weights_in,
                       scale_in, temperature, clip_low, clip_high, dual_clip, kl_coef, kl_type,
                       entropy_coef, dlogits);
  if (logits.size(0) == 0) return args.result();

  const cuda::RowParams params =
      policy_loss_params(logits, args, temperature, ignore_index, dlogits);
  C10_CUDA_CHECK(cuda::launch_policy_loss(params, c10::cuda::getCurrentCUDAStream().stream()));
  return args.result();
}

}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CUDA, m) {
  m.impl("policy_loss", &actfocus::policy_loss_cuda);
}
