// Element types the kernels accept, and a dispatcher over them.
#pragma once

#include <cstdint>
#include <stdexcept>

namespace neurovfm {

enum class DType : int { u8 = 0, i8, u16, i16, u32, i32, f32, f64 };

const char* dtype_name(DType t);

template <typename F>
decltype(auto) dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::u8: return f(std::uint8_t{});
    case DType::i8: return f(std::int8_t{});
    case DType::u16: return f(std::uint16_t{});
    case DType::i16: return f(std::int16_t{});
    case DType::u32: return f(std::uint32_t{});
    case DType::i32: return f(std::int32_t{});
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
  }
  throw std::invalid_argument("unsupported element type");
}

// A read-only strided 3-D view. Strides are in elements and may be negative
// (a flipped axis); data points at element [0, 0, 0].
struct VolumeView {
  const void* data = nullptr;
  DType dtype = DType::f64;
  std::int64_t shape[3] = {0, 0, 0};
  std::int64_t strides[3] = {0, 0, 0};
};

}  // namespace neurovfm
