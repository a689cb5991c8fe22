// Run-time choice of the row kernels' CPU capability.
#include "cpu/kernels/row_kernels.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <string>

namespace actfocus::cpu {
namespace {

// ATen's capability ("DEFAULT", "AVX2", "AVX512", ...; ATEN_CPU_CAPABILITY lowers it) decides.
bool use_avx2() {
  static const bool avx2 = [] {
    const std::string capability = at::get_cpu_capability();
    return row_kernels_avx2(RowDtype::kFloat32) != nullptr &&
           (capability.rfind("AVX2", 0) == 0 || capability.rfind("AVX512", 0) == 0);
  }();
  return avx2;
}

}  // namespace

const RowKernels& row_kernels(RowDtype dtype) {
  const RowKernels* kernels = use_avx2() ? row_kernels_avx2(dtype) : row_kernels_default(dtype);
  TORCH_CHECK(kernels != nullptr, "actfocus_native: no CPU row kernels for this dtype");
  return *kernels;
}

const char* row_kernels_capability() { return use_avx2() ? "avx2" : "default"; }

}  // namespace actfocus::cpu
