// The RowKernels table of one CPU capability, shared by the translation units that compile one
// (row_kernels_impl.h for default and AVX2, row_kernels_avx512.cpp): the element access every table
// has in common and the three dtype tables. Included after the unit's target pragma; everything here
// has internal linkage, so the per-capability copies never meet at link time.
//
// A unit names its own passes in a record with two variable templates,
//   struct Passes { template <typename T> static constexpr auto stats = &row_stats<T>; ... grad ... };
// and returns row_table<Passes>(dtype) from its table function.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>

#include "cpu/kernels/row_kernels.h"

namespace actfocus::cpu {
namespace {

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

template <typename Passes, typename T>
constexpr RowKernels kernels_for() {
  return RowKernels{Passes::template stats<T>, Passes::template grad<T>, &row_load<T>, &row_store<T>, &row_zero<T>};
}

template <typename Passes>
const RowKernels* row_table(RowDtype dtype) {
  static constexpr RowKernels kFloat32 = kernels_for<Passes, float>();
  static constexpr RowKernels kFloat16 = kernels_for<Passes, c10::Half>();
  static constexpr RowKernels kBFloat16 = kernels_for<Passes, c10::BFloat16>();
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

}  // namespace
}  // namespace actfocus::cpu
