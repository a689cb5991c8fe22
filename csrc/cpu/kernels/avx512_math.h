// Vector math of the AVX-512 row kernels (row_kernels_avx512.cpp, which includes it after setting the
// AVX-512 target: not a standalone header). See that file's comment for the exp.
#pragma once

#include <immintrin.h>

namespace actfocus::cpu {
namespace {

// exp(x) for x <= 0 (see the file comment); NaN in, NaN out. (Free functions: the constants are
// hoisted out of the loops by the compiler.)
// clamp: max(-88, x) keeps a NaN x (x86 max returns its second operand when either is NaN)
inline __m512 exp_clamp(__m512 x) { return _mm512_max_ps(_mm512_set1_ps(-88.0f), x); }

// exp of an already clamped x: n = round(x log2 e), r = x - n ln 2 in one step (the error of fp32 ln 2,
// 2e-9 n, stays below 3e-7 relative at the smallest exp(x) it matters for), ATen exp_u20's degree-5
// polynomial (1.6e-7 relative on |r| <= ln 2 / 2), times 2^n.
inline __m512 exp_of_clamped(__m512 x) {
  const __m512 magic = _mm512_set1_ps(12582912.0f + 127.0f);  // 1.5 * 2^23 + exponent bias
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);  // low bits: n + 127
  const __m512 n = _mm512_sub_ps(t, magic);  // n (exact, as a float)
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147180559945f), x);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.00828929059f), r, _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.999999701f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(t), 23));  // 2^n, 0 at n = -127
  return _mm512_mul_ps(p, scale);
}

// exp(x) for finite x >= -80 (no clamp: the caller checked the row's range), 2^n applied by vscalefps:
// one instruction instead of the shift and the product.
inline __m512 exp_in_range(__m512 x) {
  const __m512 magic = _mm512_set1_ps(12582912.0f);  // 1.5 * 2^23: t - magic = round(x log2 e)
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);
  const __m512 n = _mm512_sub_ps(t, magic);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147180559945f), x);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.00828929059f), r, _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.999999701f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// tanh(w / 2) from e = exp(-|w|) (w = 2 y: the factor 2 is folded into the caller's multiplier):
// tanh|y| = (1 - e) / (1 + e), the reciprocal by rcp14 and one Newton step, the sign of w restored by one
// ternary-logic op; with derivative, 1 - tanh^2(y) = 4 e / (1 + e)^2 too (exactly 0 where e is 0, so a
// -inf logit has ds/dz = 0). kInRange: every |w| <= 80 (the caller checked the row), the exp needs no
// clamp; else the clamped exp (0 below -88). NaN in, NaN out (the clamp keeps it).
template <bool kInRange = false>
inline __m512 tanh_half(__m512 w, __m512* derivative = nullptr) {
  const __m512 sign = _mm512_set1_ps(-0.0f), one = _mm512_set1_ps(1.0f);
  const __m512 minus_abs = _mm512_or_ps(w, sign);
  const __m512 e = kInRange ? exp_in_range(minus_abs) : exp_of_clamped(exp_clamp(minus_abs));
  const __m512 d = _mm512_add_ps(one, e);
  __m512 r = _mm512_rcp14_ps(d);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
  if (derivative != nullptr) *derivative = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(4.0f), e), _mm512_mul_ps(r, r));
  const __m512i magnitude = _mm512_castps_si512(_mm512_mul_ps(_mm512_sub_ps(one, e), r));
  // magnitude | (w & sign)
  return _mm512_castsi512_ps(
      _mm512_ternarylogic_epi32(magnitude, _mm512_castps_si512(w), _mm512_castps_si512(sign), 0xF8));
}

// tanh(y) to about 1e-7 relative for every y from tanh_exp = tanh_half(2 y) (the exp form loses relative
// accuracy near 0, which a mean of s that cancels would show): Cephes' odd polynomial for |y| < 0.625.
inline __m512 tanh_near_zero(__m512 y, __m512 tanh_exp) {
  const __m512 z = _mm512_mul_ps(y, y);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(-5.70498872745e-3f), z, _mm512_set1_ps(2.06390887954e-2f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531e-2f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036e-1f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422e-1f));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(y, z), p, y);
  const __mmask16 is_small = _mm512_cmp_ps_mask(_mm512_abs_ps(y), _mm512_set1_ps(0.625f), _CMP_LT_OQ);
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
