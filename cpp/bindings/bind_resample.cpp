#include <array>
#include <stdexcept>
#include <vector>

#include "common.hpp"
#include "neurovfm/orient.hpp"
#include "neurovfm/resample.hpp"
#include "neurovfm/tokens.hpp"

namespace neurovfm::bindings {
namespace {

py::array resample(const py::array& in, const std::array<std::int64_t, 3>& n_out,
                   const std::array<std::int64_t, 3>& start, const std::array<double, 3>& t,
                   const std::array<double, 3>& s, int threads) {
  VolumeView v = view3d(in, "resample");
  AxisPlan plan[3];
  for (int k = 0; k < 3; ++k) {
    if (n_out[k] < 0 || start[k] < 0)
      throw py::value_error("resample: output sizes and crop starts must be >= 0");
    if (v.shape[k] == 0) throw py::value_error("resample: input has an empty axis");
    plan[k] = AxisPlan{n_out[k], start[k], t[k], s[k]};
  }
  py::array out(to_numpy(v.dtype), std::vector<py::ssize_t>{n_out[0], n_out[1], n_out[2]});
  void* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    resample_bspline(v, plan, dst, threads);
  }
  return out;
}

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

py::tuple tokenize_py(const py::array& in, int threads) {
  VolumeView v = view3d(in, "tokenize");
  if (v.shape[0] % kTokD || v.shape[1] % kTokH || v.shape[2] % kTokW)
    throw py::value_error("tokenize: volume shape (" + std::to_string(v.shape[0]) + ", " +
                          std::to_string(v.shape[1]) + ", " + std::to_string(v.shape[2]) +
                          ") is not a multiple of (4, 16, 16)");
  const py::ssize_t n = (v.shape[0] / kTokD) * (v.shape[1] / kTokH) * (v.shape[2] / kTokW);
  py::array out(to_numpy(v.dtype), std::vector<py::ssize_t>{n, kTokSize});
  py::array_t<std::int32_t> coords(std::vector<py::ssize_t>{n, 3});
  void* dst = out.mutable_data();
  std::int32_t* c = coords.mutable_data();
  {
    py::gil_scoped_release release;
    tokenize(v, dst, c, threads);
  }
  return py::make_tuple(out, coords);
}

py::array token_background_py(const py::array& fg, int threads) {
  VolumeView v = view3d(fg, "token_background");
  if (v.dtype != DType::u8) throw py::type_error("token_background: mask must be bool or uint8");
  if (v.shape[0] % kTokD || v.shape[1] % kTokH || v.shape[2] % kTokW)
    throw py::value_error("token_background: mask shape is not a multiple of (4, 16, 16)");
  const py::ssize_t n = (v.shape[0] / kTokD) * (v.shape[1] / kTokH) * (v.shape[2] / kTokW);
  py::array_t<std::uint8_t> out(n);
  std::uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    token_background(v, dst, threads);
  }
  return out;
}

}  // namespace

void register_resample(py::module_& m) {
  m.def("resample_bspline", &resample, py::arg("volume"), py::arg("n_out"), py::arg("start"),
        py::arg("out_spacing"), py::arg("in_spacing"), py::arg("threads") = 1,
        "Cubic B-spline resampling of a 3-D array (numpy axis order) onto a cropped grid.");
  m.def("copy_contiguous", &copy_contiguous_py, py::arg("volume"), py::arg("threads") = 1,
        "C-contiguous copy of a strided 3-D view (applies a reorientation).");
  m.def("tokenize", &tokenize_py, py::arg("volume"), py::arg("threads") = 1,
        "[D, H, W] -> ([N, 1024] tokens, [N, 3] int32 coords).");
  m.def("token_background", &token_background_py, py::arg("foreground"), py::arg("threads") = 1,
        "Per-token background flags (uint8 [N]) from a voxel foreground mask.");
}

}  // namespace neurovfm::bindings
