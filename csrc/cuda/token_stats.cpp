// actfocus_native::token_stats on CUDA: checks, then the row kernel on the current stream.
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

TokenStatsResult token_stats_cuda(const at::Tensor& logits, const at::Tensor& targets_in,
                                  double temperature, int64_t ignore_index) {
  checks::check_token_stats(logits, targets_in, temperature);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  const int64_t n = logits.size(0);
  const at::Tensor targets = targets_in.contiguous();
  const auto options = logits.options().dtype(at::kFloat);
  at::Tensor logp = at::empty({n}, options);
  at::Tensor energy = at::empty({n}, options);
  at::Tensor entropy = at::empty({n}, options);
  if (n == 0) return {logp, energy, entropy};

  const cuda::RowParams params =
      row_params(logits, targets, temperature, ignore_index, logp, energy, entropy);
  C10_CUDA_CHECK(cuda::launch_token_stats(params, c10::cuda::getCurrentCUDAStream().stream()));
  return {logp, energy, entropy};
}

}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CUDA, m) {
  m.impl("token_stats", &actfocus::token_stats_cuda);
}
