// Every actfocus_native schema, and the _C Python module's build description.
//
// The ops take rows: logits [N, V] (float32/float16/bfloat16, unit stride along V, any row stride),
// per-token [N] tensors (targets int64, the rest float32) and return float32 per-token results.
// Implementations: cpu/<op>.cpp (CPU key), cuda/<op>.cpp (CUDA key); fakes: actfocus_kernels/native.py.
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <string>
#include <vector>

#include "ops.h"
#include "cpu/kernels/row_kernels.h"

#if defined(ACTFOCUS_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#define ACTFOCUS_STRINGIFY_(...) #__VA_ARGS__
#define ACTFOCUS_STRINGIFY(...) ACTFOCUS_STRINGIFY_(__VA_ARGS__)

TORCH_LIBRARY(actfocus_native, m) {
  // Every op takes the logit transform of SPEC section 10 (core/row_transform.h): with logit_scale > 0
  // (1: off) and softcap >= 0 (0: off), s = softcap tanh(logit_scale z / softcap) / T, else
  // s = logit_scale z / T; a -inf logit stays excluded. The C++ signatures are the wrappers of ops.h.

  // Per row, over s: logp = s[y] - logsumexp(s) (0 where y == ignore_index), energy = -T logsumexp(s),
  // entropy of softmax(s) (SPEC section 2); with extra_stats also log_sum_sq_probs = log sum_v p_v^2,
  // mean_logits = mean_v s_v (float32) and is_top1 = y is the first index of max_v s_v (bool, false
  // where y == ignore_index), else those three are empty [0] tensors. One read of each row.
  m.def(
      "token_stats(Tensor logits, Tensor targets, float temperature, int ignore_index, float logit_scale,"
      " float softcap, bool extra_stats) -> (Tensor logp, Tensor energy, Tensor entropy,"
      " Tensor log_sum_sq_probs, Tensor mean_logits, Tensor is_top1)",
      {at::Tag::pt2_compliant_tag});
  // Fused clipped-surrogate loss per row (SPEC section 4): token_loss = scale * (w L_pg +
  // kl_coef KL(kl_type: 1/2/3) - entropy_coef H), 0 where scale == 0; dual_clip <= 1 is off;
  // old_logp None is on-policy. When dlogits is given it receives d sum(token_loss) / d logits
  // (through the transform), written in the logits' dtype; it may be logits itself (in-place gradient).
  m.def(
      "policy_loss(Tensor logits, Tensor targets, Tensor? old_logp, Tensor advantages,"
      " Tensor? ref_logp, Tensor weights, Tensor scale, float temperature, float logit_scale,"
      " float softcap, float clip_low, float clip_high, float dual_clip, float kl_coef, int kl_type,"
      " float entropy_coef, int ignore_index, Tensor(a!)? dlogits)"
      " -> (Tensor token_loss, Tensor logp, Tensor energy, Tensor entropy, Tensor ratio,"
      " Tensor clipped)",
      {at::Tag::pt2_compliant_tag});
  // The gradient pass of given per-row coefficients (policy variants, tensor parallel, the
  // gradient of token_stats): dlogits[v] = ds_v/dz_v (target_coef 1{v = y} - prob_coef p_v
  // + centred_coef p_v (s_v - sum_u p_u s_u)) with the row's own softmax p = softmax(s);
  // exactly 0 on rows whose three coefficients are 0; no one-hot term where y == ignore_index.
  // dlogits may be logits itself (in-place gradient).
  m.def(
      "row_gradient(Tensor logits, Tensor targets, Tensor target_coef, Tensor prob_coef,"
      " Tensor centred_coef, float temperature, float logit_scale, float softcap, int ignore_index,"
      " Tensor(a!) dlogits) -> ()",
      {at::Tag::pt2_compliant_tag});
}

namespace actfocus {

std::vector<std::string> built_backends() {
#if defined(ACTFOCUS_WITH_CUDA)
  return {"cpu", "cuda"};
#else
  return {"cpu"};
#endif
}

namespace {

// The entries of a comma-separated list ("sm_80,sm_90a" -> {"sm_80", "sm_90a"}).
std::vector<std::string> split_list(const std::string& joined) {
  std::vector<std::string> entries;
  size_t start = 0;
  while (start <= joined.size()) {
    const size_t comma = std::min(joined.find(',', start), joined.size());
    if (comma > start) entries.push_back(joined.substr(start, comma - start));
    start = comma + 1;
  }
  return entries;
}

}  // namespace

// The arch lists of a CUDA build (setup.py / CMakeLists.txt define them, comma-separated); empty
// otherwise.
#if !defined(ACTFOCUS_CUDA_ARCHS)
#define ACTFOCUS_CUDA_ARCHS
#endif
#if !defined(ACTFOCUS_CUDA_PTX)
#define ACTFOCUS_CUDA_PTX
#endif

std::vector<std::string> built_cuda_archs() {
  return split_list(ACTFOCUS_STRINGIFY(ACTFOCUS_CUDA_ARCHS));  // "sm_80,sm_90a"
}

std::vector<std::string> built_cuda_ptx() {
  return split_list(ACTFOCUS_STRINGIFY(ACTFOCUS_CUDA_PTX));  // "compute_120"
}

std::string built_cuda_version() {
#if defined(ACTFOCUS_WITH_CUDA)
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
#else
  return "";
#endif
}

std::string built_torch_version() { return TORCH_VERSION; }

std::string cpu_kernels_capability() { return cpu::row_kernels_capability(); }

}  // namespace actfocus

// Built by setup.py (torch.utils.cpp_extension defines TORCH_EXTENSION_NAME); the CMake op library
// has no Python module.
#if defined(TORCH_EXTENSION_NAME)
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "actfocus_kernels native extension: registers the actfocus_native ops";
  module.def(
      "build_info",
      [] {
        pybind11::dict info;
        info["backends"] = actfocus::built_backends();
        const std::string cuda_version = actfocus::built_cuda_version();
        info["cuda_version"] =
            cuda_version.empty() ? pybind11::object(pybind11::none()) : pybind11::str(cuda_version);
        info["archs"] = actfocus::built_cuda_archs();
        info["ptx"] = actfocus::built_cuda_ptx();
        info["torch_version"] = actfocus::built_torch_version();
        info["cpu_capability"] = actfocus::cpu_kernels_capability();
        return info;
      },
      "dict: backends (['cpu'] or ['cpu', 'cuda']), cuda_version (str or None), archs with SASS "
      "(['sm_80', 'sm_90a', ...]), ptx (embedded PTX, e.g. ['compute_120']), torch_version (the "
      "torch it was compiled against, whose C++ ABI it needs), cpu_capability ('avx512', 'avx2' or "
      "'default', chosen at run time)");
}
#endif
