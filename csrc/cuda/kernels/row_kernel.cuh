// The generic row kernel (sm_80+): one block per row. Pass 1 reads the row once for its online
// softmax state; one thread finishes the token's statistics (and loss), or reads the row's given
// gradient coefficients; pass 2 (policy loss with dlogits, row gradient) re-reads the row and
// writes its gradient. 16-byte vector loads and stores, with scalar
// head / tail elements where a row does not start on a 16-byte boundary.
#pragma once

#include "core/token_loss.h"
#include "cuda/kernels/launch.h"
#include "cuda/kernels/row_common.cuh"

namespace actfocus::cuda {

constexpr int kGenericMaxThreads = 1024;
constexpr int kGenericUnroll = 4;       // vectors in flight per thread
constexpr int kVectorsPerThread = 16;   // block size target

// What a launch computes: statistics only, the fused loss (and its gradient), or the gradient of
// given per-row coefficients.
enum class RowMode { kStats, kLoss, kGradient };

template <typename T, RowMode kMode, typename F>
__global__ void __launch_bounds__(kGenericMaxThreads) generic_rows_kernel(const RowParams params) {
  using IO = VecIO<T>;
  constexpr int kVec = IO::kSize;
  constexpr bool kWritesGradient = kMode != RowMode::kStats;
  __shared__ RowState scratch[kMaxWarps + 1];
  __shared__ float shared_coef;
  __shared__ float shared_target_coef;
  __shared__ float shared_centred_coef;
  __shared__ float shared_grad_scale;
  __shared__ bool shared_active;

  // shapes and layout of this row
  const int64_t row = blockIdx.x;
  const int64_t vocab = params.vocab;
  const F form = make_form<F>(params.transform);
  const T* logits = static_cast<const T*>(params.logits) + row * params.logits_row_stride;
  const int head = row_head(logits, vocab);
  const int64_t vectors = (vocab - head) / kVec;
  const int64_t tail_start = head + vectors * kVec;
  const uint4* body = reinterpret_cast<const uint4*>(logits + head);
  const int64_t stride = static_cast<int64_t>(blockDim.x) * kGenericUnroll;

  // the target's logit, read before any gradient is written (dlogits may be logits)
  const int64_t target_index = params.targets[row];
  const RowTarget target = read_target(logits, target_index, params.ignore_index, vocab);

  // pass 1: online softmax state
  RowState state = empty_state();
  if (threadIdx.x < head) {
    const float z[1] = {IO::load(logits + threadIdx.x)};
    accumulate(state, z, form, threadIdx.x, target_index);
  }
  if (tail_start + threadIdx.x < vocab) {
    const float z[1] = {IO::load(logits + tail_start + threadIdx.x)};
    accumulate(state, z, form, tail_start + threadIdx.x, target_index);
  }
  for (int64_t base = threadIdx.x; base < vectors; base += stride) {
    uint4 loaded[kGenericUnroll];
#pragma unroll
    for (int u = 0; u < kGenericUnroll; ++u) {
      const int64_t j = base + static_cast<int64_t>(u) * blockDim.x;
      loaded[u] = j < vectors ? body[j] : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < kGenericUnroll; ++u) {
      const int64_t j = base + static_cast<int64_t>(u) * blockDim.x;
      if (j < vectors) {
        float z[kVec];
        IO::to_float(loaded[u], z);
        accumulate(state, z, form, head + j * kVec, target_index);
      }
    }
  }
  state = block_reduce(state, form, scratch);

  // the token: statistics (and loss), or the given coefficients, by thread 0
  if (threadIdx.x == 0) {
    if constexpr (kMode == RowMode::kGradient) {
      shared_target_coef = params.target_coef[row];
      shared_coef = params.prob_coef[row];
      shared_centred_coef = params.centred_coef[row];
      shared_grad_scale = params.transform.slope();
      shared_active = shared_target_coef != 0.0f || shared_coef != 0.0f || shared_centred_coef != 0.0f;
    } else {
      const TokenStatistics stats = token_statistics(state, target.counts, target.logit, params.transform);
      params.logp[row] = static_cast<float>(stats.logp);
      params.energy[row] = stats.energy;
      params.entropy[row] = stats.entropy;
      if constexpr (F::kExtras) write_extras(params, row, state, target, form);
      if constexpr (kMode == RowMode::kLoss) {
        const TokenInputs inputs = read_token_inputs(params, row, target.counts);
        const TokenLoss loss = token_loss(stats.logp, stats.entropy, inputs, params.loss);
        params.token_loss[row] = loss.loss;
        params.ratio[row] = loss.ratio;
        params.clipped[row] = loss.clipped;
        shared_coef = loss.coef;
        shared_target_coef = loss.coef;
        shared_centred_coef = params.loss.entropy_coef;
        shared_grad_scale = clamped_over_temperature(inputs.scale * params.transform.logit_scale,
                                                     params.transform.temperature);
        shared_active = target.counts && inputs.scale != 0.0f;
      }
    }
  }
  if constexpr (kWritesGradient) {
    if (params.dlogits == nullptr) return;
    __syncthreads();

    // pass 2: the gradient (exactly 0 on inactive rows)
    T* grad = static_cast<T*>(params.dlogits) + row * params.dlogits_row_stride;
    const bool vector_stores = row_head(grad, vocab) == head;
    uint4* grad_body = reinterpret_cast<uint4*>(grad + head);
    RowGrad<F> g;
    g.form = form;
    g.row_max = state.max;
    g.tanh_max = state.tanh_max;
    g.log2_sum = log2f(state.sum);
    g.mean_shift2 = state.wsum / state.sum;
    g.grad_scale = shared_active ? shared_grad_scale : 0.0f;
    g.centred_ln2 = shared_active ? shared_centred_coef * kLn2 : 0.0f;
    g.coef = shared_active ? shared_coef : 0.0f;
    g.target_coef = shared_active ? shared_target_coef : 0.0f;
    g.target = target.onehot;
    const bool active = shared_active;

    if (threadIdx.x < head) {
      const int64_t i = threadIdx.x;
      IO::store(grad + i, active ? element_grad(IO::load(logits + i), i, g) : 0.0f);
    }
    if (tail_start + threadIdx.x < vocab) {
      const int64_t i = tail_start + threadIdx.x;
      IO::store(grad + i, active ? element_grad(IO::load(logits + i), i, g) : 0.0f);
    }
    for (int64_t base = threadIdx.x; base < vectors; base += stride) {
      uint4 loaded[kGenericUnroll];
#pragma unroll
      for (int u = 0; u < kGenericUnroll; ++u) {
        const int64_t j = base + static_cast<int64_t>(u) * blockDim.x;
        loaded[u] = (active && j < vectors) ? body[j] : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int u = 0; u < kGenericUnroll; ++u) {
        const int64_t j = base + static_cast<int64_t>(u) * blockDim.x;
        if (j >= vectors) continue;
        float values[kVec];
        if (active) {
          float z[kVec];
          IO::to_float(loaded[u], z);
#pragma unroll
          for (int l = 0; l < kVec; ++l) values[l] = element_grad(z[l], head + j * kVec + l, g);
        } else {
#pragma unroll
          for (int l = 0; l < kVec; ++l) values[l] = 0.0f;
        }
        if (vector_stores) {
          grad_body[j] = IO::from_float(values);
        } else {
#pragma unroll
          for (int l = 0; l < kVec; ++l) IO::store(grad + head + j * kVec + l, values[l]);
        }
      }
    }
  }
}

// Block size: about kVectorsPerThread vectors per thread, a power of two in [32, 1024].
inline int generic_block_threads(const RowParams& params) {
  const int64_t vectors = params.vocab / (params.dtype == RowDtype::kFloat32 ? 4 : 8);
  int threads = kWarpSize;
  while (threads < kGenericMaxThreads && static_cast<int64_t>(threads) * kVectorsPerThread < vectors) {
    threads *= 2;
  }
  return threads;
}

template <RowMode kMode, typename F>
cudaError_t launch_generic_rows_in_form(const RowParams& params, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(params.rows));
  const dim3 block(generic_block_threads(params));
  switch (params.dtype) {
    case RowDtype::kFloat32:
      generic_rows_kernel<float, kMode, F><<<grid, block, 0, stream>>>(params);
      break;
    case RowDtype::kFloat16:
      generic_rows_kernel<__half, kMode, F><<<grid, block, 0, stream>>>(params);
      break;
    case RowDtype::kBFloat16:
      generic_rows_kernel<__nv_bfloat16, kMode, F><<<grid, block, 0, stream>>>(params);
      break;
  }
  return cudaGetLastError();
}

// The launch of a mode in the row's form: softcap or not, the extras (token_stats only) or not.
template <RowMode kMode>
cudaError_t launch_generic_rows(const RowParams& params, cudaStream_t stream) {
  if (params.rows == 0) return cudaSuccess;
  const bool capped = params.transform.capped();
  if constexpr (kMode == RowMode::kStats) {
    if (params.log_sum_sq_probs != nullptr) {
      return capped ? launch_generic_rows_in_form<kMode, Form<true, true>>(params, stream)
                    : launch_generic_rows_in_form<kMode, Form<false, true>>(params, stream);
    }
  }
  return capped ? launch_generic_rows_in_form<kMode, Form<true, false>>(params, stream)
                : launch_generic_rows_in_form<kMode, Form<false, false>>(params, stream);
}

}  // namespace actfocus::cuda
