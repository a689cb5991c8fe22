// Vector math of the AVX-512 row kernels (row_kernels_avx512.cpp, which includes it after setting the
// AVX-512 target: not a standalone header). See that file's comment for the exp.
#pragma once

#include <immintrin.h>

#include <cmath>

#include "core/row_transform.h"

namespace actfocus::cpu {
namespace {

// The exps (see row_kernels_avx512.cpp's comment); NaN in, NaN out. (Free functions: the constants are
// hoisted out of the loops by the compiler.)
// clamp: max(-88, x) keeps a NaN x (x86 max returns its second operand when either is NaN)
inline __m512 exp_clamp(__m512 x) { return _mm512_max_ps(_mm512_set1_ps(-88.0f), x); }

// e^r for |r| <= ln 2 / 2: ATen exp_u20's degree-5 polynomial (1.6e-7 relative).
inline __m512 exp_poly(__m512 r) {
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.00828929059f), r, _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.999999701f));
  return _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
}

// exp of an already clamped x (-88 <= x <= 88): n = round(x log2 e), r = x - n ln 2 in one step (the
// error of fp32 ln 2, 2e-9 n, stays below 3e-7 relative at the smallest exp(x) it matters for),
// exp_poly(r) times 2^n, made by shifting n + 127 into the exponent field (0 at n = -127).
inline __m512 exp_of_clamped(__m512 x) {
  const __m512 magic = _mm512_set1_ps(12582912.0f + 127.0f);  // 1.5 * 2^23 + exponent bias
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);  // low bits: n + 127
  const __m512 n = _mm512_sub_ps(t, magic);  // n (exact, as a float)
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147180559945f), x);
  const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(t), 23));  // 2^n
  return _mm512_mul_ps(exp_poly(r), scale);
}

// exp(x) for finite |x| <= 80 (no clamp: the caller checked the row's range), 2^n applied by vscalefps:
// one instruction instead of the shift and the product.
inline __m512 exp_in_range(__m512 x) {
  const __m512 magic = _mm512_set1_ps(12582912.0f);  // 1.5 * 2^23: t - magic = round(x log2 e)
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);
  const __m512 n = _mm512_sub_ps(t, magic);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147180559945f), x);
  return _mm512_scalef_ps(exp_poly(r), n);
}

// sigmoid(v) from minus_v = -v (the caller folds the sign into its multiplier), the reciprocal of 1 + e by
// rcp14 and one Newton step (relative error about 2^-28, below fp32's rounding). tanh(v / 2) =
// 2 sigmoid(v) - 1, so the softcap's centred logit is a difference of sigmoids (Centre in
// row_kernels_avx512.cpp): the tanh costs an exp, an add, the reciprocal and little else. With
// quarter_derivative, also (1 - tanh^2(v / 2)) / 4 = sigmoid(v) (1 - sigmoid(v)) = e / (1 + e)^2 = e r^2
// (the caller folds the 4 into its coefficients).
//   kInRange (|v| <= 80, checked by the caller for the whole row): e = exp(-v) in [1.8e-35, 5.5e34], no
//     clamp, sigmoid = r = 1 / (1 + e);
//   else: e = exp(-|v|), 0 below -88, sigmoid = r for v >= 0 and e r for v < 0: no overflow, accurate in
//     both tails, and the derivative exactly 0 where e underflows (an infinite or saturated logit).
// NaN in, NaN out (the clamp max(-88, x) returns its NaN operand; the rest is arithmetic).
template <bool kInRange = false>
inline __m512 sigmoid_of_minus(__m512 minus_v, __m512* quarter_derivative = nullptr) {
  const __m512 e = kInRange ? exp_in_range(minus_v)
                            : exp_of_clamped(exp_clamp(_mm512_or_ps(minus_v, _mm512_set1_ps(-0.0f))));
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), e);
  const __m512 r0 = _mm512_rcp14_ps(d);
  // an explicitly rounded product: GCC may not contract it into a caller's subtraction, so that r, and x,
  // round the same wherever they are used (with or without the extra statistics)
  const __m512 r = _mm512_mul_round_ps(r0, _mm512_fnmadd_ps(d, r0, _mm512_set1_ps(2.0f)),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  if (quarter_derivative != nullptr) *quarter_derivative = _mm512_mul_ps(_mm512_mul_ps(e, r), r);
  if constexpr (kInRange) return r;
  return _mm512_mask_mul_ps(r, _mm512_cmp_ps_mask(minus_v, _mm512_setzero_ps(), _CMP_GT_OQ), r, e);  // v < 0: e r
}

// tanh(y) to about 1e-7 relative for every y from tanh_exp = 2 sigmoid(2 y) - 1, which loses relative
// accuracy near 0: the odd series of core/row_transform.h (TanhSeries) for |y| < 0.625.
inline __m512 tanh_near_zero(__m512 y, __m512 tanh_exp) {
  using S = TanhSeries;
  const __m512 z = _mm512_mul_ps(y, y);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(S::kC4), z, _mm512_set1_ps(S::kC3));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(S::kC2));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(S::kC1));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(S::kC0));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(y, z), p, y);
  const __mmask16 is_small = _mm512_cmp_ps_mask(_mm512_abs_ps(y), _mm512_set1_ps(S::kLimit), _CMP_LT_OQ);
  return _mm512_mask_mov_ps(tanh_exp, is_small, small);
}

// sum += the 16 floats of v, in float64.
inline __m512d add_as_double(__m512d sum, __m512 v) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return _mm512_add_pd(sum, _mm512_add_pd(lo, hi));
}

}  // namespace
}  // namespace actfocus::cpu
