// actfocus_native::token_stats on CUDA: the generic row kernel without the loss (one read per row).
#include "cuda/kernels/row_kernel.cuh"

namespace actfocus::cuda {

cudaError_t launch_token_stats(const RowParams& params, cudaStream_t stream) {
  return launch_generic_rows<RowMode::kStats>(params, stream);
}

}  // namespace actfocus::cuda
