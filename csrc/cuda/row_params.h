// RowParams of the CUDA launchers from checked tensors (CUDA glue only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

#include "core/checks.h"
#include "cuda/kernels/launch.h"

namespace actfocus {

// The rows and statistics outputs; the loss fields stay null / zero.
inline cuda::RowParams row_params(const at::Tensor& logits, const at::Tensor& targets,
                                  double temperature, int64_t ignore_index, at::Tensor& logp,
                                  at::Tensor& energy, at::Tensor& entropy) {
  TORCH_CHECK(logits.size(0) <= std::numeric_limits<int32_t>::max(),
              "actfocus_native: at most 2^31 - 1 rows on CUDA, got ", logits.size(0));
  cuda::RowParams params = {};
  params.logits = logits.const_data_ptr();
  params.targets = targets.const_data_ptr<int64_t>();
  params.logp = logp.data_ptr<float>();
  params.energy = energy.data_ptr<float>();
  params.entropy = entropy.data_ptr<float>();
  params.rows = logits.size(0);
  params.vocab = logits.size(1);
  params.logits_row_stride = logits.stride(0);
  params.dtype = checks::row_dtype(logits);
  params.temperature = temperature;
  params.ignore_index = ignore_index;
  return params;
}

}  // namespace actfocus
