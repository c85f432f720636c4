#include "common.hpp"
#include "neurovfm/dicom.hpp"

namespace neurovfm::bindings {

void register_dicom(py::module_&) {}

}  // namespace neurovfm::bindings
