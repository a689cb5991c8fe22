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

#include "core/row_transform.h"
#include "cpu/kernels/row_kernels.h"
#include "cpu/kernels/row_table.h"

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

float first_lane(const Vec& v) {
  float lanes[kVec];
  v.store(lanes);
  return lanes[0];
}

// tanh(y) from e = exp(-2|y|): tanh|y| = (1 - e) / (1 + e), and the odd series of core/row_transform.h
// (TanhSeries) for |y| < 0.625, where the exp form loses relative accuracy (x would carry cap_out times its
// absolute error); with derivative, 1 - tanh^2(y) = 4 e / (1 + e)^2 too (0 where e underflows, so a -inf
// logit has ds/dz = 0).
inline Vec tanh_vec(const Vec& y, Vec* derivative = nullptr) {
  using S = TanhSeries;
  const Vec one(1.0f);
  const Vec e = (y.abs() * Vec(-2.0f)).exp_u20();
  const Vec r = one / (one + e);
  if (derivative != nullptr) *derivative = Vec(4.0f) * e * (r * r);
  const Vec z = y * y;
  const Vec p = (((Vec(S::kC4) * z + Vec(S::kC3)) * z + Vec(S::kC2)) * z + Vec(S::kC1)) * z + Vec(S::kC0);
  return Vec::blendv(((one - e) * r).copysign(y), (y * z) * p + y, y.abs() < Vec(S::kLimit));
}

// The centred logits x = s(z) - s(max z) (core/row_transform.h) in one of three forms: (z - max z) slope
// (kCapped false), or cap_out (tanh(cap_in z) - tanh(cap_in max z)). raw: unfloored (-inf for z = -inf);
// floored: at -FLT_MAX, so that exp(x) * x is 0 (not NaN) for z = -inf. The scalar form of the softcap
// runs the vector code on one lane, so an element equal to max z gets x = 0 wherever it sits.
template <bool kCapped>
struct Centre {
  float row_max, slope, cap_in, cap_out, tanh_max;

  Vec raw(const Vec& z, Vec* derivative = nullptr) const {
    if constexpr (kCapped) {
      const Vec x = (tanh_vec(z * Vec(cap_in), derivative) - Vec(tanh_max)) * Vec(cap_out);
      return Vec::blendv(x, Vec(-kInf), z == Vec(-kInf));
    }
    return (z - Vec(row_max)) * Vec(slope);
  }
  Vec floored(const Vec& z, Vec* derivative = nullptr) const {
    return at::vec::maximum(raw(z, derivative), Vec(-FLT_MAX));
  }
  float raw(float z, float* derivative = nullptr) const {
    if constexpr (kCapped) {
      Vec lane_derivative;
      const float x = first_lane(raw(Vec(z), &lane_derivative));
      if (derivative != nullptr) *derivative = first_lane(lane_derivative);
      return x;
    }
    return (z - row_max) * slope;
  }
  float floored(float z, float* derivative = nullptr) const { return std::max(raw(z, derivative), -FLT_MAX); }
};

inline float tanh_of_max(const RowTransformFloats& transform, float row_max) {
  return first_lane(tanh_vec(Vec(row_max) * Vec(transform.cap_in)));
}

// A term of the mean of s: z without softcap, an accurate tanh(cap_in z) with it (-inf for z = -inf).
template <bool kCapped>
Vec mean_term(const Vec& z, const Centre<kCapped>& centre) {
  if constexpr (kCapped) return Vec::blendv((z * Vec(centre.cap_in)).tanh(), Vec(-kInf), z == Vec(-kInf));
  return z;
}

template <typename T, bool kCapped, bool kExtras>
RowStats row_stats_in_form(const T* row, int64_t vocab, const Centre<kCapped>& centre, RowExtras* extras) {
  const int64_t body = vocab - vocab % kStep;
  // d = sum exp(x), t = sum exp(x) x; with extras sum exp(2 x), the float64 sum of the mean's terms and
  // the first x = 0
  Vec sum_lo(0.0f), sum_hi(0.0f), wsum_lo(0.0f), wsum_hi(0.0f), sq(0.0f);
  double base = 0.0;
  int64_t first_max = -1;
  auto add = [&](const Vec& z, int64_t index, Vec& sum, Vec& wsum) {
    const Vec raw = centre.raw(z);
    const Vec x = at::vec::maximum(raw, Vec(-FLT_MAX));
    const Vec e = x.exp_u20();
    sum = sum + e;
    wsum = at::vec::fmadd(e, x, wsum);
    if constexpr (kExtras) {
      sq = at::vec::fmadd(e, e, sq);
      float terms[kVec];
      mean_term(z, centre).store(terms);
      for (int64_t lane = 0; lane < kVec; ++lane) base += terms[lane];
      if (first_max < 0) {
        const int top = ~(raw >= Vec(0.0f)).zero_mask() & ((1 << kVec) - 1);
        if (top != 0) first_max = index + __builtin_ctz(top);
      }
    }
  };
  for (int64_t i = 0; i < body; i += kStep) {
    Vec lo, hi;
    RowIO<T>::load(row + i, lo, hi);
    add(lo, i, sum_lo, wsum_lo);
    add(hi, i + kVec, sum_hi, wsum_hi);
  }
  float sum = reduce_sum(sum_lo + sum_hi);
  float wsum = reduce_sum(wsum_lo + wsum_hi);
  float sum_sq = reduce_sum(sq);
  for (int64_t i = body; i < vocab; ++i) {
    const float raw = centre.raw(static_cast<float>(row[i]));
    const float x = std::max(raw, -FLT_MAX);
    const float e = std::exp(x);
    sum += e;
    wsum += e * x;
    if constexpr (kExtras) {
      sum_sq += e * e;
      base += first_lane(mean_term(Vec(static_cast<float>(row[i])), centre));
      if (first_max < 0 && raw >= 0.0f) first_max = i;
    }
  }
  if (extras != nullptr) *extras = RowExtras{sum_sq, base, first_max};
  return RowStats{centre.row_max, sum, 0.0f, wsum / sum, centre.tanh_max, false};
}

template <typename T>
RowStats row_stats(const void* row_ptr, int64_t vocab, const RowTransformFloats& transform, const void* /*next_row*/,
                   RowExtras* extras) {
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

  // Pass 2: the sums of the row's form.
  const bool capped = transform.cap_in > 0.0f;
  const float tanh_max = capped ? tanh_of_max(transform, row_max) : 0.0f;
  const Centre<true> capped_centre{row_max, transform.slope, transform.cap_in, transform.cap_out, tanh_max};
  const Centre<false> linear_centre{row_max, transform.slope, 0.0f, 0.0f, 0.0f};
  const RowStats result =
      capped ? (extras != nullptr ? row_stats_in_form<T, true, true>(row, vocab, capped_centre, extras)
                                  : row_stats_in_form<T, true, false>(row, vocab, capped_centre, nullptr))
             : (extras != nullptr ? row_stats_in_form<T, false, true>(row, vocab, linear_centre, extras)
                                  : row_stats_in_form<T, false, false>(row, vocab, linear_centre, nullptr));
  // a NaN or +inf logit makes the whole row NaN, whatever the vector exp made of it (every exp(x) of a
  // finite row lies in [0, 1], so its sum is finite)
  const float sum = result.sum;
  if (row_max != row_max || row_max == kInf || !std::isfinite(sum)) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    return RowStats{nan, nan, nan, nan, nan, false};
  }
  return RowStats{row_max, sum, static_cast<float>(std::log(static_cast<double>(sum))), result.mean_shift, tanh_max, false};
}

template <typename T, bool kCapped>
void row_grad_in_form(const T* row, T* grad, int64_t vocab, const Centre<kCapped>& centre, const RowStats& stats,
                      float grad_scale, float coef, float centred_coef) {
  const int64_t body = vocab - vocab % kStep;
  const Vec v_log_sum(stats.log_sum), v_mean_shift(stats.mean_shift);
  const Vec v_grad_scale(grad_scale), v_coef(coef), v_centred_coef(centred_coef);
  // p (x - mean_shift) is formed first: p = 0 makes it 0 whatever centred_coef is; with softcap the
  // bracket is multiplied by 1 - tanh^2 before grad_scale.
  auto grad_of = [&](const Vec& z) {
    Vec derivative;
    const Vec x = centre.floored(z, &derivative);
    const Vec p = (x - v_log_sum).exp_u20();
    const Vec bracket = v_centred_coef * (p * (x - v_mean_shift)) - v_coef * p;
    if constexpr (kCapped) return v_grad_scale * (derivative * bracket);
    return v_grad_scale * bracket;
  };
  for (int64_t i = 0; i < body; i += kStep) {
    Vec lo, hi;
    RowIO<T>::load(row + i, lo, hi);
    RowIO<T>::store(grad + i, grad_of(lo), grad_of(hi));
  }
  for (int64_t i = body; i < vocab; ++i) {
    float derivative = 1.0f;
    const float x = centre.floored(static_cast<float>(row[i]), &derivative);
    const float p = std::exp(x - stats.log_sum);
    const float bracket = centred_coef * (p * (x - stats.mean_shift)) - coef * p;
    grad[i] = static_cast<T>(kCapped ? grad_scale * (derivative * bracket) : grad_scale * bracket);
  }
}

template <typename T>
void row_grad(const void* row_ptr, void* grad_ptr, int64_t vocab, const RowTransformFloats& transform,
              const RowStats& stats, float grad_scale, float coef, float centred_coef) {
  const T* row = static_cast<const T*>(row_ptr);
  T* grad = static_cast<T*>(grad_ptr);
  if (transform.cap_in > 0.0f) {
    const Centre<true> centre{stats.max, transform.slope, transform.cap_in, transform.cap_out, stats.cap_max};
    row_grad_in_form<T, true>(row, grad, vocab, centre, stats, grad_scale, coef, centred_coef);
  } else {
    const Centre<false> centre{stats.max, transform.slope, 0.0f, 0.0f, 0.0f};
    row_grad_in_form<T, false>(row, grad, vocab, centre, stats, grad_scale, coef, centred_coef);
  }
}

struct Passes {  // this capability's passes, for row_table
  template <typename T> static constexpr auto stats = &row_stats<T>;
  template <typename T> static constexpr auto grad = &row_grad<T>;
};

}  // namespace

const RowKernels* ACTFOCUS_ROW_KERNELS_ENTRY(RowDtype dtype) { return row_table<Passes>(dtype); }

}  // namespace actfocus::cpu
