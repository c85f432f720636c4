#include "common.hpp"
#include "neurovfm/parallel.hpp"
#include "neurovfm/resample.hpp"

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
  m.def("resample_isa", &neurovfm::resample_isa, "Instruction set of the resampling kernels in use.");
  neurovfm::bindings::register_resample(m);
  neurovfm::bindings::register_intensity(m);
  neurovfm::bindings::register_dicom(m);
  neurovfm::bindings::register_items(m);
}
