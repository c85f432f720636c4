// The kernels' exceptions, and how the bindings show them to Python
// (cpp/bindings/bind_errors.cpp, the one place that maps them):
//   FileError               a file cannot be read as asked: neurovfm.errors.ImageReadError
//                           (path, reason), a ValueError
//   std::invalid_argument,  the kernel refuses its arguments or a call order:
//   std::logic_error, ...   neurovfm._core.KernelError (an InvalidArgumentError: a
//                           NeuroVFMError and a ValueError)
//   std::bad_alloc          MemoryError
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace neurovfm {

// A file the readers cannot use; what() is "path: reason".
class FileError : public std::runtime_error {
 public:
  FileError(std::string path, std::string reason)
      : std::runtime_error(path + ": " + reason),
        path_(std::move(path)),
        reason_(std::move(reason)) {}
  const std::string& path() const noexcept { return path_; }
  const std::string& reason() const noexcept { return reason_; }

 private:
  std::string path_;
  std::string reason_;
};

}  // namespace neurovfm
