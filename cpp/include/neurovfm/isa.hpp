// The one instruction-set switch of the kernels (x86-64, GCC/Clang).
//
// Compile time: the AVX2 paths exist when CMake defines NEUROVFM_HAVE_AVX2 (an
// x86-64 target, not MSVC, not -DNEUROVFM_NO_AVX2=ON; it also compiles
// resample_avx2.cpp). Run time: isa() picks them once per process when the CPU
// has AVX2 and NEUROVFM_DISABLE_AVX2 is unset, empty or "0". Every kernel with
// an AVX2 variant (resampling, the item gather, dequantisation) asks isa(), so
// one variable switches all of them. Variants perform the same IEEE operations
// in the same order (no FMA, no fast-math): identical bytes, which
// tests/test_intensity_fast_paths.py checks by running both.
#pragma once

#if defined(NEUROVFM_HAVE_AVX2) && (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define NEUROVFM_X86_AVX2 1
#define NEUROVFM_TARGET_AVX2 __attribute__((target("avx2")))
#else
#define NEUROVFM_TARGET_AVX2
#endif

namespace neurovfm {

enum class Isa : int { baseline = 0, avx2 = 1 };

// The variant every kernel uses (decided on the first call, then fixed).
Isa isa();

// isa() == Isa::avx2.
inline bool use_avx2() { return isa() == Isa::avx2; }

// Its name: "avx2" or "baseline" (_core.isa() and _core.resample_isa()).
const char* isa_name();

}  // namespace neurovfm
