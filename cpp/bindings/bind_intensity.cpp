#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "neurovfm/intensity.hpp"
#include "neurovfm/tokens.hpp"

namespace neurovfm::bindings {
namespace {

py::ssize_t token_count(const VolumeView& v, bool with_tokens) {
  if (!with_tokens) return 0;
  if (v.shape[0] % kTokD || v.shape[1] % kTokH || v.shape[2] % kTokW)
    throw py::value_error("volume shape (" + std::to_string(v.shape[0]) + ", " +
                          std::to_string(v.shape[1]) + ", " + std::to_string(v.shape[2]) +
                          ") is not a multiple of (4, 16, 16)");
  return (v.shape[0] / kTokD) * (v.shape[1] / kTokH) * (v.shape[2] / kTokW);
}

py::tuple ct_windows_py(const py::array& in, const std::vector<std::array<double, 2>>& windows,
                        double fg_threshold, bool token_flags, bool voxel_mask, int threads,
                        bool quantize) {
  VolumeView v = view3d(in, "ct_windows");
  if (windows.size() > 8) throw py::value_error("ct_windows: at most 8 windows");
  for (const auto& w : windows)
    if (!(w[0] > 0.0) || !std::isfinite(w[0]) || !std::isfinite(w[1]))
      throw py::value_error("ct_windows: window (width " + std::to_string(w[0]) + ", level " +
                            std::to_string(w[1]) + ") needs a positive finite width and a finite level");
  const py::ssize_t n = token_count(v, token_flags);
  const std::vector<py::ssize_t> shape{1, v.shape[0], v.shape[1], v.shape[2]};
  py::list outs;
  std::vector<void*> ptrs;
  std::vector<Window> ws;
  for (const auto& w : windows) {
    py::array a = quantize ? py::array(py::array_t<std::uint8_t>(shape)) : py::array(py::array_t<float>(shape));
    ptrs.push_back(a.mutable_data());
    outs.append(a);
    ws.push_back(Window{w[0], w[1]});
  }
  py::object token_background = py::none(), foreground = py::none();
  std::uint8_t* token_background_ptr = nullptr;
  std::uint8_t* foreground_ptr = nullptr;
  if (token_flags) {
    py::array_t<std::uint8_t> a(n);
    token_background_ptr = a.mutable_data();
    token_background = a;
  }
  if (voxel_mask) {
    py::array_t<bool> a(std::vector<py::ssize_t>{v.shape[0], v.shape[1], v.shape[2]});
    foreground_ptr = reinterpret_cast<std::uint8_t*>(a.mutable_data());
    foreground = a;
  }
  {
    py::gil_scoped_release release;
    ct_windows(v, ws.data(), static_cast<int>(ws.size()), ptrs.data(), quantize, fg_threshold,
               token_background_ptr, foreground_ptr, threads);
  }
  return py::make_tuple(outs, token_background, foreground);
}

py::tuple percentiles_py(const py::array& in, const std::vector<double>& q, int threads) {
  VolumeView v = view3d(in, "percentiles");
  if (v.shape[0] * v.shape[1] * v.shape[2] == 0)
    throw py::value_error("percentiles: empty volume");
  std::vector<double> res(q.size());
  double mn = 0, mx = 0;
  {
    py::gil_scoped_release release;
    percentiles(v, q.data(), static_cast<int>(q.size()), res.data(), &mn, &mx, threads);
  }
  return py::make_tuple(res, mn, mx);
}

py::tuple mri_normalise_py(const py::array& in, double lo, double hi, double mn, double mx,
                           double fg_threshold, bool token_flags, bool voxel_mask, int threads,
                           bool quantize) {
  VolumeView v = view3d(in, "mri_normalise");
  const py::ssize_t n = token_count(v, token_flags);
  const std::vector<py::ssize_t> shape{1, v.shape[0], v.shape[1], v.shape[2]};
  py::array out = quantize ? py::array(py::array_t<std::uint8_t>(shape)) : py::array(py::array_t<float>(shape));
  void* op = out.mutable_data();
  py::object token_background = py::none(), foreground = py::none();
  std::uint8_t* token_background_ptr = nullptr;
  std::uint8_t* foreground_ptr = nullptr;
  if (token_flags) {
    py::array_t<std::uint8_t> a(n);
    token_background_ptr = a.mutable_data();
    token_background = a;
  }
  if (voxel_mask) {
    py::array_t<bool> a(std::vector<py::ssize_t>{v.shape[0], v.shape[1], v.shape[2]});
    foreground_ptr = reinterpret_cast<std::uint8_t*>(a.mutable_data());
    foreground = a;
  }
  {
    py::gil_scoped_release release;
    mri_normalise(v, lo, hi, mn, mx, fg_threshold, op, quantize, token_background_ptr,
                  foreground_ptr, threads);
  }
  return py::make_tuple(out, token_background, foreground);
}

// The elements of a C-contiguous, aligned array of T (any shape), not copied.
template <typename T>
const T* flat_input(const py::array& in, const char* what) {
  if (!py::isinstance<py::array_t<T>>(in) || !(in.flags() & py::array::c_style))
    throw py::type_error(std::string(what) + ": expected a C-contiguous " +
                         py::str(static_cast<py::object>(py::dtype::of<T>())).cast<std::string>() + " array");
  if (reinterpret_cast<std::uintptr_t>(in.data()) % alignof(T) != 0)
    throw py::value_error(std::string(what) + ": array data is not aligned to its element size");
  return static_cast<const T*>(in.data());
}

py::array_t<float> dequantize_py(const py::array& in, int threads) {
  const std::uint8_t* src = flat_input<std::uint8_t>(in, "dequantize_u8");
  std::vector<py::ssize_t> shape(in.shape(), in.shape() + in.ndim());
  py::array_t<float> out(shape);
  float* dst = out.mutable_data();
  const auto n = static_cast<std::int64_t>(in.size());
  {
    py::gil_scoped_release release;
    dequantize_u8(src, dst, n, threads);
  }
  return out;
}

}  // namespace

void register_intensity(py::module_& m) {
  m.def("ct_windows", &ct_windows_py, py::arg("volume"), py::arg("windows"),
        py::arg("fg_threshold"), py::arg("token_flags") = true, py::arg("voxel_mask") = false,
        py::arg("threads") = 1, py::arg("quantize") = false,
        "CT windows [(width, level), ...] -> (list of float32 (or quantised uint8) [1, D, H, W], "
        "token flags, mask).");
  m.def("percentiles", &percentiles_py, py::arg("volume"), py::arg("q"), py::arg("threads") = 1,
        "Exact NumPy-linear percentiles (q in percent) -> (values, min, max).");
  m.def("mri_normalise", &mri_normalise_py, py::arg("volume"), py::arg("lo"), py::arg("hi"),
        py::arg("vmin"), py::arg("vmax"), py::arg("fg_threshold"), py::arg("token_flags") = true,
        py::arg("voxel_mask") = false, py::arg("threads") = 1, py::arg("quantize") = false,
        "MRI clip + min-max normalisation -> (float32 (or quantised uint8) [1, D, H, W], token flags, "
        "mask).");
  m.def("dequantize_u8", &dequantize_py, py::arg("values"), py::arg("threads") = 1,
        "float32(v) / 255.");
}

}  // namespace neurovfm::bindings
