#include <climits>
#include <string>
#include <vector>

#include "common.hpp"
#include "neurovfm/parallel.hpp"
#include "neurovfm/resample.hpp"

#ifdef NEUROVFM_SANITIZER_SELFTEST
namespace {
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
}  // namespace
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "neurovfm compiled kernels (private; use the neurovfm package)";
  m.def("hardware_threads", &neurovfm::hardware_threads);
  m.def(
      "empty",
      [](const py::dtype& dtype, const std::vector<py::ssize_t>& shape) {
        return neurovfm::bindings::empty_big(dtype, shape);
      },
      py::arg("dtype"), py::arg("shape"),
      "Uninitialised C-contiguous array for a large volume (huge pages where available).");
  m.def("release_cached_buffers", &neurovfm::release_cached_buffers,
        "Free the large buffers the kernels keep for reuse between volumes.");
  m.def("resample_isa", &neurovfm::resample_isa, "Instruction set of the resampling kernels in use.");
  neurovfm::bindings::register_resample(m);
  neurovfm::bindings::register_intensity(m);
  neurovfm::bindings::register_dicom(m);
  neurovfm::bindings::register_items(m);
#ifdef NEUROVFM_SANITIZER_SELFTEST
  m.def("_sanitizer_selftest", &sanitizer_selftest, py::arg("kind"));
#endif
}
