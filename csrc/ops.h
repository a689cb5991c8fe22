// C++ entry points of the actfocus_native ops (schemas in torch_bindings.cpp), one per dispatch key.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace actfocus {

// (logp, energy, entropy), each [N] float32.
using TokenStatsResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
// (token_loss, logp, energy, entropy, ratio, clipped): [N] float32, clipped [N] bool.
using PolicyLossResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

#define ACTFOCUS_DECLARE_OPS(backend)                                                          \
  TokenStatsResult token_stats_##backend(const at::Tensor& logits, const at::Tensor& targets, \
                                         double temperature, int64_t ignore_index);           \
  PolicyLossResult policy_loss_##backend(                                                      \
      const at::Tensor& logits, const at::Tensor& targets,                                     \
      const std::optional<at::Tensor>& old_logp, const at::Tensor& advantages,                 \
      const std::optional<at::Tensor>& ref_logp, const at::Tensor& weights,                    \
      const at::Tensor& scale, double temperature, double clip_low, double clip_high,          \
      double dual_clip, double kl_coef, int64_t kl_type, double entropy_coef,                  \
      int64_t ignore_index, const std::optional<at::Tensor>& dlogits);                      \
  void row_gradient_##backend(const at::Tensor& logits, const at::Tensor& targets,             \
                              const at::Tensor& target_coef, const at::Tensor& prob_coef,      \
                              const at::Tensor& entropy_coef, double temperature,             \
                              int64_t ignore_index, const at::Tensor& dlogits);

ACTFOCUS_DECLARE_OPS(cpu)
#if defined(ACTFOCUS_WITH_CUDA)
ACTFOCUS_DECLARE_OPS(cuda)
#endif
#undef ACTFOCUS_DECLARE_OPS

// What this build contains, for _C.build_info().
std::vector<std::string> built_backends();
std::vector<std::string> built_cuda_archs();  // e.g. {"sm_80", "sm_90a"}; empty without CUDA
std::vector<std::string> built_cuda_ptx();    // embedded PTX, e.g. {"compute_120"}; may be empty
std::string built_cuda_version();             // e.g. "13.0"; empty without CUDA
std::string built_torch_version();            // the torch compiled against, e.g. "2.14.1"
std::string cpu_kernels_capability();         // "avx2" or "default", chosen at run time

}  // namespace actfocus
