#pragma once
// The AVX-512 kernels of the CPU apply (apply_cpu_avx512.cpp), for contiguous runs of elements.
//
// Why a kernel of its own: an AVX-512 mask register is the keep mask itself. A vector of 8 or 16
// lanes takes as many keep bits as they are (a zero-masked load and a zero-masked multiply), so a
// word of 64 keep bits is a few loads, multiplies and stores with no branch on the bits, no lane
// table and no per-plane set-up; dropped lanes are +0 without reading their input, whatever it holds. The
// generic kernels in apply_cpu.cpp remain for CPUs without AVX-512 and for the strided and
// channels-last layouts.
#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace dropblock {
namespace avx512 {

// Whether the kernels below may run: the CPU (and the OS) support AVX-512 F, BW and VL, and the
// environment variable DROPBLOCK_CPU_APPLY is not "generic" (which the tests set to run the
// generic kernels on such a CPU too). Read once.
bool usable();

// out[j] = keep(bit0 + j) ? in[j] * scale : +0 for j < n, where keep(b) is bit b of the packed mask
// (bit b % 64 of word b / 64). `in` and `out` are contiguous runs of n elements; out may be in.
// 16-bit elements are multiplied in float and rounded to nearest even, as c10's conversions do
// (a NaN becomes c10's NaN: 0x7FC0 for bfloat16, sign | 0x7E00 for half).
void apply_run(const float* in, float* out, int64_t n, const uint64_t* mask, int64_t bit0, float scale);
void apply_run(const double* in, double* out, int64_t n, const uint64_t* mask, int64_t bit0, double scale);
void apply_run(const c10::BFloat16* in, c10::BFloat16* out, int64_t n, const uint64_t* mask, int64_t bit0, float scale);
void apply_run(const c10::Half* in, c10::Half* out, int64_t n, const uint64_t* mask, int64_t bit0, float scale);

// The same for `planes` consecutive runs of `plane` elements each that all take the keep bits
// from bit0 on: the planes of one sample whose channels share the mask.
void apply_planes(const float* in, float* out, int64_t planes, int64_t plane, const uint64_t* mask, int64_t bit0,
                  float scale);
void apply_planes(const double* in, double* out, int64_t planes, int64_t plane, const uint64_t* mask, int64_t bit0,
                  double scale);
void apply_planes(const c10::BFloat16* in, c10::BFloat16* out, int64_t planes, int64_t plane, const uint64_t* mask,
                  int64_t bit0, float scale);
void apply_planes(const c10::Half* in, c10::Half* out, int64_t planes, int64_t plane, const uint64_t* mask,
                  int64_t bit0, float scale);

// out[j] = in[j] * scale for j < n: a run of elements all kept (channels-last positions whose
// channels share one keep bit).
void scale_run(const float* in, float* out, int64_t n, float scale);
void scale_run(const double* in, double* out, int64_t n, double scale);
void scale_run(const c10::BFloat16* in, c10::BFloat16* out, int64_t n, float scale);
void scale_run(const c10::Half* in, c10::Half* out, int64_t n, float scale);

}  // namespace avx512
}  // namespace dropblock
