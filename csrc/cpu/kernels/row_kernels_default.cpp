// Row kernels for any CPU (at::vec's portable implementation, auto-vectorised by the compiler).
#define CPU_CAPABILITY DEFAULT
#define ACTFOCUS_ROW_KERNELS_ENTRY row_kernels_default
#include "cpu/kernels/row_kernels_impl.h"
