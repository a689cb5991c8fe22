// Per-token policy-loss math shared by the CPU and CUDA kernels (SPEC section 4). Torch-free.
// A few scalars per row, computed in float64 like the reference: a loss that nearly cancels across
// tokens keeps the accuracy of logp (the vocabulary sums stay fp32 in the kernels).
//
// Given a row's logp and entropy and the token's detached inputs, computes the token loss
//   l = w L_pg + kl_coef KL - entropy_coef H,   token_loss = scale * l   (0 where scale == 0)
// and the coefficient c = w dL_pg/dlogp + kl_coef dKL/dlogp of the gradient
//   dz_v = scale / T * ( c (onehot(y)_v - p_v) + entropy_coef p_v (s_v - sum_u p_u s_u) ).
#pragma once

#include <cfloat>
#include <cmath>

#if defined(__CUDACC__)
#define ACTFOCUS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ACTFOCUS_HOST_DEVICE inline
#endif

namespace actfocus {

// The ratio exponent logp - old_logp is clamped to [-kRatioLogClamp, kRatioLogClamp].
constexpr double kRatioLogClamp = 20.0;

// numerator / T, at most FLT_MAX: with a tiny T (below 1 / FLT_MAX) the scaled logits keep their one-hot
// limit (0 * (1 / T) = 0) instead of turning 0 * inf into NaN (SPEC section 2: every finite T > 0).
ACTFOCUS_HOST_DEVICE float clamped_over_temperature(double numerator, double temperature) {
  return static_cast<float>(fmin(numerator / temperature, static_cast<double>(FLT_MAX)));
}

// clamp(x, lo, hi) that keeps NaN (fmin/fmax drop it): a NaN input propagates (SPEC section 2).
ACTFOCUS_HOST_DEVICE double clamp_keep_nan(double x, double lo, double hi) {
  return x != x ? x : fmin(fmax(x, lo), hi);
}

enum class KlType : int { kK1 = 1, kK2 = 2, kK3 = 3 };

struct LossOptions {
  float clip_low;
  float clip_high;
  float dual_clip;  // <= 1: off
  float kl_coef;    // KL term only when > 0 and ref_logp is given
  int kl_type;      // KlType
  float entropy_coef;
  bool has_old_logp;  // false: on-policy, ratio 1 with d ratio / d logp = 1
  bool has_ref_logp;
};

// Detached per-token inputs. A row is active when scale != 0 and its target is not ignore_index;
// on inactive rows the float fields may hold anything (NaN included) and are read as 0.
struct TokenInputs {
  bool has_target;  // target != ignore_index
  float scale;
  float old_logp;
  float advantage;
  float ref_logp;
  float weight;
};

struct TokenLoss {
  float loss;    // scale * l, 0 where inactive
  float ratio;   // exp(clamp(logp - old_logp, -20, 20)), 1 where inactive
  float coef;    // c, 0 where inactive
  bool clipped;  // clip or dual-clip branch active, false where inactive
};

ACTFOCUS_HOST_DEVICE TokenLoss token_loss(double logp, double entropy, const TokenInputs& in,
                                          const LossOptions& opt) {
  const bool active = in.has_target && in.scale != 0.0f;
  const double advantage = active ? in.advantage : 0.0;
  const double weight = active ? in.weight : 0.0;
  const double old_logp = active ? in.old_logp : 0.0;
  const double ref_logp = active ? in.ref_logp : 0.0;
  const double scale = active ? in.scale : 0.0;

  const double delta = opt.has_old_logp ? logp - old_logp : 0.0;
  const double ratio = exp(clamp_keep_nan(delta, -kRatioLogClamp, kRatioLogClamp));
  const double unclipped_loss = -advantage * ratio;
  const double clipped_loss = -advantage * fmin(fmax(ratio, 1.0 - static_cast<double>(opt.clip_low)),
                                                1.0 + static_cast<double>(opt.clip_high));
  bool clipped = clipped_loss > unclipped_loss;
  double pg_loss = clipped ? clipped_loss : unclipped_loss;
  if (opt.dual_clip > 1.0f) {
    const double dual_loss = -advantage * static_cast<double>(opt.dual_clip);
    const bool dual_clipped = advantage < 0.0 && pg_loss > dual_loss;
    pg_loss = dual_clipped ? dual_loss : pg_loss;
    clipped = clipped || dual_clipped;
  }
  // Zero where a clip branch is selected or the ratio exponent is clamped.
  const double pg_grad = (clipped || fabs(delta) > kRatioLogClamp) ? 0.0 : -advantage * ratio;

  const double entropy_coef = opt.entropy_coef;
  double loss = weight * pg_loss - entropy_coef * entropy;
  double coef = weight * pg_grad;
  if (opt.kl_coef > 0.0f && opt.has_ref_logp) {
    const double kl_coef = opt.kl_coef;
    const double diff = logp - ref_logp;
    double kl;
    double kl_grad;
    if (opt.kl_type == static_cast<int>(KlType::kK1)) {
      kl = diff;
      kl_grad = 1.0;
    } else if (opt.kl_type == static_cast<int>(KlType::kK2)) {
      kl = 0.5 * diff * diff;
      kl_grad = diff;
    } else {
      const double inv_ratio = exp(-diff);
      kl = inv_ratio + diff - 1.0;
      kl_grad = 1.0 - inv_ratio;
    }
    loss = loss + kl_coef * kl;
    coef = coef + kl_coef * kl_grad;
  }

  TokenLoss out;
  out.loss = active ? static_cast<float>(scale * loss) : 0.0f;
  out.ratio = active ? static_cast<float>(ratio) : 1.0f;
  out.coef = active ? static_cast<float>(coef) : 0.0f;
  out.clipped = active && clipped;
  return out;
}

}  // namespace actfocus
