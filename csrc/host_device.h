#pragma once
// What the host+device headers of the mask law (mask_logic.h) share: c10's C10_HOST_DEVICE and
// the unrolling hint for nvcc.
#include <c10/macros/Macros.h>

// Unrolling hints for nvcc; host compilers unroll these short loops on their own.
#if defined(__CUDACC__)
#define DROPBLOCK_UNROLL _Pragma("unroll")
#else
#define DROPBLOCK_UNROLL
#endif
