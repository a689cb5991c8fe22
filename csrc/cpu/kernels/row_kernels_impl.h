// Row kernels on at::vec::Vectorized<float>. Included by exactly one translation unit per CPU
// capability, which first defines CPU_CAPABILITY (plus CPU_CAPABILITY_AVX2 for AVX2) and
// ACTFOCUS_ROW_KERNELS_ENTRY, the name of its table function declared in row_kernels.h.
// Everything here has internal linkage, so the per-capability copies never meet at link time.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#include "cpu/kernels/row_kernels.h"

namespace actfocus::cpu {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVec = Vec::size();
constexpr int64_t kStep = 2 * kVec;  // elements per loop iteration: two float vectors
constexpr float kInf = std::numeric_limits<float>::infinity();

// Two float vectors from / to kStep consecutive elements of type T.
template <typename T>
struct RowIO {
  static void load(const T* src, Vec& lo, Vec& hi) { at::vec::load_to_float<T>(src, lo, hi); }
  static void store(T* dst, const Vec& lo, const Vec& hi) {
    at::vec::convert_from_float<T>(lo, hi).store(dst);
  }
};

template <>
struct RowIO<float> {
  static void load(const float* src, Vec& lo, Vec& hi) {
    lo = Vec::loadu(src);
    hi = Vec::loadu(src + kVec);
  }
  static void store(float* dst, const Vec& lo, const Vec& hi) {
    lo.store(dst);
    hi.store(dst + kVec);
  }
};

// max that keeps NaN (std::max drops it when it comes second): a NaN logit propagates (SPEC section 2)
inline float max_keep_nan(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a < b ? b : a;
}

float reduce_max(const Vec& v) {
  float lanes[kVec];
  v.store(lanes);
  float result = lanes[0];
  for (int64_t i = 1; i < kVec; ++i) result = max_keep_nan(result, lanes[i]);
  return result;
}

float reduce_sum(const Vec& v) {
  float lanes[kVec];
  v.store(lanes);
  float total = 0.0f;
  for (int64_t i = 0; i < kVec; ++i) total += lanes[i];
  return total;
}

// x = (z - max z) / T, floored at -FLT_MAX so that exp(x) * x is 0 (not NaN) for z = -inf.
inline Vec centred(const Vec& z, const Vec& inv_temperature, const Vec& row_max) {
  return at::vec::maximum((z - row_max) * inv_temperature, Vec(-FLT_MAX));
}

inline float centred(float z, float inv_temperature, float row_max) {
  return std::max((z - row_max) * inv_temperature, -FLT_MAX);
}

template <typename T>
RowStats row_stats(const void* row_ptr, int64_t vocab, float inv_temperature, const void* /*next_row*/) {
  const T* row = static_cast<const T*>(row_ptr);
  const int64_t body = vocab - vocab % kStep;

  // Pass 1: the maximum (the row then sits in L2 for pass 2).
  Vec max_lo(-kInf), max_hi(-kInf);
  for (int64_t i = 0; i < body; i += kStep) {
    Vec lo, hi;
    RowIO<T>::load(row + i, lo, hi);
    max_lo = at::vec::maximum(max_lo, lo);
    max_hi = at::vec::maximum(max_hi, hi);
  }
  float row_max = reduce_max(at::vec::maximum(max_lo, max_hi));
  for (int64_t i = body; i < vocab; ++i) row_max = max_keep_nan(row_max, static_cast<float>(row[i]));

  // Pass 2: d = sum exp(x), t = sum exp(x) x.
  const Vec v_inv_temperature(inv_temperature), v_row_max(row_max);
  Vec sum_lo(0.0f), sum_hi(0.0f), wsum_lo(0.0f), wsum_hi(0.0f);
  for (int64_t i = 0; i < body; i += kStep) {
    Vec lo, hi;
    RowIO<T>::load(row + i, lo, hi);
    const Vec x_lo = centred(lo, v_inv_temperature, v_row_max);
    const Vec x_hi = centred(hi, v_inv_temperature, v_row_max);
    const Vec e_lo = x_lo.exp_u20();
    const Vec e_hi = x_hi.exp_u20();
    sum_lo = sum_lo + e_lo;
    sum_hi = sum_hi + e_hi;
    wsum_lo = at::vec::fmadd(e_lo, x_lo, wsum_lo);
    wsum_hi = at::vec::fmadd(e_hi, x_hi, wsum_hi);
  }
  float sum = reduce_sum(sum_lo + sum_hi);
  float wsum = reduce_sum(wsum_lo + wsum_hi);
  for (int64_t i = body; i < vocab; ++i) {
    const float x = centred(static_cast<float>(row[i]), inv_temperature, row_max);
    const float e = std::exp(x);
    sum += e;
    wsum += e * x;
  }
  // a NaN or +inf logit makes the whole row NaN, whatever the vector exp made of it (every exp(x) of a
  // finite row lies in [0, 1], so its sum is finite)
  if (row_max != row_max || row_max == kInf || !std::isfinite(sum)) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    return RowStats{nan, nan, nan, nan};
  }
  return RowStats{row_max, sum, static_cast<float>(std::log(static_cast<double>(sum))), wsum / sum};
}

template <typename T>
void row_grad(const void* row_ptr, void* grad_ptr, int64_t vocab, float inv_temperature,
              const RowStats& stats, float grad_scale, float coef, float entropy_coef) {
  const T* row = static_cast<const T*>(row_ptr);
  T* grad = static_cast<T*>(grad_ptr);
  const int64_t body = vocab - vocab % kStep;
  const Vec v_inv_temperature(inv_temperature), v_row_max(stats.max);
  const Vec v_log_sum(stats.log_sum), v_mean_shift(stats.mean_shift);
  const Vec v_grad_scale(grad_scale), v_coef(coef), v_entropy_coef(entropy_coef);
  // p (x - mean_shift) is formed first: p = 0 makes it 0 whatever entropy_coef is.
  auto grad_of = [&](const Vec& z) {
    const Vec x = centred(z, v_inv_temperature, v_row_max);
    const Vec p = (x - v_log_sum).exp_u20();
    return v_grad_scale * (v_entropy_coef * (p * (x - v_mean_shift)) - v_coef * p);
  };
  for (int64_t i = 0; i < body; i += kStep) {
    Vec lo, hi;
    RowIO<T>::load(row + i, lo, hi);
    RowIO<T>::store(grad + i, grad_of(lo), grad_of(hi));
  }
  for (int64_t i = body; i < vocab; ++i) {
    const float x = centred(static_cast<float>(row[i]), inv_temperature, stats.max);
    const float p = std::exp(x - stats.log_sum);
    grad[i] = static_cast<T>(grad_scale * (entropy_coef * (p * (x - stats.mean_shift)) - coef * p));
  }
}

template <typename T>
float row_load(const void* row, int64_t index) {
  return static_cast<float>(static_cast<const T*>(row)[index]);
}

template <typename T>
void row_store(void* row, int64_t index, float value) {
  static_cast<T*>(row)[index] = static_cast<T>(value);
}

template <typename T>
void row_zero(void* row, int64_t vocab) {
  std::fill_n(static_cast<T*>(row), vocab, static_cast<T>(0.0f));
}

template <typename T>
constexpr RowKernels kernels_for() {
  return RowKernels{&row_stats<T>, &row_grad<T>, &row_load<T>, &row_store<T>, &row_zero<T>};
}

}  // namespace

const RowKernels* ACTFOCUS_ROW_KERNELS_ENTRY(RowDtype dtype) {
  static constexpr RowKernels kFloat32 = kernels_for<float>();
  static constexpr RowKernels kFloat16 = kernels_for<c10::Half>();
  static constexpr RowKernels kBFloat16 = kernels_for<c10::BFloat16>();
  switch (dtype) {
    case RowDtype::kFloat32:
      return &kFloat32;
    case RowDtype::kFloat16:
      return &kFloat16;
    case RowDtype::kBFloat16:
      return &kBFloat16;
  }
  return nullptr;
}

}  // namespace actfocus::cpu
