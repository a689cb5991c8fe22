// actfocus_native::row_gradient on CUDA: checks, then the row kernel's gradient mode on the current
// stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/kernels/launch.h"
#include "cuda/row_params.h"
#include "glue/row_args.h"
#include "ops.h"

namespace actfocus {

void row_gradient_cuda(const at::Tensor& logits, const at::Tensor& targets_in,
                       const at::Tensor& target_coef_in, const at::Tensor& prob_coef_in,
                       const at::Tensor& entropy_coef_in, double temperature, int64_t ignore_index,
                       const at::Tensor& dlogits) {
  const c10::cuda::CUDAGuard device_guard(logits.device());
  const RowGradientArgs args = row_gradient_args(logits, targets_in, target_coef_in, prob_coef_in,
                                                 entropy_coef_in, temperature, dlogits);
  if (logits.size(0) == 0) return;
  const cuda::RowParams params = row_gradient_params(logits, args, temperature, ignore_index, dlogits);
  C10_CUDA_CHECK(cuda::launch_row_gradient(params, c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CUDA, m) {
  m.impl("row_gradient", &actfocus::row_gradient_cuda);
}
