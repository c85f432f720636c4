#include "common.hpp"
#include "neurovfm/items.hpp"

namespace neurovfm::bindings {

void register_items(py::module_&) {}

}  // namespace neurovfm::bindings
