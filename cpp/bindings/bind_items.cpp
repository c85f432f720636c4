#include <array>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>

#include "common.hpp"
#include "neurovfm/items.hpp"
#include "neurovfm/tokens.hpp"

namespace neurovfm::bindings {
namespace {

using Triple = std::array<std::int64_t, 3>;

// A uint8 volume given as [D, H, W] or [1, D, H, W], viewed without copying.
VolumeView volume_view(const py::array& a, const char* what) {
  if (a.ndim() == 4) {
    if (a.shape(0) != 1)
      throw py::value_error(std::string(what) + ": expected [1, D, H, W] or [D, H, W], got a leading axis of " +
                            std::to_string(a.shape(0)));
    VolumeView v;
    v.dtype = to_dtype(a.dtype(), what);
    v.data = a.data();
    for (int k = 0; k < 3; ++k) {
      v.shape[k] = a.shape(k + 1);
      if (a.strides(k + 1) % a.itemsize() != 0)
        throw py::value_error(std::string(what) + ": strides must be multiples of the element size");
      v.strides[k] = a.strides(k + 1) / a.itemsize();
    }
    return v;
  }
  return view3d(a, what);
}

py::tuple make_item_py(const py::array& volume, const std::optional<py::array>& token_background,
                       std::optional<Triple> crop_start, std::optional<Triple> crop_size,
                       bool transpose_hw, std::array<bool, 3> flips, const std::string& dtype,
                       bool tokens, int threads) {
  VolumeView v = volume_view(volume, "make_item volume");
  if (v.dtype != DType::u8) throw py::type_error("make_item: the volume must be uint8 (the cache's dtype)");
  if (v.shape[0] % kTokD || v.shape[1] % kTokH || v.shape[2] % kTokW)
    throw py::value_error("make_item: volume shape (" + std::to_string(v.shape[0]) + ", " +
                          std::to_string(v.shape[1]) + ", " + std::to_string(v.shape[2]) +
                          ") is not a multiple of (4, 16, 16)");
  const Triple side{v.shape[0] / kTokD, v.shape[1] / kTokH, v.shape[2] / kTokW};
  VolumeView token_background_view;
  token_background_view.data = nullptr;
  token_background_view.dtype = DType::u8;
  if (token_background) {
    token_background_view = view3d(*token_background, "make_item flags");
    if (token_background_view.dtype != DType::u8)
      throw py::type_error("make_item: flags must be uint8");
    for (int k = 0; k < 3; ++k)
      if (token_background_view.shape[k] != side[k])
        throw py::value_error("make_item: flags shape (" +
                              std::to_string(token_background_view.shape[0]) + ", " +
                              std::to_string(token_background_view.shape[1]) + ", " +
                              std::to_string(token_background_view.shape[2]) +
                              ") is not the token grid (" + std::to_string(side[0]) + ", " +
                              std::to_string(side[1]) + ", " + std::to_string(side[2]) + ")");
  }
  ItemPlan plan;
  for (int k = 0; k < 3; ++k) {
    plan.crop_start[k] = crop_start ? (*crop_start)[k] : 0;
    plan.crop_size[k] = crop_size ? (*crop_size)[k] : side[k] - plan.crop_start[k];
    if (plan.crop_size[k] < 1 || plan.crop_start[k] < 0 || plan.crop_start[k] + plan.crop_size[k] > side[k])
      throw py::value_error("make_item: crop box start " + std::to_string(plan.crop_start[k]) + " size " +
                            std::to_string(plan.crop_size[k]) + " on axis " + std::to_string(k) +
                            " does not fit the token grid side " + std::to_string(side[k]));
    plan.flip[k] = flips[k];
  }
  plan.transpose_hw = transpose_hw;
  ItemType type;
  py::dtype out_dt;
  if (dtype == "float32") {
    type = ItemType::f32;
    out_dt = py::dtype::of<float>();
  } else if (dtype == "uint8") {
    type = ItemType::u8;
    out_dt = py::dtype::of<std::uint8_t>();
  } else {
    throw py::value_error("make_item: dtype must be 'float32' or 'uint8', got '" + dtype + "'");
  }
  if (threads < 1) throw py::value_error("make_item: threads must be >= 1");
  std::int64_t grid[3];
  item_grid(plan, grid);
  const py::ssize_t n = grid[0] * grid[1] * grid[2];
  py::array out = tokens ? py::array(out_dt, std::vector<py::ssize_t>{n, kTokSize})
                         : py::array(out_dt, std::vector<py::ssize_t>{1, grid[0] * kTokD,
                                                                      grid[1] * kTokH, grid[2] * kTokW});
  py::array_t<std::int32_t> coords(std::vector<py::ssize_t>{n, 3});
  py::array_t<std::uint8_t> out_token_background(std::vector<py::ssize_t>{n});
  if (!token_background)
    std::memset(out_token_background.mutable_data(), 0, static_cast<std::size_t>(n));
  void* op = out.mutable_data();
  std::int32_t* cp = coords.mutable_data();
  std::uint8_t* token_background_out_ptr =
      token_background ? out_token_background.mutable_data() : nullptr;
  {
    py::gil_scoped_release release;
    make_item(v, token_background_view, plan, tokens ? ItemLayout::tokens : ItemLayout::volume,
              type, op, token_background_out_ptr, cp, threads);
  }
  py::array_t<std::int32_t> size(3);
  for (int k = 0; k < 3; ++k) size.mutable_data()[k] = static_cast<std::int32_t>(grid[k]);
  return py::make_tuple(out, coords, out_token_background, size);
}

}  // namespace

void register_items(py::module_& m) {
  m.def("make_item", &make_item_py, py::arg("volume"), py::arg("flags") = py::none(),
        py::arg("crop_start") = py::none(), py::arg("crop_size") = py::none(),
        py::arg("transpose_hw") = false,
        py::arg("flips") = std::array<bool, 3>{false, false, false}, py::arg("dtype") = "float32",
        py::arg("tokens") = true, py::arg("threads") = 1,
        "One training item from a uint8 volume [D, H, W] or [1, D, H, W] and its token\n"
        "background flags [D/4, H/16, W/16]: crop (token box), swap H/W, flip (output axes),\n"
        "convert (float32 = x / 255, or uint8) and tokenise, in one pass.\n"
        "Returns (img [N, 1024] or [1, D', H', W'], coords int32 [N, 3], token background\n"
        "flags uint8 [N], grid int32 [3] (d, h, w tokens)).");
}

}  // namespace neurovfm::bindings
