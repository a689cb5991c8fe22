// actfocus_native::row_gradient on CUDA: the generic row kernel in its gradient mode (pass 1 for
// the row's softmax state, pass 2 writing the gradient of the given coefficients).
#include "cuda/kernels/row_kernel.cuh"

namespace actfocus::cuda {

cudaError_t launch_row_gradient(const RowParams& params, cudaStream_t stream) {
  return launch_generic_rows<RowMode::kGradient>(params, stream);
}

}  // namespace actfocus::cuda
