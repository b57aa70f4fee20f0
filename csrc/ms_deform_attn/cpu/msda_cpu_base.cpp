// The kernel for the baseline instruction set of the compiler's target (SSE2 on x86-64).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#define MSDA_ISA base
#include "msda_cpu_kernel.h"
