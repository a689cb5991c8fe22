// Element type of a logits row, shared by the torch-free CPU and CUDA launchers.
#pragma once

namespace actfocus {

enum class RowDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace actfocus
