#include "common.hpp"
#include "neurovfm/parallel.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "neurovfm compiled kernels (private; use the neurovfm package)";
  m.def("hardware_threads", &neurovfm::hardware_threads);
  neurovfm::bindings::register_resample(m);
  neurovfm::bindings::register_intensity(m);
  neurovfm::bindings::register_dicom(m);
}
