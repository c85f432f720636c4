// Reorientation: a C-contiguous copy of a strided (permuted, flipped) view.
#include <vector>

#include "common.hpp"
#include "neurovfm/orient.hpp"

namespace neurovfm::bindings {
namespace {

py::array copy_contiguous_py(const py::array& in, int threads) {
  VolumeView v = view3d(in, "copy_contiguous");
  py::array out(to_numpy(v.dtype), std::vector<py::ssize_t>{v.shape[0], v.shape[1], v.shape[2]});
  void* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    copy_contiguous(v, dst, threads);
  }
  return out;
}

}  // namespace

void register_orient(py::module_& m) {
  m.def("copy_contiguous", &copy_contiguous_py, py::arg("volume"), py::arg("threads") = 1,
        "C-contiguous copy of a strided 3-D view (applies a reorientation).");
}

}  // namespace neurovfm::bindings
