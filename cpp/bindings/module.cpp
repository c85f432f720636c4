// neurovfm._core: each binding file registers its part of the module.
#include "common.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "neurovfm compiled kernels (private; use the neurovfm package)";
  using namespace neurovfm::bindings;
  register_errors(m);  // first: the translation of kernel exceptions
  register_runtime(m);
  register_memory(m);
  register_resample(m);
  register_orient(m);
  register_tokens(m);
  register_intensity(m);
  register_dicom(m);
  register_items(m);
  register_concat(m);
}
