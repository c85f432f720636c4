// Large buffers: uninitialised arrays from the kernels' allocator, and the
// release of the buffers the kernels keep between volumes.
#include <vector>

#include "common.hpp"
#include "neurovfm/parallel.hpp"

namespace neurovfm::bindings {

void register_memory(py::module_& m) {
  m.def(
      "empty",
      [](const py::dtype& dtype, const std::vector<py::ssize_t>& shape) {
        return empty_big(dtype, shape);
      },
      py::arg("dtype"), py::arg("shape"),
      "Uninitialised C-contiguous array for a large volume (huge pages where available).");
  m.def("release_cached_buffers", &release_cached_buffers,
        "Free the large buffers the kernels keep for reuse between volumes.");
}

}  // namespace neurovfm::bindings
