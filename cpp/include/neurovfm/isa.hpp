// Run-time choice of an AVX2 variant for small hot loops (x86-64 GCC/Clang).
// Variants perform the same IEEE operations (no FMA), so results are identical;
// NEUROVFM_DISABLE_AVX2=1 forces the baseline (tests compare both).
#pragma once

#include <cstdlib>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(NEUROVFM_NO_AVX2)
#define NEUROVFM_X86_AVX2 1
#define NEUROVFM_TARGET_AVX2 __attribute__((target("avx2")))
#else
#define NEUROVFM_TARGET_AVX2
#endif

namespace neurovfm {

inline bool use_avx2() {
#if defined(NEUROVFM_X86_AVX2)
  static const bool v = [] {
    const char* off = std::getenv("NEUROVFM_DISABLE_AVX2");
    return !(off && *off && *off != '0') && __builtin_cpu_supports("avx2");
  }();
  return v;
#else
  return false;
#endif
}

}  // namespace neurovfm
