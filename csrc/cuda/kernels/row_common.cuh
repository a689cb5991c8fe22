// Device code shared by the CUDA row kernels: 16-byte vector conversions, the online softmax state
// of a row and its warp / block reduction, the gradient of one element. Torch-free.
//
// A row's state is kept relative to the running maximum m of the raw logits z, in base 2:
// x_v = (z_v - m) * log2(e) / T (the difference is taken before scaling, so extreme logits stay
// exact), sum = sum_v 2^x_v and wsum = sum_v 2^x_v x_v. Then, in natural units,
//   log_sum = ln(sum), lse = m / T + log_sum, energy = -(m + T log_sum),
//   mean_shift = ln(2) wsum / sum (= sum_v p_v s_v - m / T), entropy = log_sum - mean_shift.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <cstring>

#include "core/row_dtype.h"
#include "core/token_loss.h"
#include "cuda/kernels/launch.h"

namespace actfocus::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr double kLog2eDouble = 1.4426950408889634;
constexpr int kWarpSize = 32;
constexpr int kMaxWarps = 32;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// 2^x in one MUFU instruction (relative error ~2^-22; 2^-inf = 0, subnormal results flush to 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <typename To, typename From>
__device__ __forceinline__ To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

// Conversions of one 16-byte vector (kSize elements of T) and of single elements.
template <typename T>
struct VecIO;

template <>
struct VecIO<float> {
  static constexpr int kSize = 4;
  __device__ static void to_float(const uint4& v, float (&out)[kSize]) {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
  }
  __device__ static uint4 from_float(const float (&in)[kSize]) {
    return make_uint4(__float_as_uint(in[0]), __float_as_uint(in[1]), __float_as_uint(in[2]),
                      __float_as_uint(in[3]));
  }
  __device__ static float load(const float* src) { return *src; }
  __device__ static void store(float* dst, float value) { *dst = value; }
};

template <>
struct VecIO<__nv_bfloat16> {
  static constexpr int kSize = 8;
  // bf16 -> fp32 is a shift: element 2i is the low half of word i (little endian).
  __device__ static void to_float(const uint4& v, float (&out)[kSize]) {
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = __uint_as_float(words[i] << 16);
      out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  }
  __device__ static uint4 from_float(const float (&in)[kSize]) {
    uint32_t words[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      words[i] = bit_cast<uint32_t>(__floats2bfloat162_rn(in[2 * i], in[2 * i + 1]));
    }
    return make_uint4(words[0], words[1], words[2], words[3]);
  }
  __device__ static float load(const __nv_bfloat16* src) { return __bfloat162float(*src); }
  __device__ static void store(__nv_bfloat16* dst, float value) { *dst = __float2bfloat16_rn(value); }
};

template <>
struct VecIO<__half> {
  static constexpr int kSize = 8;
  __device__ static void to_float(const uint4& v, float (&out)[kSize]) {
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 pair = __half22float2(bit_cast<__half2>(words[i]));
      out[2 * i] = pair.x;
      out[2 * i + 1] = pair.y;
    }
  }
  __device__ static uint4 from_float(const float (&in)[kSize]) {
    uint32_t words[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      words[i] = bit_cast<uint32_t>(__floats2half2_rn(in[2 * i], in[2 * i + 1]));
    }
    return make_uint4(words[0], words[1], words[2], words[3]);
  }
  __device__ static float load(const __half* src) { return __half2float(*src); }
  __device__ static void store(__half* dst, float value) { *dst = __float2half_rn(value); }
};

// Online softmax state of (part of) a row; sum == 0 means no finite element seen yet.
struct RowState {
  float max;   // m: max of the raw logits seen
  float sum;   // sum 2^x
  float wsum;  // sum 2^x x
};

__device__ __forceinline__ RowState empty_state() { return RowState{neg_inf(), 0.0f, 0.0f}; }

// x = (z - m) * k floored at -FLT_MAX, so that 2^x x is 0 (not NaN) for z = -inf.
__device__ __forceinline__ float centred(float z, float row_max, float k) {
  return fmaxf((z - row_max) * k, -FLT_MAX);
}

// Re-expresses a non-empty state relative to new_max >= state.max (sum and wsum only):
// x' = x + shift, sum' = 2^shift sum, wsum' = 2^shift (wsum + shift sum). The shift is floored at
// -FLT_MAX and 2^shift shift is formed first, so a vanishing factor gives 0, never 0 * inf.
__device__ __forceinline__ void rescale(RowState& state, float new_max, float k) {
  const float shift = fmaxf((state.max - new_max) * k, -FLT_MAX);
  const float factor = fast_exp2(shift);
  state.wsum = factor * state.wsum + (factor * shift) * state.sum;
  state.sum *= factor;
}

// Adds n values to the state (k = log2(e) / T): one rescale when their maximum raises m.
template <int n>
__device__ __forceinline__ void accumulate(RowState& state, const float (&z)[n], float k) {
  float block_max = z[0];
  bool poisoned = false;  // NaN or +inf: the row's statistics are NaN (fmaxf would drop a NaN)
#pragma unroll
  for (int i = 0; i < n; ++i) {
    block_max = fmaxf(block_max, z[i]);
    poisoned = poisoned || z[i] != z[i] || z[i] == -neg_inf();
  }
  if (poisoned) {  // NaN is sticky: later adds, rescales and combines keep it
    state.sum = __int_as_float(0x7fc00000);
    state.wsum = state.sum;
    return;
  }
  if (!(block_max > neg_inf())) return;  // all -inf: nothing to add
  if (block_max > state.max) {
    if (state.sum > 0.0f) rescale(state, block_max, k);
    state.max = block_max;
  }
#pragma unroll
  for (int i = 0; i < n; ++i) {
    const float x = centred(z[i], state.max, k);
    const float e = fast_exp2(x);
    state.sum += e;
    state.wsum = fmaf(e, x, state.wsum);
  }
}

__device__ __forceinline__ RowState combine(const RowState& a, const RowState& b, float k) {
  if (a.sum != a.sum) return a;  // NaN (a NaN or +inf logit) wins
  if (b.sum != b.sum) return b;
  if (b.sum == 0.0f) return a;
  if (a.sum == 0.0f) return b;
  const float row_max = fmaxf(a.max, b.max);
  RowState left = a;
  RowState right = b;
  rescale(left, row_max, k);
  rescale(right, row_max, k);
  return RowState{row_max, left.sum + right.sum, left.wsum + right.wsum};
}

__device__ __forceinline__ RowState shuffle_down(const RowState& state, int offset) {
  return RowState{__shfl_down_sync(0xffffffffu, state.max, offset),
                  __shfl_down_sync(0xffffffffu, state.sum, offset),
                  __shfl_down_sync(0xffffffffu, state.wsum, offset)};
}

// Lane 0 of each warp gets the warp's combined state (a fixed tree: deterministic).
__device__ __forceinline__ RowState warp_reduce(RowState state, float k) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    state = combine(state, shuffle_down(state, offset), k);
  }
  return state;
}

// The block's combined state, the same in every thread. scratch: kMaxWarps + 1 states of shared
// memory. Contains __syncthreads: every thread of the block must call it.
__device__ __forceinline__ RowState block_reduce(RowState state, float k, RowState* scratch) {
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  state = warp_reduce(state, k);
  if (lane == 0) scratch[warp] = state;
  __syncthreads();
  if (warp == 0) {
    state = warp_reduce(lane < warps ? scratch[lane] : empty_state(), k);
    if (lane == 0) scratch[kMaxWarps] = state;
  }
  __syncthreads();
  return scratch[kMaxWarps];
}

// The row's target: whether it counts (not ignore_index), its one-hot index in the gradient (-1
// for none) and its raw logit, read by thread 0 only (0 in the other threads). An out-of-range
// target (the API rejects them) gives a NaN logit and no one-hot term, never an out-of-bounds read.
struct RowTarget {
  bool counts;
  int64_t onehot;
  float logit;
};

template <typename T>
__device__ __forceinline__ RowTarget read_target(const T* logits, int64_t target, int64_t ignore_index,
                                                 int64_t vocab) {
  const bool in_range = target >= 0 && target < vocab;
  RowTarget out;
  out.counts = target != ignore_index;
  out.onehot = out.counts && in_range ? target : -1;
  out.logit = 0.0f;
  if (threadIdx.x == 0 && out.counts) {
    out.logit = in_range ? VecIO<T>::load(logits + target) : __int_as_float(0x7fc00000);
  }
  return out;
}

// The detached per-token inputs of the loss for one row (absent old/ref log-probs read as 0).
__device__ __forceinline__ TokenInputs read_token_inputs(const RowParams& params, int64_t row, bool has_target) {
  TokenInputs inputs;
  inputs.has_target = has_target;
  inputs.scale = params.scale[row];
  inputs.old_logp = params.old_logp != nullptr ? params.old_logp[row] : 0.0f;
  inputs.advantage = params.advantages[row];
  inputs.ref_logp = params.ref_logp != nullptr ? params.ref_logp[row] : 0.0f;
  inputs.weight = params.weights[row];
  return inputs;
}

// The token's statistics from the row's state, the per-row scalars in float64 like the reference
// (logp keeps the accuracy of the fp32 sum for the ratio of a loss that nearly cancels).
struct TokenStatistics {
  double logp;  // 0 without a target
  float energy;
  float entropy;
};

__device__ __forceinline__ TokenStatistics token_statistics(const RowState& state, bool has_target,
                                                            float target_logit, double temperature) {
  const double log_sum = log(static_cast<double>(state.sum));
  const float mean_shift = kLn2 * (state.wsum / state.sum);
  TokenStatistics out;
  out.logp = has_target ? (static_cast<double>(target_logit) - state.max) / temperature - log_sum : 0.0;
  out.energy = static_cast<float>(-(state.max + temperature * log_sum));
  out.entropy = static_cast<float>(log_sum - mean_shift);
  return out;
}

// Everything the gradient of one row needs, in base 2 where x is:
//   dz_v = grad_scale * (entropy_coef ln2 * p_v (x_v - mean_shift2) - coef p_v) [+ grad_scale coef at y]
//   with p_v = 2^(x_v - log2_sum).
struct RowGrad {
  float row_max;
  float k;             // log2(e) / T
  float log2_sum;      // log2(sum)
  float mean_shift2;   // wsum / sum
  float grad_scale;    // scale / T
  float entropy_ln2;   // entropy_coef * ln(2)
  float coef;          // the coefficient of p (c of the token loss)
  float target_coef;   // the coefficient of the one-hot term (c of the token loss)
  int64_t target;      // -1 for none
};

__device__ __forceinline__ float element_grad(float z, int64_t index, const RowGrad& g) {
  const float x = centred(z, g.row_max, g.k);
  const float p = fast_exp2(x - g.log2_sum);
  // p (x - mean_shift2) first: p = 0 makes it 0 whatever the coefficients are
  // one product: with p = 1 the bracket cancels to 0 before a huge grad_scale (tiny T) multiplies it
  const float onehot = index == g.target ? g.target_coef : 0.0f;
  return g.grad_scale * (g.entropy_ln2 * (p * (x - g.mean_shift2)) - g.coef * p + onehot);
}

// Number of leading elements of row before its first 16-byte boundary (at most vocab).
template <typename T>
__device__ __forceinline__ int row_head(const T* row, int64_t vocab) {
  const int misalignment = static_cast<int>(reinterpret_cast<uintptr_t>(row) & 15u);
  const int head = ((16 - misalignment) & 15) / static_cast<int>(sizeof(T));
  return vocab < head ? static_cast<int>(vocab) : head;
}

}  // namespace actfocus::cuda
