// Row kernels for x86-64 CPUs with AVX-512 (F, BW, DQ, VL: ATen's "AVX512" capability), chosen at run
// time by row_kernels(). Raw intrinsics, 16 fp32 lanes, masked loads and stores for the row's tail (no
// scalar remainder loop), and an exp specialised for the centred logits x <= 0 (docs/performance.md):
//
//   n = round(x log2 e) by adding 1.5 * 2^23 (+ 127: the float's low bits are then n + 127),
//   r = x - n ln 2 in one step, ATen exp_u20's degree-5 polynomial (1.6e-7 relative), times 2^n.
//   - clamped form (rows with -inf entries or a spread over 80): x clamped to [-88, 0], 2^n made by
//     shifting n + 127 into the exponent field; x <= -88 gives n = -127, an exponent field of 0 and
//     exactly 0 (exp(-88) = 6e-39: the sums do not see it), so a -inf logit contributes 0;
//   - in-range form (every centred logit in [-80, 0], known from the row minimum of pass 1: typical
//     rows): no clamp, 2^n applied by vscalefps. Two instructions fewer per 16 elements.
//
// The stats pass also prefetches the thread's next row into L2 while it computes, so that the memory
// read of one row overlaps the arithmetic of the other (the pass is otherwise compute bound in cache).
//
// NaN propagation (SPEC section 2): the clamp is max(-88, x) with x as the second operand, which
// x86's max returns when either is NaN, and every later step is arithmetic, so a NaN logit makes the
// row's fp32 sum NaN; the statistics then mark the whole row NaN as the generic kernels do.
//
// Logit transforms (core/row_transform.h): logit_scale is folded into the inverse temperature (the same
// code as a temperature); softcap computes tanh on the fly as a sigmoid (avx512_math.h: sigmoid_of_minus,
// in range from exp(-2 cap_in z), clamped from exp(-|2 cap_in z|)), in the stats pass and, through
// ds/dz = (1 - tanh^2) logit_scale / T, in the gradient pass, which takes the stats pass's variant (so
// that both see the same x); no copy of the row.
// With softcap x >= -2 cap_out, so the gradient's exp(x - log_sum) needs no clamp either when
// 2 cap_out + log_sum <= 80. The extra statistics (token_stats' extra_stats) are further accumulators of the stats pass.
//
// The target is set for this file only with a pragma (setup.py has no per-file flags). Other compilers
// and architectures get no AVX-512 table.
#include "cpu/kernels/row_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")

#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <type_traits>

#include "cpu/kernels/avx512_math.h"
#include "cpu/kernels/row_table.h"

namespace actfocus::cpu {
namespace {

constexpr int64_t kLanes = 16;
constexpr float kInf = std::numeric_limits<float>::infinity();

// 16 elements of T as fp32, and back (round to nearest even, NaN kept), full and masked.
template <typename T>
struct Lanes;

template <>
struct Lanes<float> {
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static __m512 load(const float* p, __mmask16 m, __m512 fill) { return _mm512_mask_loadu_ps(fill, m, p); }
  static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
  static void store(float* p, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }
};

inline __m512 widen_bf16(__m256i bits) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)); }

// c10::BFloat16's rounding: NaN -> 0x7FC0, else round to nearest even on the upper 16 bits.
inline __m256i narrow_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(rounded);
}

template <>
struct Lanes<c10::BFloat16> {
  using T = c10::BFloat16;
  static __m512 load(const T* p) { return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load(const T* p, __mmask16 m, __m512 fill) {
    return _mm512_mask_mov_ps(fill, m, widen_bf16(_mm256_maskz_loadu_epi16(m, p)));
  }
  static void store(T* p, __m512 v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_bf16(v)); }
  static void store(T* p, __mmask16 m, __m512 v) { _mm256_mask_storeu_epi16(p, m, narrow_bf16(v)); }
};

template <>
struct Lanes<c10::Half> {
  using T = c10::Half;
  static __m512 load(const T* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load(const T* p, __mmask16 m, __m512 fill) {
    return _mm512_mask_mov_ps(fill, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)));
  }
  static __m256i narrow(__m512 v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static void store(T* p, __m512 v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(v)); }
  static void store(T* p, __mmask16 m, __m512 v) { _mm256_mask_storeu_epi16(p, m, narrow(v)); }
};

inline __mmask16 tail_mask(int64_t count) { return static_cast<__mmask16>((1u << count) - 1u); }

// The forms of the centred logits x = s(z) - s(max z) (core/row_transform.h): z - max z (logit_scale / T
// = 1: the product is skipped, the same value since the subtraction rounds once either way),
// (z - max z) slope, or with softcap cap_out (tanh(cap_in z) - tanh(cap_in max z)):
//   kCapped: 2 cap_out (sigmoid(2 cap_in z) - sigmoid(2 cap_in max z)) (tanh(y) = 2 sigmoid(2 y) - 1: one
//     exp, an add and a reciprocal per element; avx512_math.h). x carries about 2.4e-7 cap_out of absolute
//     error (the sigmoid's rounding near 1/2, doubled), which reaches the SPEC's 1e-5 as cap_out grows;
//   kCappedPrecise (cap_out > kPreciseCapOut): cap_out (tanh - tanh(cap_in max z)) with tanh from the odd
//     series wherever |cap_in z| < 0.625 (tanh_near_zero), so that x is as accurate as z there.
enum class Form { kUnit, kScaled, kCapped, kCappedPrecise };

constexpr bool is_capped(Form form) { return form == Form::kCapped || form == Form::kCappedPrecise; }

// softcap / T from which the softcap form is kCappedPrecise (the error of kCapped's x: about 1.5e-5).
constexpr float kPreciseCapOut = 64.0f;

template <Form kForm>
struct Centre {
  // cap_max: the form's own transform of max z (value() of it); cap_scale: 2 cap_out (kCapped), cap_out
  __m512 row_max, slope, cap_in, minus_cap_in2, cap_scale, cap_max;

  Centre(const RowTransformFloats& transform, float max, float cap_of_max)
      : row_max(_mm512_set1_ps(max)), slope(_mm512_set1_ps(transform.slope)), cap_in(_mm512_set1_ps(transform.cap_in)),
        minus_cap_in2(_mm512_set1_ps(-2.0f * transform.cap_in)),
        cap_scale(_mm512_set1_ps(kForm == Form::kCapped ? 2.0f * transform.cap_out : transform.cap_out)),
        cap_max(_mm512_set1_ps(cap_of_max)) {}

  // With softcap: sigmoid(2 cap_in z) (kCapped) or tanh(cap_in z) (kCappedPrecise), with
  // (1 - tanh^2(cap_in z)) / 4 into quarter_derivative and tanh(cap_in z) into tanh (when given).
  // kTanhInRange: every |2 cap_in z| of the row is <= 80.
  template <bool kTanhInRange = false>
  __m512 value(__m512 z, __m512* quarter_derivative = nullptr, __m512* tanh = nullptr) const {
    const __m512 r = sigmoid_of_minus<kTanhInRange>(_mm512_mul_ps(z, minus_cap_in2), quarter_derivative);
    const __m512 tanh_exp = _mm512_fmsub_ps(_mm512_set1_ps(2.0f), r, _mm512_set1_ps(1.0f));
    if constexpr (kForm == Form::kCapped) {
      if (tanh != nullptr) *tanh = tanh_exp;
      return r;
    }
    const __m512 t = tanh_near_zero(_mm512_mul_ps(z, cap_in), tanh_exp);
    if (tanh != nullptr) *tanh = t;
    return t;
  }

  // x of z (with softcap the outputs of value() too).
  template <bool kTanhInRange = false>
  __m512 at(__m512 z, __m512* quarter_derivative = nullptr, __m512* tanh = nullptr) const {
    if constexpr (kForm == Form::kUnit) return _mm512_sub_ps(z, row_max);
    if constexpr (kForm == Form::kScaled) return _mm512_mul_ps(_mm512_sub_ps(z, row_max), slope);
    const __m512 v = value<kTanhInRange>(z, quarter_derivative, tanh);
    return _mm512_mul_ps(_mm512_sub_ps(v, cap_max), cap_scale);
  }
};

// Centre<kForm>::value<kTanhInRange> of max z exactly as a pass in that variant computes it for an element
// equal to max z (so that its x is 0 there; the two variants may differ in the last bit).
template <Form kForm, bool kTanhInRange>
float cap_of_max(const RowTransformFloats& transform, float row_max) {
  return _mm512_cvtss_f32(
      Centre<kForm>(transform, row_max, 0.0f).template value<kTanhInRange>(_mm512_set1_ps(row_max)));
}

// Calls body with the softcap's form (std::integral_constant<Form, ...>).
template <typename Body>
auto with_capped_form(const RowTransformFloats& transform, const Body& body) {
  if (transform.cap_out > kPreciseCapOut) return body(std::integral_constant<Form, Form::kCappedPrecise>{});
  return body(std::integral_constant<Form, Form::kCapped>{});
}

inline float max_keep_nan(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a < b ? b : a;
}

// Pass 2's sums: sum exp(x), sum exp(x) x and, with extras, sum exp(2 x), sum x and the first x = 0.
struct RowSums {
  float sum;
  float wsum;
  float sum_sq;
  double sum_base;
  int64_t first_max;
  float cap_max;  // with softcap: Centre::value of max z in the pass's variant (x = 0 there); else 0
  bool in_range;  // with softcap: the pass took the in-range variant
};

// Rows whose centred logits all lie in [-80, 0] (no -inf, no underflow: typical rows) skip the clamp.
constexpr float kNoClampRange = 80.0f;

// Pass 2: the sums over x (see RowSums and RowExtras), exp(x) with x clamped at -88 (where exp(x) is 0) unless the
// row's range needs no clamp. With softcap a -inf logit is given x = -inf explicitly (its tanh is -1).
template <typename T, Form kForm, bool kClamp, bool kExtras>
RowSums row_sums(const T* row, int64_t vocab, const Centre<kForm>& centre, float row_max, const char* next_row) {
  const __m512 minus_inf = _mm512_set1_ps(-kInf), zero = _mm512_setzero_ps();
  const __m512 v_row_max = _mm512_set1_ps(row_max);
  __m512 s0 = zero, s1 = zero, w0 = zero, w1 = zero, q0 = zero, q1 = zero;
  // the mean's terms: fp32 over a chunk of kChunkPairs pairs, then into float64
  constexpr int64_t kChunkPairs = 32;
  __m512 chunk = zero;
  __m512d base = _mm512_setzero_pd();
  int64_t first_max = -1;
  // e = exp(x), x clamped for the exp, raw = x unclamped (the maximum test); t = tanh(cap_in z) (softcap)
  auto terms = [&](__m512 z, __m512& e, __m512& x, __m512& raw, __m512& t) {
    raw = centre.template at<!kClamp>(z, nullptr, &t);
    if constexpr (is_capped(kForm) && kClamp) {
      raw = _mm512_mask_mov_ps(raw, _mm512_cmp_ps_mask(z, minus_inf, _CMP_EQ_OQ), minus_inf);
    }
    x = kClamp ? exp_clamp(raw) : raw;
    e = kClamp ? exp_of_clamped(x) : exp_in_range(x);
  };
  auto extras = [&](__m512 z, __m512 e, __m512 raw, __m512 t, __mmask16 valid, int64_t index, __m512& sum_sq) {
    if constexpr (kExtras) {
      sum_sq = _mm512_fmadd_ps(e, e, sum_sq);
      __m512 term = z;
      if constexpr (is_capped(kForm)) {
        term = _mm512_mask_mov_ps(tanh_near_zero(_mm512_mul_ps(z, centre.cap_in), t),
                                  _mm512_cmp_ps_mask(z, minus_inf, _CMP_EQ_OQ), minus_inf);
      }
      chunk = _mm512_add_ps(chunk, _mm512_maskz_mov_ps(valid, term));
      if (first_max < 0) {
        const __mmask16 top = _mm512_cmp_ps_mask(raw, zero, _CMP_GE_OQ) & valid;
        if (top != 0) first_max = index + __builtin_ctz(top);
      }
    }
  };
  auto accumulate = [&](__m512 z, int64_t index, __m512& sum, __m512& wsum, __m512& sum_sq) {
    __m512 e, x, raw, t = z;  // t: written with softcap only
    terms(z, e, x, raw, t);
    sum = _mm512_add_ps(sum, e);
    wsum = _mm512_fmadd_ps(e, x, wsum);
    extras(z, e, raw, t, static_cast<__mmask16>(0xFFFF), index, sum_sq);
  };
  const int64_t pairs = vocab - vocab % (2 * kLanes);
  // the next row into L2, a line at a time, interleaved with the arithmetic (prefetches never fault)
  constexpr int64_t kPairBytes = 2 * kLanes * static_cast<int64_t>(sizeof(T));
  int64_t i = 0;
  for (; i < pairs; i += 2 * kLanes) {
    if (next_row != nullptr) {
      const char* line = next_row + i * static_cast<int64_t>(sizeof(T));
      _mm_prefetch(line, _MM_HINT_T1);
      if (kPairBytes > 64) _mm_prefetch(line + 64, _MM_HINT_T1);
    }
    accumulate(Lanes<T>::load(row + i), i, s0, w0, q0);
    accumulate(Lanes<T>::load(row + i + kLanes), i + kLanes, s1, w1, q1);
    if (kExtras && (i / (2 * kLanes)) % kChunkPairs == kChunkPairs - 1) {
      base = add_as_double(base, chunk);
      chunk = zero;
    }
  }
  for (; i < vocab; i += kLanes) {
    // lanes past the row read max z (x = 0, finite) and are then zeroed
    const __mmask16 mask = tail_mask(std::min<int64_t>(kLanes, vocab - i));
    const __m512 z = Lanes<T>::load(row + i, mask, v_row_max);
    __m512 e, x, raw, t = z;  // t: written with softcap only
    terms(z, e, x, raw, t);
    e = _mm512_maskz_mov_ps(mask, e);
    s0 = _mm512_add_ps(s0, e);
    w0 = _mm512_fmadd_ps(e, x, w0);
    extras(z, e, raw, t, mask, i, q0);
  }
  if (next_row != nullptr) {  // the next row's last lines (its tail past the pairs above)
    for (int64_t byte = pairs * static_cast<int64_t>(sizeof(T)); byte < vocab * static_cast<int64_t>(sizeof(T));
         byte += 64) {
      _mm_prefetch(next_row + byte, _MM_HINT_T1);
    }
  }
  RowSums sums;
  sums.sum = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  sums.wsum = _mm512_reduce_add_ps(_mm512_add_ps(w0, w1));
  sums.sum_sq = kExtras ? _mm512_reduce_add_ps(_mm512_add_ps(q0, q1)) : 0.0f;
  sums.sum_base = kExtras ? _mm512_reduce_add_pd(add_as_double(base, chunk)) : 0.0;
  sums.first_max = first_max;
  sums.cap_max = 0.0f;  // set by the softcap caller
  sums.in_range = !kClamp;
  return sums;
}

// Softcap: no -inf or NaN in the row and every |2 cap_in z| <= 80 (the tanh's exp needs no clamp).
inline bool tanh_in_range(const RowTransformFloats& transform, float row_max, float row_min) {
  return row_min > -kInf && 2.0f * transform.cap_in * std::max(std::fabs(row_max), std::fabs(row_min)) <= kNoClampRange;
}

template <typename T, Form kForm, bool kExtras>
RowSums sums_in_form(const T* row, int64_t vocab, const Centre<kForm>& centre, bool in_range, float row_max,
                     const char* next_row) {
  return in_range ? row_sums<T, kForm, false, kExtras>(row, vocab, centre, row_max, next_row)
                  : row_sums<T, kForm, true, kExtras>(row, vocab, centre, row_max, next_row);
}

template <typename T, bool kExtras>
RowSums sums_of(const T* row, int64_t vocab, const RowTransformFloats& transform, float row_max, float row_min,
                const char* next_row) {
  // finite and within range (false for NaN, -inf or an underflowing spread): then no clamp. With softcap
  // the spread is also at most 2 cap_out.
  const bool linear_in_range = (row_min - row_max) * transform.slope >= -kNoClampRange;
  if (transform.cap_in > 0.0f) {
    const bool in_range = tanh_in_range(transform, row_max, row_min) &&
                          (linear_in_range || 2.0f * transform.cap_out <= kNoClampRange);
    return with_capped_form(transform, [&](auto form) {
      const float cap_max = in_range ? cap_of_max<form(), true>(transform, row_max)
                                     : cap_of_max<form(), false>(transform, row_max);
      RowSums sums = sums_in_form<T, form(), kExtras>(row, vocab, Centre<form()>(transform, row_max, cap_max),
                                                      in_range, row_max, next_row);
      sums.cap_max = cap_max;
      return sums;
    });
  }
  if (transform.slope == 1.0f) {
    return sums_in_form<T, Form::kUnit, kExtras>(row, vocab, Centre<Form::kUnit>(transform, row_max, 0.0f),
                                                 linear_in_range, row_max, next_row);
  }
  return sums_in_form<T, Form::kScaled, kExtras>(row, vocab, Centre<Form::kScaled>(transform, row_max, 0.0f),
                                                 linear_in_range, row_max, next_row);
}

template <typename T>
RowStats row_stats(const void* row_ptr, int64_t vocab, const RowTransformFloats& transform, const void* next_row,
                   RowExtras* extras) {
  const T* row = static_cast<const T*>(row_ptr);
  constexpr int64_t kUnroll = 4;
  const int64_t body = vocab - vocab % (kUnroll * kLanes);
  const __m512 minus_inf = _mm512_set1_ps(-kInf);

  // Pass 1: the maximum (the row then sits in L2 for pass 2). A NaN may be dropped here: pass 2 sees it.
  // The minimum too: it says whether pass 2 may skip its clamp.
  const __m512 plus_inf = _mm512_set1_ps(kInf);
  __m512 m0 = minus_inf, m1 = minus_inf, m2 = minus_inf, m3 = minus_inf;
  __m512 l0 = plus_inf, l1 = plus_inf;
  int64_t i = 0;
  for (; i < body; i += kUnroll * kLanes) {
    const __m512 a = Lanes<T>::load(row + i), b = Lanes<T>::load(row + i + kLanes);
    const __m512 c = Lanes<T>::load(row + i + 2 * kLanes), d = Lanes<T>::load(row + i + 3 * kLanes);
    m0 = _mm512_max_ps(m0, a);
    m1 = _mm512_max_ps(m1, b);
    m2 = _mm512_max_ps(m2, c);
    m3 = _mm512_max_ps(m3, d);
    l0 = _mm512_min_ps(l0, _mm512_min_ps(a, b));
    l1 = _mm512_min_ps(l1, _mm512_min_ps(c, d));
  }
  for (; i < vocab; i += kLanes) {
    const __mmask16 mask = tail_mask(std::min<int64_t>(kLanes, vocab - i));
    const __m512 z = Lanes<T>::load(row + i, mask, minus_inf);
    m0 = _mm512_max_ps(m0, z);
    l0 = _mm512_mask_min_ps(l0, mask, l0, z);
  }
  const float row_max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
  const float row_min = _mm512_reduce_min_ps(_mm512_min_ps(l0, l1));

  const char* next = static_cast<const char*>(next_row);
  const RowSums sums = extras != nullptr
                           ? sums_of<T, true>(row, vocab, transform, row_max, row_min, next)
                           : sums_of<T, false>(row, vocab, transform, row_max, row_min, next);
  const float sum = sums.sum;
  if (extras != nullptr) *extras = RowExtras{sums.sum_sq, sums.sum_base, sums.first_max};
  // a NaN or +inf logit makes the whole row NaN (a NaN reaches sum through pass 2's arithmetic; every
  // exp(x) of a finite row lies in [0, 1], so its sum is finite)
  if (row_max != row_max || row_max == kInf || !std::isfinite(sum)) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    return RowStats{nan, nan, nan, nan, nan, false};
  }
  return RowStats{row_max, sum, static_cast<float>(std::log(static_cast<double>(sum))), sums.wsum / sum, sums.cap_max,
                  transform.cap_in > 0.0f && sums.in_range};
}

template <typename T, Form kForm, bool kTanhInRange, bool kExpInRange>
void row_grad_impl(const T* row, T* grad, int64_t vocab, const Centre<kForm>& centre, const RowStats& stats,
                   float grad_scale, float coef, float centred_coef) {
  constexpr bool kCapped = is_capped(kForm);
  const __m512 v_row_max = _mm512_set1_ps(stats.max);
  const __m512 v_log_sum = _mm512_set1_ps(stats.log_sum), v_mean_shift = _mm512_set1_ps(stats.mean_shift);
  // with softcap the 4 of ds/dz = 4 (1 - tanh^2) / 4 and grad_scale go into the coefficients
  const float scale = kCapped ? 4.0f * grad_scale : 1.0f;
  const __m512 v_grad_scale = _mm512_set1_ps(grad_scale), v_coef = _mm512_set1_ps(scale * coef);
  const __m512 v_centred_coef = _mm512_set1_ps(scale * centred_coef), v_floor = _mm512_set1_ps(-FLT_MAX);
  // grad_scale (centred_coef (p (x - mean_shift)) - coef p) [times 1 - tanh^2 with softcap]: p (x - mean_shift)
  // is formed first, so p = 0 makes it 0 whatever centred_coef is. Without softcap x is floored at -FLT_MAX (a
  // -inf logit: 0, not NaN); with softcap x is finite (or NaN) and 1 - tanh^2 is 0 for a -inf logit.
  // Softcap only: kTanhInRange, the transform's in-range variant (the one the statistics pass took, so that
  // both passes see the same x); kExpInRange, every x - log_sum lies within 80 of 0 (exp(x - log_sum)
  // needs no clamp).
  auto grad_of = [&](__m512 z) {
    __m512 quarter_derivative = _mm512_setzero_ps();  // written with softcap only
    const __m512 centred = centre.template at<kTanhInRange>(z, &quarter_derivative);
    const __m512 x = kCapped ? centred : _mm512_max_ps(v_floor, centred);
    const __m512 shifted = _mm512_sub_ps(x, v_log_sum);
    const __m512 p = kExpInRange ? exp_in_range(shifted) : exp_of_clamped(exp_clamp(shifted));
    const __m512 q = _mm512_mul_ps(p, _mm512_sub_ps(x, v_mean_shift));
    const __m512 bracket = _mm512_fmsub_ps(v_centred_coef, q, _mm512_mul_ps(v_coef, p));
    if constexpr (kCapped) return _mm512_mul_ps(quarter_derivative, bracket);
    return _mm512_mul_ps(v_grad_scale, bracket);
  };
  const int64_t pairs = vocab - vocab % (2 * kLanes);
  int64_t i = 0;
  for (; i < pairs; i += 2 * kLanes) {
    const __m512 lo = Lanes<T>::load(row + i), hi = Lanes<T>::load(row + i + kLanes);
    Lanes<T>::store(grad + i, grad_of(lo));
    Lanes<T>::store(grad + i + kLanes, grad_of(hi));
  }
  for (; i < vocab; i += kLanes) {
    const __mmask16 mask = tail_mask(std::min<int64_t>(kLanes, vocab - i));
    Lanes<T>::store(grad + i, mask, grad_of(Lanes<T>::load(row + i, mask, v_row_max)));
  }
}

template <typename T>
void row_grad(const void* row_ptr, void* grad_ptr, int64_t vocab, const RowTransformFloats& transform,
              const RowStats& stats, float grad_scale, float coef, float centred_coef) {
  const T* row = static_cast<const T*>(row_ptr);
  T* grad = static_cast<T*>(grad_ptr);
  if (transform.cap_in > 0.0f) {
    // x >= -2 cap_out with softcap, so x - log_sum >= -80 when 2 cap_out + log_sum <= 80
    const bool exp_in_range = 2.0f * transform.cap_out + stats.log_sum <= kNoClampRange;
    with_capped_form(transform, [&](auto form) {
      const Centre<form()> centre(transform, stats.max, stats.cap_max);
      if (!stats.tanh_in_range) {
        row_grad_impl<T, form(), false, false>(row, grad, vocab, centre, stats, grad_scale, coef, centred_coef);
      } else if (exp_in_range) {
        row_grad_impl<T, form(), true, true>(row, grad, vocab, centre, stats, grad_scale, coef, centred_coef);
      } else {
        row_grad_impl<T, form(), true, false>(row, grad, vocab, centre, stats, grad_scale, coef, centred_coef);
      }
    });
  } else if (transform.slope == 1.0f) {
    row_grad_impl<T, Form::kUnit, false, false>(row, grad, vocab, Centre<Form::kUnit>(transform, stats.max, 0.0f), stats,
                                         grad_scale, coef, centred_coef);
  } else {
    row_grad_impl<T, Form::kScaled, false, false>(row, grad, vocab, Centre<Form::kScaled>(transform, stats.max, 0.0f), stats,
                                           grad_scale, coef, centred_coef);
  }
}

struct Passes {  // this capability's passes, for row_table
  template <typename T> static constexpr auto stats = &row_stats<T>;
  template <typename T> static constexpr auto grad = &row_grad<T>;
};

}  // namespace

const RowKernels* row_kernels_avx512(RowDtype dtype) { return row_table<Passes>(dtype); }

}  // namespace actfocus::cpu
#else
namespace actfocus::cpu {
const RowKernels* row_kernels_avx512(RowDtype) { return nullptr; }
}  // namespace actfocus::cpu
#endif
