// actfocus_native::token_stats on CUDA: checks, then the row kernel on the current stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/kernels/launch.h"
#include "cuda/row_params.h"
#include "glue/row_args.h"
#include "ops.h"

namespace actfocus {

TokenStatsResult token_stats_cuda(const at::Tensor& logits, const at::Tensor& targets_in,
                                  double temperature, int64_t ignore_index) {
  const c10::cuda::CUDAGuard device_guard(logits.device());
  TokenStatsArgs args = token_stats_args(logits, targets_in, temperature);
  if (logits.size(0) == 0) return args.result();

  const cuda::RowParams params = row_params(logits, args, temperature, ignore_index);
  C10_CUDA_CHECK(cuda::launch_token_stats(params, c10::cuda::getCurrentCUDAStream().stream()));
  return args.result();
}

}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CUDA, m) {
  m.impl("token_stats", &actfocus::token_stats_cuda);
}
