// actfocus_native::row_gradient on CPU: per row, the statistics pass, then the gradient of the
// row's given coefficients while the row is still in cache (see the schema in torch_bindings.cpp).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/token_row.h"
#include "glue/checks.h"
#include "ops.h"

namespace actfocus {
namespace {

void row_gradient_cpu(const RowGradientArgs& args) {
  const at::Tensor& logits = args.logits;
  const int64_t n = logits.size(0);
  const int64_t vocab = logits.size(1);
  checks::check_targets_in_range(args.targets, vocab, args.ignore_index);

  const cpu::RowKernels& kernels = cpu::row_kernels(checks::row_dtype(logits));
  const cpu::RowForm form(args.transform());
  const char* rows = static_cast<const char*>(logits.const_data_ptr());
  const int64_t row_bytes = logits.stride(0) * logits.element_size();
  char* grad_rows = static_cast<char*>(args.dlogits.data_ptr());
  const int64_t grad_row_bytes = args.dlogits.stride(0) * args.dlogits.element_size();
  if (grad_rows != rows) cpu::advise_huge_pages(grad_rows, n * grad_row_bytes);
  const int64_t* target_values = args.targets.const_data_ptr<int64_t>();
  const float* target_coefs = args.target_coef.const_data_ptr<float>();
  const float* prob_coefs = args.prob_coef.const_data_ptr<float>();
  const float* centred_coefs = args.centred_coef.const_data_ptr<float>();
  const float grad_scale = form.floats.slope;  // ds/dz without softcap: logit_scale / T

  cpu::for_each_row(n, vocab, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const void* row_ptr = rows + row * row_bytes;
      void* grad_row = grad_rows + row * grad_row_bytes;
      const float target_coef = target_coefs[row];
      const float prob_coef = prob_coefs[row];
      const float centred_coef = centred_coefs[row];
      if (target_coef == 0.0f && prob_coef == 0.0f && centred_coef == 0.0f) {  // exactly zero
        kernels.zero(grad_row, vocab);
        continue;
      }
      const void* next_row = row + 1 < end ? rows + (row + 1) * row_bytes : nullptr;
      const cpu::TokenRow stats =
          cpu::token_row(kernels, row_ptr, vocab, target_values[row], args.ignore_index, form, next_row);
      cpu::row_gradient(kernels, row_ptr, grad_row, vocab, form, stats, target_values[row], grad_scale,
                        target_coef, prob_coef, centred_coef);
    }
  });
}

}  // namespace
}  // namespace actfocus

TORCH_LIBRARY_IMPL(actfocus_native, CPU, m) {
  m.impl("row_gradient", &actfocus::row_gradient_op<&actfocus::row_gradient_cpu>);
}
