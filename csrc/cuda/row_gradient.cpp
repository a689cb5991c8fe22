// actfocus_native::row_gradient on CUDA: checks, then the row kernel's gradient mode on the current
// stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/kernels/launch.h"
#include "cuda/row_params.h"
#include "ops.h"

namespace actfocus {
namespace {

void row_gradient_cuda(const RowGradientArgs& args) {
  const c10::cuda::CUDAGuard device_guard(args.logits.device());
  C10_CUDA_CHECK(cuda::launch_row_gradient(row_gradient_params(args), c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace
}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CUDA, m) {
  m.impl("row_gradient", &actfocus::row_gradient_op<&actfocus::row_gradient_cuda>);
}
