// actfocus_native::row_gradient on CPU: per row, the statistics pass, then the gradient of the
// row's given coefficients while the row is still in cache (see the schema in torch_bindings.cpp).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "core/token_loss.h"
#include "cpu/token_row.h"
#include "glue/checks.h"
#include "glue/row_args.h"
#include "ops.h"

namespace actfocus {

void row_gradient_cpu(const at::Tensor& logits, const at::Tensor& targets_in,
                      const at::Tensor& target_coef_in, const at::Tensor& prob_coef_in,
                      const at::Tensor& entropy_coef_in, double temperature, int64_t ignore_index,
                      const at::Tensor& dlogits) {
  const RowGradientArgs args = row_gradient_args(logits, targets_in, target_coef_in, prob_coef_in,
                                                 entropy_coef_in, temperature, dlogits);
  const int64_t n = logits.size(0);
  const int64_t vocab = logits.size(1);
  checks::check_targets_in_range(args.targets, vocab, ignore_index);
  if (n == 0) return;

  const cpu::RowKernels& kernels = cpu::row_kernels(checks::row_dtype(logits));
  const char* rows = static_cast<const char*>(logits.const_data_ptr());
  const int64_t row_bytes = logits.stride(0) * logits.element_size();
  char* grad_rows = static_cast<char*>(dlogits.data_ptr());
  const int64_t grad_row_bytes = dlogits.stride(0) * dlogits.element_size();
  if (grad_rows != rows) cpu::advise_huge_pages(grad_rows, n * grad_row_bytes);
  const int64_t* target_values = args.targets.const_data_ptr<int64_t>();
  const float* target_coefs = args.target_coef.const_data_ptr<float>();
  const float* prob_coefs = args.prob_coef.const_data_ptr<float>();
  const float* entropy_coefs = args.entropy_coef.const_data_ptr<float>();
  const float inv_temperature = clamped_over_temperature(1.0, temperature);

  cpu::for_each_row(n, vocab, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const void* row_ptr = rows + row * row_bytes;
      void* grad_row = grad_rows + row * grad_row_bytes;
      const float target_coef = target_coefs[row];
      const float prob_coef = prob_coefs[row];
      const float entropy_coef = entropy_coefs[row];
      if (target_coef == 0.0f && prob_coef == 0.0f && entropy_coef == 0.0f) {  // exactly zero
        kernels.zero(grad_row, vocab);
        continue;
      }
      const void* next_row = row + 1 < end ? rows + (row + 1) * row_bytes : nullptr;
      const cpu::TokenRow stats = cpu::token_row(kernels, row_ptr, vocab, target_values[row],
                                                 ignore_index, temperature, inv_temperature, next_row);
      cpu::row_gradient(kernels, row_ptr, grad_row, vocab, inv_temperature, stats, target_values[row],
                        inv_temperature, target_coef, prob_coef, entropy_coef);
    }
  });
}

}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CPU, m) {
  m.impl("row_gradient", &actfocus::row_gradient_cpu);
}
