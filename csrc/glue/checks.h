// Argument checks of the actfocus_native ops on their argument records (glue/row_args.h), shared by
// the CPU and CUDA glue. Every failure is a TORCH_CHECK (RuntimeError in Python; ValueError for
// out-of-range targets) naming the argument; actfocus_kernels/native.py mirrors them in the ops' fakes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>

#include "core/row_dtype.h"
#include "glue/row_args.h"

namespace actfocus::checks {

inline RowDtype row_dtype(const at::Tensor& logits) {
  switch (logits.scalar_type()) {
    case at::kFloat:
      return RowDtype::kFloat32;
    case at::kHalf:
      return RowDtype::kFloat16;
    case at::kBFloat16:
      return RowDtype::kBFloat16;
    default:
      TORCH_CHECK(false, "actfocus_native: logits must be float32, float16 or bfloat16, got ",
                  logits.scalar_type());
  }
}

// logits [N, V]: V >= 1, float32/float16/bfloat16, unit stride along V (any row stride).
inline void check_logits(const at::Tensor& logits, const char* name = "logits") {
  TORCH_CHECK(logits.dim() == 2, "actfocus_native: ", name, " must be 2-D [N, V], got shape ",
              logits.sizes());
  row_dtype(logits);
  TORCH_CHECK(logits.size(1) >= 1, "actfocus_native: ", name, " must have a vocabulary of size >= 1");
  TORCH_CHECK(logits.size(1) == 1 || logits.stride(1) == 1, "actfocus_native: ", name,
              " must be contiguous along the vocabulary (stride 1), got strides ", logits.strides());
}

// A per-token tensor: shape [n], dtype, on the device of logits (any strides: the glue copies).
inline void check_per_token(const at::Tensor& values, const char* name, at::ScalarType dtype,
                            const at::Tensor& logits) {
  const int64_t n = logits.size(0);
  TORCH_CHECK(values.device() == logits.device(), "actfocus_native: ", name, " must be on ",
              logits.device(), " like logits, got ", values.device());
  TORCH_CHECK(values.dim() == 1 && values.size(0) == n, "actfocus_native: ", name,
              " must have shape [", n, "] (one entry per logits row), got ", values.sizes());
  TORCH_CHECK(values.scalar_type() == dtype, "actfocus_native: ", name, " must be ", dtype,
              ", got ", values.scalar_type());
}

// The rows and their transform: logits, targets [N] int64, temperature finite > 0, logit_scale finite
// > 0, softcap finite >= 0 (0: off).
inline void check_rows(const at::Tensor& logits, const at::Tensor& targets, const RowTransform& transform) {
  check_logits(logits);
  check_per_token(targets, "targets", at::kLong, logits);
  TORCH_CHECK(std::isfinite(transform.temperature) && transform.temperature > 0.0,
              "actfocus_native: temperature must be finite and > 0, got ", transform.temperature);
  TORCH_CHECK(std::isfinite(transform.logit_scale) && transform.logit_scale > 0.0,
              "actfocus_native: logit_scale must be finite and > 0, got ", transform.logit_scale);
  TORCH_CHECK(std::isfinite(transform.softcap) && transform.softcap >= 0.0,
              "actfocus_native: softcap must be finite and >= 0 (0: off), got ", transform.softcap);
}

// dlogits: rows like logits (shape, dtype, device), unit stride along V, rows that do not overlap.
inline void check_dlogits(const at::Tensor& grad, const at::Tensor& logits) {
  check_logits(grad, "dlogits");
  TORCH_CHECK(grad.device() == logits.device(), "actfocus_native: dlogits must be on ",
              logits.device(), " like logits, got ", grad.device());
  TORCH_CHECK(grad.sizes() == logits.sizes(), "actfocus_native: dlogits must have the shape of logits ",
              logits.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == logits.scalar_type(), "actfocus_native: dlogits must have the dtype of logits (",
              logits.scalar_type(), "), got ", grad.scalar_type());
  TORCH_CHECK(grad.size(0) <= 1 || grad.stride(0) >= grad.size(1),
              "actfocus_native: dlogits rows must not overlap, got strides ", grad.strides());
}

inline void check(const TokenStatsArgs& args) { check_rows(args.logits, args.targets, args.transform()); }

inline void check(const PolicyLossArgs& args) {
  const at::Tensor& logits = args.logits;
  check_rows(logits, args.targets, args.transform());
  if (args.old_logp.has_value()) check_per_token(*args.old_logp, "old_logp", at::kFloat, logits);
  check_per_token(args.advantages, "advantages", at::kFloat, logits);
  if (args.ref_logp.has_value()) check_per_token(*args.ref_logp, "ref_logp", at::kFloat, logits);
  check_per_token(args.weights, "weights", at::kFloat, logits);
  check_per_token(args.scale, "scale", at::kFloat, logits);
  TORCH_CHECK(args.kl_type >= 1 && args.kl_type <= 3,
              "actfocus_native: kl_type must be 1 (k1), 2 (k2) or 3 (k3), got ", args.kl_type);
  if (args.dlogits.has_value()) check_dlogits(*args.dlogits, logits);
}

inline void check(const RowGradientArgs& args) {
  const at::Tensor& logits = args.logits;
  check_rows(logits, args.targets, args.transform());
  check_per_token(args.target_coef, "target_coef", at::kFloat, logits);
  check_per_token(args.prob_coef, "prob_coef", at::kFloat, logits);
  check_per_token(args.centred_coef, "centred_coef", at::kFloat, logits);
  check_dlogits(args.dlogits, logits);
}

// Host-side check that every target is ignore_index or in [0, vocab) (CPU tensors only).
inline void check_targets_in_range(const at::Tensor& targets, int64_t vocab, int64_t ignore_index) {
  const int64_t* values = targets.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < targets.numel(); ++i) {
    const int64_t target = values[i];
    TORCH_CHECK_VALUE(target == ignore_index || (target >= 0 && target < vocab),
                      "actfocus_native: target ", target, " at position ", i, " is outside [0, ",
                      vocab, ") and is not ignore_index (", ignore_index, ")");
  }
}

}  // namespace actfocus::checks
