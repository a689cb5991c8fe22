// actfocus_native::policy_loss on CUDA: checks, then the row kernels on the current stream (the
// sm_90 cluster kernel where it applies). Targets are not range-checked here (that would
// synchronise): the API checks them; an out-of-range target gives a NaN logp, never a bad read.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/kernels/launch.h"
#include "cuda/row_params.h"
#include "ops.h"

namespace actfocus {
namespace {

void policy_loss_cuda(const PolicyLossArgs& args) {
  const c10::cuda::CUDAGuard device_guard(args.logits.device());
  C10_CUDA_CHECK(cuda::launch_policy_loss(policy_loss_params(args), c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace
}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CUDA, m) {
  m.impl("policy_loss", &actfocus::policy_loss_op<&actfocus::policy_loss_cuda>);
}
