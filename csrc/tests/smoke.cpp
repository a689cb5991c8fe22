// CTest smoke test of the actfocus_native op library on CPU: calls both ops through the dispatcher
// and checks them against ATen and two invariants of the gradient; bad input must throw c10::Error.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <tuple>

#include "ops.h"

namespace {

// the signatures of the op wrappers in ops.h
using TokenStatsFn = decltype(actfocus::token_stats_op<nullptr>);
using PolicyLossFn = decltype(actfocus::policy_loss_op<nullptr>);

int failures = 0;

void expect(bool ok, const char* what, double value) {
  std::printf("%s %-58s %.3e\n", ok ? "ok  " : "FAIL", what, value);
  failures += ok ? 0 : 1;
}

}  // namespace

int main() {
  std::printf("actfocus_native smoke test, cpu kernels: %s\n", actfocus::cpu_kernels_capability().c_str());
  auto& dispatcher = c10::Dispatcher::singleton();
  auto token_stats =
      dispatcher.findSchemaOrThrow("actfocus_native::token_stats", "").typed<TokenStatsFn>();
  auto policy_loss =
      dispatcher.findSchemaOrThrow("actfocus_native::policy_loss", "").typed<PolicyLossFn>();

  at::manual_seed(0);
  const int64_t n = 6;
  const int64_t vocab = 1003;
  const double temperature = 0.8;
  const at::Tensor logits = at::randn({n, vocab}) * 3;
  const at::Tensor targets = at::randint(0, vocab, {n}, at::kLong);

  // token_stats against ATen
  const auto [logp, energy, entropy, log_sum_sq_probs, mean_logits, is_top1] =
      token_stats.call(logits, targets, temperature, -100, 1.0, 0.0, false);
  const at::Tensor log_probs = at::log_softmax(logits.to(at::kDouble) / temperature, -1);
  const at::Tensor expected_logp = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1);
  const at::Tensor expected_energy = -temperature * at::logsumexp(logits.to(at::kDouble) / temperature, -1);
  const at::Tensor expected_entropy = -(log_probs.exp() * log_probs).sum(-1);
  const double logp_error = (logp - expected_logp).abs().max().item<double>();
  const double energy_error = (energy - expected_energy).abs().max().item<double>();
  const double entropy_error = (entropy - expected_entropy).abs().max().item<double>();
  expect(logp_error < 1e-4, "token_stats logp vs ATen (max abs error)", logp_error);
  expect(energy_error < 1e-4, "token_stats energy vs ATen", energy_error);
  expect(entropy_error < 1e-4, "token_stats entropy vs ATen", entropy_error);

  // policy_loss with an entropy bonus: each gradient row sums to 0; without it the gradient is
  // scale / T * c * (onehot - p)
  const at::Tensor advantages = at::randn({n});
  const at::Tensor weights = at::ones({n});
  const at::Tensor scale = at::full({n}, 1.0 / n);
  at::Tensor dlogits = at::empty_like(logits);
  auto outputs = policy_loss.call(logits, targets, std::nullopt, advantages, std::nullopt, weights, scale,
                                  temperature, 1.0, 0.0, 0.2, 0.2, 0.0, 0.0, 3, 0.05, -100, dlogits);
  const double row_sum = dlogits.sum(-1).abs().max().item<double>();
  expect(row_sum < 1e-6, "policy_loss gradient rows sum to 0", row_sum);
  expect(std::get<4>(outputs).eq(1).all().item<bool>(), "policy_loss on-policy ratio is 1", 0.0);

  outputs = policy_loss.call(logits, targets, std::nullopt, advantages, std::nullopt, weights, scale,
                             temperature, 1.0, 0.0, 0.2, 0.2, 0.0, 0.0, 3, 0.0, -100, dlogits);
  const at::Tensor onehot = at::zeros_like(logits).scatter_(1, targets.unsqueeze(1), 1.0);
  const at::Tensor coef = -advantages;  // on-policy, unclipped: dL/dlogp = -A
  const at::Tensor expected_grad =
      (scale / temperature * coef).unsqueeze(1) * (onehot - at::softmax(logits / temperature, -1));
  const double grad_error = (dlogits - expected_grad).abs().max().item<double>();
  expect(grad_error < 1e-6, "policy_loss gradient vs closed form", grad_error);
  const double loss_error =
      (std::get<0>(outputs) - scale * advantages.neg()).abs().max().item<double>();
  expect(loss_error < 1e-6, "policy_loss token loss = -scale A", loss_error);

  // bad input throws
  bool threw = false;
  try {
    token_stats.call(logits.to(at::kDouble), targets, 1.0, -100, 1.0, 0.0, false);
  } catch (const c10::Error&) {
    threw = true;
  }
  expect(threw, "float64 logits raise c10::Error", 0.0);

  std::printf("%s\n", failures == 0 ? "smoke test passed" : "smoke test FAILED");
  return failures == 0 ? 0 : 1;
}
