#include "neurovfm/tokens.hpp"

#include <cstring>
#include <stdexcept>

#include "neurovfm/parallel.hpp"

namespace neurovfm {
namespace {

void check(const VolumeView& in) {
  if (in.shape[0] % kTokD || in.shape[1] % kTokH || in.shape[2] % kTokW)
    throw std::invalid_argument("volume shape must be a multiple of 4x16x16 to tokenize");
}

}  // namespace

void tokenize(const VolumeView& in, void* out, std::int32_t* coords, int threads) {
  check(in);
  const std::int64_t td = in.shape[0] / kTokD, th = in.shape[1] / kTokH, tw = in.shape[2] / kTokW;
  const std::int64_t n = td * th * tw;
  dispatch_dtype(in.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(in.data);
    T* dst = static_cast<T*>(out);
    parallel_for(static_cast<std::size_t>(n), threads, 64, [&](std::size_t b, std::size_t e) {
      for (std::size_t t = b; t < e; ++t) {
        const std::int64_t i = static_cast<std::int64_t>(t);
        const std::int64_t a = i / (th * tw), bh = (i / tw) % th, c = i % tw;
        if (coords) {
          coords[3 * i] = static_cast<std::int32_t>(a);
          coords[3 * i + 1] = static_cast<std::int32_t>(bh);
          coords[3 * i + 2] = static_cast<std::int32_t>(c);
        }
        T* row = dst + i * kTokSize;
        for (std::int64_t dz = 0; dz < kTokD; ++dz)
          for (std::int64_t dy = 0; dy < kTokH; ++dy) {
            const T* p = src + (a * kTokD + dz) * in.strides[0] + (bh * kTokH + dy) * in.strides[1] +
                         c * kTokW * in.strides[2];
            T* q = row + (dz * kTokH + dy) * kTokW;
            if (in.strides[2] == 1) {
              std::memcpy(q, p, sizeof(T) * kTokW);
            } else {
              for (std::int64_t dx = 0; dx < kTokW; ++dx) q[dx] = p[dx * in.strides[2]];
            }
          }
      }
    });
  });
}

void token_background(const VolumeView& foreground, std::uint8_t* out, int threads) {
  check(foreground);
  if (foreground.dtype != DType::u8)
    throw std::invalid_argument("foreground mask must be uint8 or bool");
  const std::int64_t td = foreground.shape[0] / kTokD, th = foreground.shape[1] / kTokH,
                     tw = foreground.shape[2] / kTokW;
  const auto* src = static_cast<const std::uint8_t*>(foreground.data);
  parallel_for(static_cast<std::size_t>(td), threads, 1, [&](std::size_t b, std::size_t e) {
    for (std::size_t a = b; a < e; ++a) {
      std::uint8_t* slab_background = out + static_cast<std::int64_t>(a) * th * tw;
      std::memset(slab_background, 0, static_cast<std::size_t>(th * tw));
      for (std::int64_t dz = 0; dz < kTokD; ++dz)
        for (std::int64_t y = 0; y < foreground.shape[1]; ++y) {
          const std::uint8_t* row =
              src + (static_cast<std::int64_t>(a) * kTokD + dz) * foreground.strides[0] +
              y * foreground.strides[1];
          for (std::int64_t x = 0; x < foreground.shape[2]; ++x)
            if (!row[x * foreground.strides[2]]) slab_background[(y / kTokH) * tw + x / kTokW] = 1;
        }
    }
  });
}

}  // namespace neurovfm
