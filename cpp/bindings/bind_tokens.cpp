// 4x16x16 tokens: the tokens of a volume, and the token background flags
// (1 = the token holds a background voxel) of a voxel foreground mask.
#include <string>
#include <vector>

#include "common.hpp"
#include "neurovfm/tokens.hpp"

namespace neurovfm::bindings {
namespace {

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

py::array token_background_py(const py::array& foreground, int threads) {
  VolumeView v = view3d(foreground, "token_background");
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

void register_tokens(py::module_& m) {
  m.def("tokenize", &tokenize_py, py::arg("volume"), py::arg("threads") = 1,
        "[D, H, W] -> ([N, 1024] tokens, [N, 3] int32 coords).");
  m.def("token_background", &token_background_py, py::arg("foreground"), py::arg("threads") = 1,
        "Token background flags (uint8 [N], 1 = the token holds a background voxel) from a\n"
        "voxel foreground mask (bool or uint8 [D, H, W], True = foreground).");
}

}  // namespace neurovfm::bindings
