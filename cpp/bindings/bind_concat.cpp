// concat_rows: one output from the rows of several arrays (a batch's tokens).
#include <string>
#include <vector>

#include "common.hpp"
#include "neurovfm/concat.hpp"

namespace neurovfm::bindings {
namespace {

std::string describe(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t k = 0; k < a.ndim(); ++k) s += (k ? ", " : "") + std::to_string(a.shape(k));
  return s + (a.ndim() == 1 ? ",) " : ") ") + py::str(static_cast<py::object>(a.dtype())).cast<std::string>();
}

bool c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

void concat_rows_py(const std::vector<py::array>& parts, const py::object& out_obj, int threads) {
  if (threads < 1) throw py::value_error("concat_rows: threads must be >= 1");
  if (!py::isinstance<py::array>(out_obj)) throw py::type_error("concat_rows: out must be a NumPy array");
  const auto out = py::reinterpret_borrow<py::array>(out_obj);
  if (out.ndim() < 1) throw py::value_error("concat_rows: out must have at least one axis");
  if (!c_contiguous(out) || !out.writeable())
    throw py::value_error("concat_rows: out must be C-contiguous and writeable");
  std::size_t row_bytes = static_cast<std::size_t>(out.itemsize());
  for (py::ssize_t k = 1; k < out.ndim(); ++k) row_bytes *= static_cast<std::size_t>(out.shape(k));

  std::vector<RowBlock> blocks;
  blocks.reserve(parts.size());
  py::ssize_t total = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const py::array& p = parts[i];
    bool same = p.dtype().equal(out.dtype()) && p.ndim() == out.ndim();
    for (py::ssize_t k = 1; same && k < out.ndim(); ++k) same = p.shape(k) == out.shape(k);
    if (!same)
      throw py::value_error("concat_rows: part " + std::to_string(i) + " " + describe(p) +
                            " does not have the rows of out " + describe(out));
    if (!c_contiguous(p)) throw py::value_error("concat_rows: part " + std::to_string(i) + " is not C-contiguous");
    blocks.push_back({static_cast<const std::uint8_t*>(p.data()), static_cast<std::int64_t>(p.shape(0))});
    total += p.shape(0);
  }
  if (out.shape(0) != total)
    throw py::value_error("concat_rows: out has " + std::to_string(out.shape(0)) + " rows, the parts " +
                          std::to_string(total));
  auto* dst = static_cast<std::uint8_t*>(const_cast<void*>(out.data()));
  py::gil_scoped_release release;
  concat_rows(blocks.data(), blocks.size(), row_bytes, dst, threads);
}

}  // namespace

void register_concat(py::module_& m) {
  m.def("concat_rows", &concat_rows_py, py::arg("parts"), py::arg("out"), py::arg("threads") = 1,
        "The rows of parts (C-contiguous arrays of out's dtype and row shape), in order, written\n"
        "into out (C-contiguous, writeable, their total rows, not overlapping them); large outputs\n"
        "with non-temporal stores. The GIL is released; the same bytes for any thread count.");
}

}  // namespace neurovfm::bindings
