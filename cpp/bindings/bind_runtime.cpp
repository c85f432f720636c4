// What the kernels run on: the hardware thread count, the instruction-set
// variant (neurovfm/isa.hpp), and in sanitizer builds a planted bug.
#include <climits>
#include <string>
#include <vector>

#include "common.hpp"
#include "neurovfm/isa.hpp"
#include "neurovfm/parallel.hpp"

namespace neurovfm::bindings {
namespace {

#ifdef NEUROVFM_SANITIZER_SELFTEST
// A planted bug, only in sanitizer builds: scripts/asan_test.sh checks that it
// kills the process, which proves the sanitizers are on and fatal.
int sanitizer_selftest(const std::string& kind) {
  if (kind == "heap-buffer-overflow") {
    std::vector<int> v(4, 1);
    volatile int* p = v.data();
    return p[v.size() + kind.size() % 2];  // one past the end (or two)
  }
  if (kind == "signed-integer-overflow") {
    volatile int big = INT_MAX;
    return big + static_cast<int>(kind.size());
  }
  throw py::value_error("kind must be 'heap-buffer-overflow' or 'signed-integer-overflow'");
}
#endif

}  // namespace

void register_runtime(py::module_& m) {
  m.def("hardware_threads", &hardware_threads);
  m.def("isa", &isa_name,
        "Instruction-set variant of every kernel: 'avx2' or 'baseline' (the same bytes;\n"
        "NEUROVFM_DISABLE_AVX2=1 forces 'baseline').");
  m.def("resample_isa", &isa_name, "Instruction set of the resampling kernels in use (= isa()).");
#ifdef NEUROVFM_SANITIZER_SELFTEST
  m.def("_sanitizer_selftest", &sanitizer_selftest, py::arg("kind"));
#endif
}

}  // namespace neurovfm::bindings
