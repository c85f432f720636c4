#include "neurovfm/orient.hpp"

#include <algorithm>
#include <cstring>

#include "neurovfm/parallel.hpp"

namespace neurovfm {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::u8: return "uint8";
    case DType::i8: return "int8";
    case DType::u16: return "uint16";
    case DType::i16: return "int16";
    case DType::u32: return "uint32";
    case DType::i32: return "int32";
    case DType::f32: return "float32";
    case DType::f64: return "float64";
  }
  return "unknown";
}

void copy_contiguous(const VolumeView& in, void* out, int threads) {
  const std::int64_t n0 = in.shape[0], n1 = in.shape[1], n2 = in.shape[2];
  if (n0 <= 0 || n1 <= 0 || n2 <= 0) return;
  dispatch_dtype(in.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(in.data);
    T* dst = static_cast<T*>(out);
    const std::int64_t s0 = in.strides[0], s1 = in.strides[1], s2 = in.strides[2];
    const std::size_t rows = static_cast<std::size_t>(n0 * n1);
    const std::size_t grain = std::max<std::size_t>(1, rows / (static_cast<std::size_t>(clamp_threads(threads)) * 8));
    parallel_for(rows, threads, grain, [&](std::size_t begin, std::size_t end) {
      for (std::size_t r = begin; r < end; ++r) {
        const std::int64_t i = static_cast<std::int64_t>(r) / n1;
        const std::int64_t j = static_cast<std::int64_t>(r) % n1;
        const T* p = src + i * s0 + j * s1;
        T* q = dst + static_cast<std::int64_t>(r) * n2;
        if (s2 == 1) {
          std::memcpy(q, p, static_cast<std::size_t>(n2) * sizeof(T));
        } else {
          for (std::int64_t k = 0; k < n2; ++k) q[k] = p[k * s2];
        }
      }
    });
  });
}

}  // namespace neurovfm
