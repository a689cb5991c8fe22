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
#include <cstring>
#include <limits>

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

// (z - max z) / T; at T = 1 the product is skipped (the same value: the subtraction rounds once either way)
template <bool kScaled>
inline __m512 centred(__m512 z, __m512 row_max, __m512 inv_temperature) {
  const __m512 d = _mm512_sub_ps(z, row_max);
  return kScaled ? _mm512_mul_ps(d, inv_temperature) : d;
}

inline float max_keep_nan(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a < b ? b : a;
}

template <typename T, bool kScaled, bool kClamp>
RowStats row_sums(const T* row, int64_t vocab, float inv_temperature, float row_max, const char* next_row);

// Rows whose centred logits all lie in [-80, 0] (no -inf, no underflow: typical rows) skip the clamp.
constexpr float kNoClampRange = 80.0f;

template <typename T>
RowStats row_stats(const void* row_ptr, int64_t vocab, float inv_temperature, const void* next_row) {
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
  // finite and within range (false for NaN, -inf or an underflowing spread): then no clamp
  const bool in_range = (row_min - row_max) * inv_temperature >= -kNoClampRange;

  const char* next = static_cast<const char*>(next_row);
  const bool unit = inv_temperature == 1.0f;
  const RowStats result =
      in_range ? (unit ? row_sums<T, false, false>(row, vocab, inv_temperature, row_max, next)
                                   : row_sums<T, true, false>(row, vocab, inv_temperature, row_max, next))
                           : (unit ? row_sums<T, false, true>(row, vocab, inv_temperature, row_max, next)
                                   : row_sums<T, true, true>(row, vocab, inv_temperature, row_max, next));
  const float sum = result.sum;
  // a NaN or +inf logit makes the whole row NaN (a NaN reaches sum through pass 2's arithmetic; every
  // exp(x) of a finite row lies in [0, 1], so its sum is finite)
  if (row_max != row_max || row_max == kInf || !std::isfinite(sum)) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    return RowStats{nan, nan, nan, nan};
  }
  return RowStats{row_max, sum, static_cast<float>(std::log(static_cast<double>(sum))), result.mean_shift};
}

// Pass 2: sum exp(x) and sum exp(x) x / sum, x = (z - max z) / T, clamped at -88 (where exp(x) is 0)
// unless the row's range needs no clamp.
template <typename T, bool kScaled, bool kClamp>
RowStats row_sums(const T* row, int64_t vocab, float inv_temperature, float row_max, const char* next_row) {
  const __m512 minus_inf = _mm512_set1_ps(-kInf);
  const __m512 v_inv_temperature = _mm512_set1_ps(inv_temperature), v_row_max = _mm512_set1_ps(row_max);
  const __m512 zero = _mm512_setzero_ps();
  __m512 s0 = zero, s1 = zero, w0 = zero, w1 = zero;
  auto terms = [&](__m512 z, __m512& e, __m512& x) {
    const __m512 d = centred<kScaled>(z, v_row_max, v_inv_temperature);
    x = kClamp ? exp_clamp(d) : d;
    e = kClamp ? exp_of_clamped(x) : exp_in_range(x);
  };
  auto accumulate = [&](__m512 z, __m512& sum, __m512& wsum) {
    __m512 e, x;
    terms(z, e, x);
    sum = _mm512_add_ps(sum, e);
    wsum = _mm512_fmadd_ps(e, x, wsum);
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
    accumulate(Lanes<T>::load(row + i), s0, w0);
    accumulate(Lanes<T>::load(row + i + kLanes), s1, w1);
  }
  for (; i < vocab; i += kLanes) {
    // lanes past the row read max z (x = 0, finite) and are then zeroed
    const __mmask16 mask = tail_mask(std::min<int64_t>(kLanes, vocab - i));
    __m512 e, x;
    terms(Lanes<T>::load(row + i, mask, v_row_max), e, x);
    e = _mm512_maskz_mov_ps(mask, e);
    s0 = _mm512_add_ps(s0, e);
    w0 = _mm512_fmadd_ps(e, x, w0);
  }
  if (next_row != nullptr) {  // the next row's last lines (its tail past the pairs above)
    for (int64_t byte = pairs * static_cast<int64_t>(sizeof(T)); byte < vocab * static_cast<int64_t>(sizeof(T));
         byte += 64) {
      _mm_prefetch(next_row + byte, _MM_HINT_T1);
    }
  }
  const float sum = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  const float wsum = _mm512_reduce_add_ps(_mm512_add_ps(w0, w1));
  return RowStats{row_max, sum, 0.0f, wsum / sum};
}

template <typename T, bool kScaled>
void row_grad_impl(const T* row, T* grad, int64_t vocab, float inv_temperature, const RowStats& stats,
                   float grad_scale, float coef, float entropy_coef) {
  const __m512 v_inv_temperature = _mm512_set1_ps(inv_temperature), v_row_max = _mm512_set1_ps(stats.max);
  const __m512 v_log_sum = _mm512_set1_ps(stats.log_sum), v_mean_shift = _mm512_set1_ps(stats.mean_shift);
  const __m512 v_grad_scale = _mm512_set1_ps(grad_scale), v_coef = _mm512_set1_ps(coef);
  const __m512 v_entropy_coef = _mm512_set1_ps(entropy_coef), v_floor = _mm512_set1_ps(-FLT_MAX);
  // grad_scale (entropy_coef (p (x - mean_shift)) - coef p): p (x - mean_shift) is formed first, so
  // p = 0 makes it 0 whatever entropy_coef is; x is floored at -FLT_MAX (a -inf logit: 0, not NaN)
  auto grad_of = [&](__m512 z) {
    const __m512 x = _mm512_max_ps(v_floor, centred<kScaled>(z, v_row_max, v_inv_temperature));
    const __m512 p = exp_of_clamped(exp_clamp(_mm512_sub_ps(x, v_log_sum)));
    const __m512 q = _mm512_mul_ps(p, _mm512_sub_ps(x, v_mean_shift));
    return _mm512_mul_ps(v_grad_scale, _mm512_fmsub_ps(v_entropy_coef, q, _mm512_mul_ps(v_coef, p)));
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
void row_grad(const void* row_ptr, void* grad_ptr, int64_t vocab, float inv_temperature,
              const RowStats& stats, float grad_scale, float coef, float entropy_coef) {
  const T* row = static_cast<const T*>(row_ptr);
  T* grad = static_cast<T*>(grad_ptr);
  if (inv_temperature == 1.0f) {
    row_grad_impl<T, false>(row, grad, vocab, inv_temperature, stats, grad_scale, coef, entropy_coef);
  } else {
    row_grad_impl<T, true>(row, grad, vocab, inv_temperature, stats, grad_scale, coef, entropy_coef);
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
  std::memset(row, 0, static_cast<size_t>(vocab) * sizeof(T));  // +0.0 is all zero bits in every dtype
}

template <typename T>
constexpr RowKernels kernels_for() {
  return RowKernels{&row_stats<T>, &row_grad<T>, &row_load<T>, &row_store<T>, &row_zero<T>};
}

}  // namespace

const RowKernels* row_kernels_avx512(RowDtype dtype) {
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
#else
namespace actfocus::cpu {
const RowKernels* row_kernels_avx512(RowDtype) { return nullptr; }
}  // namespace actfocus::cpu
#endif
