// Launchers of the CUDA row kernels: raw pointers, sizes and a stream, no torch. Implemented in
// token_stats.cu, policy_loss.cu, row_gradient.cu (generic, sm_80+) and policy_loss_sm90.cu
// (thread-block clusters).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/row_dtype.h"
#include "core/row_transform.h"
#include "core/token_loss.h"

namespace actfocus::cuda {

// Rows of logits with their per-token inputs and outputs. The [N] arrays are contiguous; optional
// ones are null when absent. Row r of logits starts at logits + r * logits_row_stride elements,
// with unit stride along the vocabulary (likewise dlogits).
struct RowParams {
  // pointers
  const void* logits;
  const int64_t* targets;
  const float* old_logp;    // optional
  const float* advantages;  // policy_loss only
  const float* ref_logp;    // optional
  const float* weights;     // policy_loss only
  const float* scale;       // policy_loss only
  void* dlogits;            // optional; may equal logits (in-place gradient)
  float* token_loss;        // policy_loss only
  float* logp;
  float* energy;
  float* entropy;
  float* ratio;    // policy_loss only
  bool* clipped;   // policy_loss only
  float* log_sum_sq_probs;  // token_stats with extra_stats only (null: no extras)
  float* mean_logits;       // token_stats with extra_stats only
  bool* is_top1;            // token_stats with extra_stats only
  const float* target_coef;   // row_gradient only
  const float* prob_coef;     // row_gradient only
  const float* centred_coef;  // row_gradient only
  // shapes
  int64_t rows;   // N, at most 2^31 - 1
  int64_t vocab;  // V >= 1
  // strides, in elements
  int64_t logits_row_stride;
  int64_t dlogits_row_stride;
  // options
  RowDtype dtype;
  RowTransform transform;  // temperature, logit_scale, softcap
  int64_t ignore_index;
  LossOptions loss;
};

// logp, energy and entropy of every row (and the extras when log_sum_sq_probs is set); one read of the logits.
cudaError_t launch_token_stats(const RowParams& params, cudaStream_t stream);

// The fused policy loss of every row (and its gradient when dlogits is set). Uses the cluster
// kernel where it is compiled, the device is sm_90 and the row fits on chip; else the generic one.
cudaError_t launch_policy_loss(const RowParams& params, cudaStream_t stream);

// The gradient of every row's given coefficients into dlogits (row_gradient), no statistics out.
cudaError_t launch_row_gradient(const RowParams& params, cudaStream_t stream);

#if defined(ACTFOCUS_WITH_SM90)
// The sm_90 path: each row held in the shared memory of a thread-block cluster, so the loss reads
// the logits once and writes the gradient once. Needs dlogits. Returns cudaErrorNotSupported
// (without launching or leaving a CUDA error behind) where it does not apply.
cudaError_t launch_policy_loss_cluster(const RowParams& params, cudaStream_t stream);
#endif

}  // namespace actfocus::cuda
