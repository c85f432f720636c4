// The one place that includes pybind11 for the bindings, and the conversion
// of NumPy arrays into kernel views.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "neurovfm/dtype.hpp"
#include "neurovfm/parallel.hpp"

namespace py = pybind11;

namespace neurovfm::bindings {

// Kernel element type of a NumPy dtype; TypeError for anything else.
inline DType to_dtype(const py::dtype& dt, const char* what) {
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (!dt.equal(dt.attr("newbyteorder")("=")))
    throw py::type_error(std::string(what) + ": non-native byte order is not supported");
  if (kind == 'u' && size == 1) return DType::u8;
  if (kind == 'b' && size == 1) return DType::u8;
  if (kind == 'i' && size == 1) return DType::i8;
  if (kind == 'u' && size == 2) return DType::u16;
  if (kind == 'i' && size == 2) return DType::i16;
  if (kind == 'u' && size == 4) return DType::u32;
  if (kind == 'i' && size == 4) return DType::i32;
  if (kind == 'f' && size == 4) return DType::f32;
  if (kind == 'f' && size == 8) return DType::f64;
  throw py::type_error(std::string(what) + ": unsupported dtype " +
                       py::str(static_cast<py::object>(dt)).cast<std::string>() +
                       " (expected uint8, int8, uint16, int16, uint32, int32, float32 or float64)");
}

inline py::dtype to_numpy(DType t) {
  switch (t) {
    case DType::u8: return py::dtype::of<std::uint8_t>();
    case DType::i8: return py::dtype::of<std::int8_t>();
    case DType::u16: return py::dtype::of<std::uint16_t>();
    case DType::i16: return py::dtype::of<std::int16_t>();
    case DType::u32: return py::dtype::of<std::uint32_t>();
    case DType::i32: return py::dtype::of<std::int32_t>();
    case DType::f32: return py::dtype::of<float>();
    case DType::f64: return py::dtype::of<double>();
  }
  throw py::type_error("unsupported dtype");
}

// A read-only 3-D view of a NumPy array without copying it. Strides may be
// negative or non-contiguous but must be multiples of the element size.
inline VolumeView view3d(const py::array& a, const char* what) {
  if (a.ndim() != 3)
    throw py::value_error(std::string(what) + ": expected a 3-D array, got " +
                          std::to_string(a.ndim()) + "-D");
  VolumeView v;
  v.dtype = to_dtype(a.dtype(), what);
  v.data = a.data();
  const auto item = a.itemsize();
  for (int k = 0; k < 3; ++k) {
    v.shape[k] = a.shape(k);
    if (a.strides(k) % item != 0)
      throw py::value_error(std::string(what) + ": strides must be multiples of the element size");
    v.strides[k] = a.strides(k) / item;
  }
  if (reinterpret_cast<std::uintptr_t>(a.data()) % static_cast<std::uintptr_t>(item) != 0)
    throw py::value_error(std::string(what) + ": array data is not aligned to its element size");
  return v;
}

// Bytes of an array of `shape` with `itemsize`-byte elements; ValueError for a
// negative side or a size beyond this machine's memory (instead of an overflowing
// product, or an allocation the system would grant lazily and never back).
inline std::size_t checked_bytes(const std::vector<py::ssize_t>& shape, std::size_t itemsize,
                                 const std::string& what) {
  const std::size_t limit = physical_memory();
  std::size_t n = itemsize;
  bool empty = false;
  for (auto d : shape) {
    if (d < 0) throw py::value_error(what + ": negative dimension " + std::to_string(d));
    if (d == 0) empty = true;
  }
  if (empty) return 0;
  for (auto d : shape) {
    if (static_cast<std::size_t>(d) > limit / n)
      throw py::value_error(what + ": an array of shape (" + [&] {
        std::string s;
        for (auto e : shape) s += (s.empty() ? "" : ", ") + std::to_string(e);
        return s;
      }() + ") would need more than this machine's " + std::to_string(limit >> 20) + " MiB of memory");
    n *= static_cast<std::size_t>(d);
  }
  return n;
}

// A new C-contiguous array whose storage comes from big_alloc (huge pages
// for large volumes); uninitialised. Kernel element types only (an
// uninitialised object array would hold wild pointers).
inline py::array empty_big(const py::dtype& dt, const std::vector<py::ssize_t>& shape) {
  to_dtype(dt, "empty");
  const std::size_t bytes = checked_bytes(shape, static_cast<std::size_t>(dt.itemsize()), "empty");
  void* p = big_alloc(bytes);
  py::capsule owner(p, [](void* q) { BigFree()(q); });
  return py::array(dt, shape, p, owner);
}

// One per binding file (module.cpp calls them all).
void register_errors(py::module_& m);     // bind_errors.cpp: kernel exceptions -> Python
void register_runtime(py::module_& m);    // bind_runtime.cpp: threads, instruction set
void register_memory(py::module_& m);     // bind_memory.cpp: empty, release_cached_buffers
void register_resample(py::module_& m);   // bind_resample.cpp: B-spline resampling
void register_orient(py::module_& m);     // bind_orient.cpp: copy_contiguous
void register_tokens(py::module_& m);     // bind_tokens.cpp: tokenize, token_background
void register_intensity(py::module_& m);  // bind_intensity.cpp: CT windows, MRI, dequantize
void register_dicom(py::module_& m);      // bind_dicom.cpp: DICOM headers and pixels
void register_items(py::module_& m);      // bind_items.cpp: make_item
void register_concat(py::module_& m);     // bind_concat.cpp: concat_rows

}  // namespace neurovfm::bindings
