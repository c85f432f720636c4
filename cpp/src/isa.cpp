// The one instruction-set switch: see neurovfm/isa.hpp.
#include "neurovfm/isa.hpp"

#include <cstdlib>

namespace neurovfm {

Isa isa() {
  static const Isa chosen = [] {
#if defined(NEUROVFM_X86_AVX2)
    const char* off = std::getenv("NEUROVFM_DISABLE_AVX2");
    if (!(off && *off && *off != '0') && __builtin_cpu_supports("avx2")) return Isa::avx2;
#endif
    return Isa::baseline;
  }();
  return chosen;
}

const char* isa_name() { return isa() == Isa::avx2 ? "avx2" : "baseline"; }

}  // namespace neurovfm
