// Run-time choice of the row kernels' CPU capability.
#include "cpu/kernels/row_kernels.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <string>

namespace actfocus::cpu {
namespace {

enum class Capability { kDefault, kAvx2, kAvx512 };

// ATen's capability ("DEFAULT", "AVX2", "AVX512", ...; ATEN_CPU_CAPABILITY lowers it) decides: ATen
// reports AVX512 only where AVX-512 F, BW, DQ and VL all run, which is what row_kernels_avx512 uses.
Capability capability() {
  static const Capability chosen = [] {
    const std::string aten = at::get_cpu_capability();
    if (row_kernels_avx512(RowDtype::kFloat32) != nullptr && aten.rfind("AVX512", 0) == 0) return Capability::kAvx512;
    if (row_kernels_avx2(RowDtype::kFloat32) != nullptr &&
        (aten.rfind("AVX2", 0) == 0 || aten.rfind("AVX512", 0) == 0)) {
      return Capability::kAvx2;
    }
    return Capability::kDefault;
  }();
  return chosen;
}

}  // namespace

const RowKernels& row_kernels(RowDtype dtype) {
  const Capability chosen = capability();
  const RowKernels* kernels = chosen == Capability::kAvx512 ? row_kernels_avx512(dtype)
                              : chosen == Capability::kAvx2 ? row_kernels_avx2(dtype)
                                                            : row_kernels_default(dtype);
  TORCH_CHECK(kernels != nullptr, "actfocus_native: no CPU row kernels for this dtype");
  return *kernels;
}

const char* row_kernels_capability() {
  const Capability chosen = capability();
  return chosen == Capability::kAvx512 ? "avx512" : chosen == Capability::kAvx2 ? "avx2" : "default";
}

}  // namespace actfocus::cpu
