// The logit transform of SPEC section 10, shared by the CPU and CUDA kernels. Torch-free.
//
// With logit_scale > 0 (1: off) and softcap >= 0 (0: off), a raw logit z becomes
//   s(z) = softcap tanh(logit_scale z / softcap) / T   (softcap > 0),   s(z) = logit_scale z / T (else),
// an increasing map, so the row's maximum m of the raw logits gives s_max = s(m). The kernels work on
// the centred logits x = s(z) - s(m):
//   without softcap x = (z - m) (logit_scale / T): logit_scale folded into the inverse temperature,
//     so logit_scale = 1 reproduces the untransformed kernels bit for bit;
//   with softcap x = (softcap / T) (tanh(y_z) - tanh(y_m)), y = (logit_scale / softcap) z.
// A -inf logit stays excluded (x = -inf, p = 0). The gradient of every pass goes through the
// transform: ds/dz = (logit_scale / T) (1 - tanh^2(y_z)) with softcap, logit_scale / T without
// (0 for a -inf logit).
#pragma once

#include <cmath>

#include "core/token_loss.h"

namespace actfocus {

// tanh(y) for |y| < kLimit to about 1e-7 relative: y + y^3 P(y^2), Cephes' tanhf polynomial (c4 highest).
// The kernels' exp forms of tanh carry an absolute error of about 6e-8, which the centred logit
// x = (softcap / T) (tanh(y) - tanh(y_max)) multiplies by softcap / T; near 0 this series keeps tanh's
// relative accuracy, so that x there is as accurate as the raw logits (what a large softcap needs).
struct TanhSeries {
  static constexpr float kLimit = 0.625f;
  static constexpr float kC4 = -5.70498872745e-3f, kC3 = 2.06390887954e-2f, kC2 = -5.37397155531e-2f,
                         kC1 = 1.33314422036e-1f, kC0 = -3.33332819422e-1f;

  ACTFOCUS_HOST_DEVICE static float at(float y) {
    const float z = y * y;
    const float p = (((kC4 * z + kC3) * z + kC2) * z + kC1) * z + kC0;
    return (y * z) * p + y;
  }
};

struct RowTransform {
  double temperature;  // T > 0
  double logit_scale;  // > 0; 1: off
  double softcap;      // >= 0; 0: off

  ACTFOCUS_HOST_DEVICE bool capped() const { return softcap > 0.0; }

  // logit_scale / T, at most FLT_MAX: the slope of x without softcap, the scale of ds/dz with it.
  ACTFOCUS_HOST_DEVICE float slope() const { return clamped_over_temperature(logit_scale, temperature); }
  // logit_scale / softcap (y = cap_in z); 0 without softcap.
  ACTFOCUS_HOST_DEVICE float cap_in() const {
    return capped() ? static_cast<float>(logit_scale / softcap) : 0.0f;
  }
  // softcap / T (s = cap_out tanh(y)); 0 without softcap.
  ACTFOCUS_HOST_DEVICE float cap_out() const {
    return capped() ? clamped_over_temperature(softcap, temperature) : 0.0f;
  }

  // T s(z) in float64: logit_scale z, or softcap tanh(logit_scale z / softcap).
  ACTFOCUS_HOST_DEVICE double tempered(double z) const {
    return capped() ? softcap * tanh(logit_scale * z / softcap) : logit_scale * z;
  }

  // x = s(z) - s(m) in float64; -inf for z = -inf.
  ACTFOCUS_HOST_DEVICE double centred(double z, double row_max) const {
    if (!capped()) return (z - row_max) * logit_scale / temperature;
    if (z == -INFINITY) return -INFINITY;
    return (tempered(z) - tempered(row_max)) / temperature;
  }

  // ds/dz relative to slope(): 1 - tanh^2(y_z) with softcap (0 for z = -inf), else 1.
  ACTFOCUS_HOST_DEVICE double slope_factor(double z) const {
    if (!capped()) return 1.0;
    const double t = tanh(logit_scale * z / softcap);
    return 1.0 - t * t;
  }
};

}  // namespace actfocus
