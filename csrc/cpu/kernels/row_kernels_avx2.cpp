// Row kernels for x86-64 CPUs with AVX2 + FMA + F16C, chosen at run time by row_kernels().
//
// The target is set for this file only with a pragma (setup.py has no per-file flags). GCC does not
// define the feature macros for a pragma target, and at::vec / sleef.h test them, so they are set
// here too. Other compilers and architectures get no AVX2 table.
#include "cpu/kernels/row_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx,avx2,fma,f16c")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define ACTFOCUS_ROW_KERNELS_ENTRY row_kernels_avx2
#include "cpu/kernels/row_kernels_impl.h"
#else
namespace actfocus::cpu {
const RowKernels* row_kernels_avx2(RowDtype) { return nullptr; }
}  // namespace actfocus::cpu
#endif
