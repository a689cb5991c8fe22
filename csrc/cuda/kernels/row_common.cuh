// Device code shared by the CUDA row kernels: 16-byte vector conversions, the online softmax state
// of a row and its warp / block reduction, the gradient of one element. Torch-free.
//
// A row's state is kept relative to the running maximum m of the raw logits z, in base 2, on the
// centred transformed logits x_v = log2(e) (s(z_v) - s(m)) (core/row_transform.h): without softcap
// x_v = (z_v - m) k with k = log2(e) logit_scale / T (the difference is taken before scaling, so
// extreme logits stay exact); with softcap x_v = cap_out2 (tanh(cap_in z_v) - tanh(cap_in m)).
// sum = sum_v 2^x_v and wsum = sum_v 2^x_v x_v. Then, in natural units,
//   log_sum = ln(sum), lse = s(m) + log_sum, energy = -T lse,
//   mean_shift = ln(2) wsum / sum (= sum_v p_v s_v - s(m)), entropy = log_sum - mean_shift.
// With the extras (token_stats' extra_stats) also sum_sq = sum_v 2^(2 x_v), sum_base = sum_v z_v (or
// sum_v tanh(cap_in z_v)) in float64 and max_before = the maximum of z over the indices before the target.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <cstring>

#include "core/row_dtype.h"
#include "core/row_transform.h"
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

// The kernels' constants of a row's transform, and which parts of the state they keep: F::kCapped
// (softcap on), F::kExtras (the extra statistics).
template <bool kCappedArg, bool kExtrasArg>
struct Form {
  static constexpr bool kCapped = kCappedArg;
  static constexpr bool kExtras = kExtrasArg;
  float k;         // log2(e) logit_scale / T (without softcap)
  float cap_in;    // logit_scale / softcap
  float cap_out2;  // log2(e) softcap / T
};

template <typename F>
__host__ __device__ __forceinline__ F make_form(const RowTransform& transform) {
  F form;
  form.k = clamped_over_temperature(kLog2eDouble * transform.logit_scale, transform.temperature);
  form.cap_in = transform.cap_in();
  form.cap_out2 = clamped_over_temperature(kLog2eDouble * transform.softcap, transform.temperature);
  return form;
}

// tanh(y) from e = exp(-2|y|) (one MUFU exp2): tanh|y| = (1 - e) / (1 + e), and the odd series of
// core/row_transform.h (TanhSeries) for |y| < 0.625, where the exp form loses relative accuracy (x would
// carry cap_out times its absolute error); with derivative, also 1 - tanh^2(y) = 4 e / (1 + e)^2 (0 for
// y = +-inf). NaN in, NaN out.
__device__ __forceinline__ float tanh_exp2(float y, float* derivative = nullptr) {
  const float e = fast_exp2(-2.0f * kLog2e * fabsf(y));
  const float r = 1.0f / (1.0f + e);
  if (derivative != nullptr) *derivative = 4.0f * e * (r * r);
  return fabsf(y) < TanhSeries::kLimit ? TanhSeries::at(y) : copysignf((1.0f - e) * r, y);
}

// Online softmax state of (part of) a row; sum == 0 means no finite element seen yet.
struct RowState {
  float max;       // m: max of the raw logits seen
  float sum;       // sum 2^x
  float wsum;      // sum 2^x x
  float tanh_max;  // softcap: tanh(cap_in m) as tanh_exp2 computes it
  float sum_sq;    // extras: sum 2^(2 x)
  double sum_base; // extras: sum z (or tanh(cap_in z)), -inf with a -inf entry
  float max_before;  // extras: max z over the indices before the target
};

__device__ __forceinline__ RowState empty_state() {
  return RowState{neg_inf(), 0.0f, 0.0f, -1.0f, 0.0f, 0.0, neg_inf()};
}

// x of z relative to the state's maximum (row_max, tanh_max), floored at -FLT_MAX, so that 2^x x is 0
// (not NaN) for z = -inf; with softcap and derivative, also 1 - tanh^2(cap_in z) (0 for z = -inf).
template <typename F>
__device__ __forceinline__ float centred(float z, float row_max, float tanh_max, const F& form,
                                         float* derivative = nullptr) {
  if constexpr (F::kCapped) {
    const float x = (tanh_exp2(form.cap_in * z, derivative) - tanh_max) * form.cap_out2;
    return z == neg_inf() ? -FLT_MAX : fmaxf(x, -FLT_MAX);
  } else {
    return fmaxf((z - row_max) * form.k, -FLT_MAX);
  }
}

// Re-expresses a non-empty state relative to new_max >= state.max (new_tanh: its tanh_max):
// x' = x + shift, sum' = 2^shift sum, wsum' = 2^shift (wsum + shift sum), sum_sq' = 4^shift sum_sq.
// The shift is floored at -FLT_MAX and 2^shift shift is formed first, so a vanishing factor gives 0,
// never 0 * inf.
template <typename F>
__device__ __forceinline__ void rescale(RowState& state, float new_max, float new_tanh, const F& form) {
  const float shift = F::kCapped ? fmaxf((state.tanh_max - new_tanh) * form.cap_out2, -FLT_MAX)
                                 : fmaxf((state.max - new_max) * form.k, -FLT_MAX);
  const float factor = fast_exp2(shift);
  state.wsum = factor * state.wsum + (factor * shift) * state.sum;
  state.sum *= factor;
  if constexpr (F::kExtras) state.sum_sq *= factor * factor;
}

// Adds n values to the state: one rescale when their maximum raises m. With the extras, the values'
// indices are first_index, first_index + 1, ... and target is the row's target.
template <int n, typename F>
__device__ __forceinline__ void accumulate(RowState& state, const float (&z)[n], const F& form,
                                           int64_t first_index = 0, int64_t target = -1) {
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
    state.sum_sq = state.sum;
    state.sum_base = state.sum;
    return;
  }
  if constexpr (F::kExtras) {
#pragma unroll
    for (int i = 0; i < n; ++i) {
      state.sum_base += F::kCapped ? (z[i] == neg_inf() ? -INFINITY : static_cast<double>(tanhf(form.cap_in * z[i])))
                                   : static_cast<double>(z[i]);
      if (first_index + i < target) state.max_before = fmaxf(state.max_before, z[i]);
    }
  }
  if (!(block_max > neg_inf())) return;  // all -inf: nothing to add
  if (block_max > state.max) {
    const float new_tanh = F::kCapped ? tanh_exp2(form.cap_in * block_max) : 0.0f;
    if (state.sum > 0.0f) rescale(state, block_max, new_tanh, form);
    state.max = block_max;
    state.tanh_max = new_tanh;
  }
#pragma unroll
  for (int i = 0; i < n; ++i) {
    const float x = centred(z[i], state.max, state.tanh_max, form);
    const float e = fast_exp2(x);
    state.sum += e;
    state.wsum = fmaf(e, x, state.wsum);
    if constexpr (F::kExtras) state.sum_sq = fmaf(e, e, state.sum_sq);
  }
}

template <typename F>
__device__ __forceinline__ RowState combine(const RowState& a, const RowState& b, const F& form) {
  if (a.sum != a.sum) return a;  // NaN (a NaN or +inf logit) wins
  if (b.sum != b.sum) return b;
  RowState out = a;
  if constexpr (F::kExtras) {  // the extras of the elements seen, whether finite or -inf
    out.sum_base = a.sum_base + b.sum_base;
    out.max_before = fmaxf(a.max_before, b.max_before);
  }
  if (b.sum == 0.0f) return out;
  if (a.sum == 0.0f) {
    const double sum_base = out.sum_base;
    const float max_before = out.max_before;
    out = b;
    out.sum_base = sum_base;
    out.max_before = max_before;
    return out;
  }
  const bool a_leads = a.max >= b.max;
  const float row_max = a_leads ? a.max : b.max;
  const float new_tanh = a_leads ? a.tanh_max : b.tanh_max;
  RowState left = a;
  RowState right = b;
  rescale(left, row_max, new_tanh, form);
  rescale(right, row_max, new_tanh, form);
  out.max = row_max;
  out.tanh_max = new_tanh;
  out.sum = left.sum + right.sum;
  out.wsum = left.wsum + right.wsum;
  out.sum_sq = left.sum_sq + right.sum_sq;
  return out;
}

template <typename F>
__device__ __forceinline__ RowState shuffle_down(const RowState& state, int offset) {
  RowState out = state;
  out.max = __shfl_down_sync(0xffffffffu, state.max, offset);
  out.sum = __shfl_down_sync(0xffffffffu, state.sum, offset);
  out.wsum = __shfl_down_sync(0xffffffffu, state.wsum, offset);
  if constexpr (F::kCapped) out.tanh_max = __shfl_down_sync(0xffffffffu, state.tanh_max, offset);
  if constexpr (F::kExtras) {
    out.sum_sq = __shfl_down_sync(0xffffffffu, state.sum_sq, offset);
    out.sum_base = __shfl_down_sync(0xffffffffu, state.sum_base, offset);
    out.max_before = __shfl_down_sync(0xffffffffu, state.max_before, offset);
  }
  return out;
}

// Lane 0 of each warp gets the warp's combined state (a fixed tree: deterministic).
template <typename F>
__device__ __forceinline__ RowState warp_reduce(RowState state, const F& form) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    state = combine(state, shuffle_down<F>(state, offset), form);
  }
  return state;
}

// The block's combined state, the same in every thread. scratch: kMaxWarps + 1 states of shared
// memory. Contains __syncthreads: every thread of the block must call it.
template <typename F>
__device__ __forceinline__ RowState block_reduce(RowState state, const F& form, RowState* scratch) {
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  state = warp_reduce(state, form);
  if (lane == 0) scratch[warp] = state;
  __syncthreads();
  if (warp == 0) {
    state = warp_reduce(lane < warps ? scratch[lane] : empty_state(), form);
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
                                                            float target_logit, const RowTransform& transform) {
  const double log_sum = log(static_cast<double>(state.sum));
  const float mean_shift = kLn2 * (state.wsum / state.sum);
  TokenStatistics out;
  out.logp = has_target ? transform.centred(target_logit, state.max) - log_sum : 0.0;
  out.energy = static_cast<float>(-(transform.tempered(state.max) + transform.temperature * log_sum));
  out.entropy = static_cast<float>(log_sum - mean_shift);
  return out;
}

// The extra statistics of a row (token_stats' extra_stats) from its state:
//   log_sum_sq_probs = ln(sum_sq) - 2 ln(sum), mean_logits = (logit_scale or softcap) sum_base / (V T),
//   is_top1 = s(z_y) = s(m) and s(max_before) < s(m) (y is the first maximum of s; false without a target
//   or on a NaN row), s compared through the same fp32 tanh as the state's.
template <typename F>
__device__ __forceinline__ void write_extras(const RowParams& params, int64_t row, const RowState& state,
                                             const RowTarget& target, const F& form) {
  const RowTransform& transform = params.transform;
  params.log_sum_sq_probs[row] =
      static_cast<float>(log(static_cast<double>(state.sum_sq)) - 2.0 * log(static_cast<double>(state.sum)));
  const double base_scale = transform.capped() ? transform.softcap : transform.logit_scale;
  params.mean_logits[row] =
      static_cast<float>(base_scale * (state.sum_base / static_cast<double>(params.vocab)) / transform.temperature);
  bool top1 = target.onehot >= 0 && state.sum == state.sum;
  if constexpr (F::kCapped) {
    const bool before = state.max_before == neg_inf() || tanh_exp2(form.cap_in * state.max_before) < state.tanh_max;
    top1 = top1 && tanh_exp2(form.cap_in * target.logit) == state.tanh_max && before;
  } else {
    top1 = top1 && target.logit == state.max && state.max_before < state.max;
  }
  params.is_top1[row] = top1;
}

// Everything the gradient of one row needs, in base 2 where x is:
//   dz_v = grad_scale * ds_v/dz_v / (logit_scale / T) * (centred_ln2 * p_v (x_v - mean_shift2) - coef p_v)
//   [+ grad_scale ds/dz target_coef at y], with p_v = 2^(x_v - log2_sum) (ds/dz / (logit_scale / T) = 1
//   without softcap, 1 - tanh^2(cap_in z) with it).
template <typename F>
struct RowGrad {
  F form;
  float row_max;
  float tanh_max;
  float log2_sum;      // log2(sum)
  float mean_shift2;   // wsum / sum
  float grad_scale;    // scale logit_scale / T
  float centred_ln2;   // the coefficient of p (s - mu), times ln(2)
  float coef;          // the coefficient of p
  float target_coef;   // the coefficient of the one-hot term
  int64_t target;      // -1 for none
};

template <typename F>
__device__ __forceinline__ float element_grad(float z, int64_t index, const RowGrad<F>& g) {
  float derivative = 1.0f;
  const float x = centred(z, g.row_max, g.tanh_max, g.form, &derivative);
  const float p = fast_exp2(x - g.log2_sum);
  // p (x - mean_shift2) first: p = 0 makes it 0 whatever the coefficients are
  // one product: with p = 1 the bracket cancels to 0 before a huge grad_scale (tiny T) multiplies it
  const float onehot = index == g.target ? g.target_coef : 0.0f;
  const float bracket = g.centred_ln2 * (p * (x - g.mean_shift2)) - g.coef * p + onehot;
  if constexpr (F::kCapped) return g.grad_scale * (derivative * bracket);
  return g.grad_scale * bracket;
}

// Number of leading elements of row before its first 16-byte boundary (at most vocab).
template <typename T>
__device__ __forceinline__ int row_head(const T* row, int64_t vocab) {
  const int misalignment = static_cast<int>(reinterpret_cast<uintptr_t>(row) & 15u);
  const int head = ((16 - misalignment) & 15) / static_cast<int>(sizeof(T));
  return vocab < head ? static_cast<int>(vocab) : head;
}

}  // namespace actfocus::cuda
