// The one place where the kernels' C++ exceptions become Python exceptions of
// the library's family (python/neurovfm/errors.py); neurovfm/errors.hpp lists
// the mapping. Registered first, for this module only.
#include <exception>
#include <stdexcept>
#include <typeinfo>

#include "common.hpp"
#include "neurovfm/errors.hpp"

namespace neurovfm::bindings {
namespace {

// Strong references for the life of the process (never released: a translator
// may run until the interpreter ends).
PyObject* g_kernel_error = nullptr;      // neurovfm._core.KernelError
PyObject* g_image_read_error = nullptr;  // neurovfm.errors.ImageReadError

void raise_image_read_error(const FileError& e) {
  try {
    py::object exc = py::reinterpret_borrow<py::object>(g_image_read_error)(e.path(), e.reason());
    PyErr_SetObject(g_image_read_error, exc.ptr());
  } catch (py::error_already_set& err) {  // the constructor failed: raise that
    err.restore();
  }
}

void translate(std::exception_ptr p) {
  if (!p) return;
  try {
    std::rethrow_exception(p);
  } catch (const py::builtin_exception&) {
    throw;  // pybind11's own (py::value_error, ...): its default translation
  } catch (const FileError& e) {
    raise_image_read_error(e);
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(g_kernel_error, e.what());
  } catch (const std::domain_error& e) {
    PyErr_SetString(g_kernel_error, e.what());
  } catch (const std::length_error& e) {
    PyErr_SetString(g_kernel_error, e.what());
  } catch (const std::logic_error& e) {
    // A plain logic_error is a call out of order (e.g. finish before every push);
    // out_of_range, future_error, ...: pybind11's translation.
    if (typeid(e) != typeid(std::logic_error)) throw;
    PyErr_SetString(g_kernel_error, e.what());
  } catch (const std::runtime_error& e) {
    // A plain runtime_error is a kernel limit (e.g. a big-endian host); system_error
    // and the other subclasses: pybind11's translation.
    if (typeid(e) != typeid(std::runtime_error)) throw;
    PyErr_SetString(g_kernel_error, e.what());
  }
}

}  // namespace

void register_errors(py::module_& m) {
  py::module_ family = py::module_::import("neurovfm.errors");
  py::object read_error = family.attr("ImageReadError");
  // InvalidArgumentError is (NeuroVFMError, ValueError); the two directly where it is missing.
  py::tuple bases =
      py::hasattr(family, "InvalidArgumentError")
          ? py::tuple(py::make_tuple(family.attr("InvalidArgumentError")))
          : py::tuple(py::make_tuple(family.attr("NeuroVFMError"),
                                     py::reinterpret_borrow<py::object>(PyExc_ValueError)));
  py::dict ns;
  ns["__doc__"] = py::str(
      "A kernel refused its arguments or the order of calls (a NeuroVFMError and a ValueError).");
  PyObject* kernel_error = PyErr_NewException("neurovfm._core.KernelError", bases.ptr(), ns.ptr());
  if (!kernel_error) throw py::error_already_set();
  m.add_object("KernelError", py::reinterpret_borrow<py::object>(kernel_error));
  g_kernel_error = kernel_error;  // keeps PyErr_NewException's reference
  g_image_read_error = read_error.release().ptr();
  py::register_local_exception_translator(&translate);
}

}  // namespace neurovfm::bindings
