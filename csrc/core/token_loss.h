// Per-token policy-loss math shared by the CPU and CUDA kernels (SPEC section 4). Torch-free.
//
// Given a row's logp and entropy and the token's detached inputs, computes the token loss
//   l = w L_pg + kl_coef KL - entropy_coef H,   token_loss = scale * l   (0 where scale == 0)
// and the coefficient c = w dL_pg/dlogp + kl_coef dKL/dlogp of the gradient
//   dz_v = scale / T * ( c (onehot(y)_v - p_v) + entropy_coef p_v (s_v - sum_u p_u s_u) ).
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define ACTFOCUS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ACTFOCUS_HOST_DEVICE inline
#endif

namespace actfocus {

// The ratio exponent logp - old_logp is clamped to [-kRatioLogClamp, kRatioLogClamp].
constexpr float kRatioLogClamp = 20.0f;

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

ACTFOCUS_HOST_DEVICE TokenLoss token_loss(float logp, float entropy, const TokenInputs& in,
                                          const LossOptions& opt) {
  const bool active = in.has_target && in.scale != 0.0f;
  const float advantage = active ? in.advantage : 0.0f;
  const float weight = active ? in.weight : 0.0f;
  const float old_logp = active ? in.old_logp : 0.0f;
  const float ref_logp = active ? in.ref_logp : 0.0f;

  const float delta = opt.has_old_logp ? logp - old_logp : 0.0f;
  const float ratio = expf(fminf(fmaxf(delta, -kRatioLogClamp), kRatioLogClamp));
  const float unclipped_loss = -advantage * ratio;
  const float clipped_loss =
      -advantage * fminf(fmaxf(ratio, 1.0f - opt.clip_low), 1.0f + opt.clip_high);
  bool clipped = clipped_loss > unclipped_loss;
  float pg_loss = clipped ? clipped_loss : unclipped_loss;
  if (opt.dual_clip > 1.0f) {
    const float dual_loss = -advantage * opt.dual_clip;
    const bool dual_clipped = advantage < 0.0f && pg_loss > dual_loss;
    pg_loss = dual_clipped ? dual_loss : pg_loss;
    clipped = clipped || dual_clipped;
  }
  // Zero where a clip branch is selected or the ratio exponent is clamped.
  const float pg_grad = (clipped || fabsf(delta) > kRatioLogClamp) ? 0.0f : -advantage * ratio;

  float loss = weight * pg_loss - opt.entropy_coef * entropy;
  float coef = weight * pg_grad;
  if (opt.kl_coef > 0.0f && opt.has_ref_logp) {
    const float diff = logp - ref_logp;
    float kl;
    float kl_grad;
    if (opt.kl_type == static_cast<int>(KlType::kK1)) {
      kl = diff;
      kl_grad = 1.0f;
    } else if (opt.kl_type == static_cast<int>(KlType::kK2)) {
      kl = 0.5f * diff * diff;
      kl_grad = diff;
    } else {
      const float inv_ratio = expf(-diff);
      kl = inv_ratio + diff - 1.0f;
      kl_grad = 1.0f - inv_ratio;
    }
    loss = loss + opt.kl_coef * kl;
    coef = coef + opt.kl_coef * kl_grad;
  }

  TokenLoss out;
  out.loss = active ? in.scale * loss : 0.0f;
  out.ratio = active ? ratio : 1.0f;
  out.coef = active ? coef : 0.0f;
  out.clipped = active && clipped;
  return out;
}

}  // namespace actfocus
