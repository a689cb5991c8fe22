// actfocus_native::policy_loss on CUDA: the cluster kernel (policy_loss_sm90.cu) where it applies,
// else the generic row kernel, which reads each row twice when it writes the gradient.
#include "cuda/kernels/row_kernel.cuh"

namespace actfocus::cuda {

cudaError_t launch_policy_loss(const RowParams& params, cudaStream_t stream) {
  if (params.rows == 0) return cudaSuccess;
#if defined(ACTFOCUS_WITH_SM90)
  if (params.dlogits != nullptr) {
    const cudaError_t status = launch_policy_loss_cluster(params, stream);
    if (status != cudaErrorNotSupported) return status;
  }
#endif
  return launch_generic_rows<RowMode::kLoss>(params, stream);
}

}  // namespace actfocus::cuda
