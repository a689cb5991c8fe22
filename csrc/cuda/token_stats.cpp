// actfocus_native::token_stats on CUDA: checks, then the row kernel on the current stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/kernels/launch.h"
#include "cuda/row_params.h"
#include "ops.h"

namespace actfocus {
namespace {

void token_stats_cuda(const TokenStatsArgs& args) {
  const c10::cuda::CUDAGuard device_guard(args.logits.device());
  C10_CUDA_CHECK(cuda::launch_token_stats(token_stats_params(args), c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace
}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CUDA, m) {
  m.impl("token_stats", &actfocus::token_stats_op<&actfocus::token_stats_cuda>);
}
