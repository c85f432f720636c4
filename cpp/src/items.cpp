#include "neurovfm/items.hpp"

#include <cstring>
#include <stdexcept>
#include <string>

#include "neurovfm/isa.hpp"
#include "neurovfm/parallel.hpp"
#include "neurovfm/tokens.hpp"

// NEUROVFM_ITEMS_PORTABLE builds the plain C++ paths only (to test that they give the same bytes).
#if (defined(__SSE2__) || defined(_M_X64)) && !defined(NEUROVFM_ITEMS_PORTABLE)
#include <immintrin.h>
#define NEUROVFM_ITEMS_SSE2 1
#endif

namespace neurovfm {
namespace {

constexpr std::int64_t kPatch[3] = {kTokD, kTokH, kTokW};

// Source axis of output axis k.
inline int source_axis(int k, bool transpose_hw) {
  if (k == 0 || !transpose_hw) return k;
  return k == 1 ? 2 : 1;
}

// 16 bytes from p, p+1, ... (forward) or p, p-1, ... (backward).
inline void copy16(std::uint8_t* dst, const std::uint8_t* p, bool backward) {
  if (!backward) {
    std::memcpy(dst, p, 16);
    return;
  }
  const std::uint8_t* q = p - 15;  // the same 16 bytes, in memory order
#if defined(__GNUC__) || defined(__clang__)
  std::uint64_t lo, hi;
  std::memcpy(&lo, q, 8);
  std::memcpy(&hi, q + 8, 8);
  hi = __builtin_bswap64(hi);
  lo = __builtin_bswap64(lo);
  std::memcpy(dst, &hi, 8);
  std::memcpy(dst + 8, &lo, 8);
#else
  for (int i = 0; i < 16; ++i) dst[i] = q[15 - i];
#endif
}

#ifdef NEUROVFM_ITEMS_SSE2
// Transposes 16 rows of 16 bytes in place: interleaving row i with row i + 8
// four times transposes the block.
inline void transpose16_regs(__m128i r[16]) {
  __m128i c[16];
  for (int s = 0; s < 4; ++s) {
    for (int i = 0; i < 8; ++i) {
      c[2 * i] = _mm_unpacklo_epi8(r[i], r[i + 8]);
      c[2 * i + 1] = _mm_unpackhi_epi8(r[i], r[i + 8]);
    }
    for (int i = 0; i < 16; ++i) r[i] = c[i];
  }
}
#endif

// out[j][i] = in[i][j] for a 16x16 byte block (rows of 16 bytes).
inline void transpose16(const std::uint8_t* in, std::uint8_t* out) {
#ifdef NEUROVFM_ITEMS_SSE2
  __m128i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 16 * i));
  transpose16_regs(r);
  for (int i = 0; i < 16; ++i) _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * i), r[i]);
#else
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) out[16 * j + i] = in[16 * i + j];
#endif
}

// n values float(x) / 255.0f, bit for bit, without a division. For x in 0..255,
// x / 255 = x * 0x10101 * 2^-24 * (1 + 2^-24 + 2^-48 + ...): the 8 bits of x
// repeating. Both products below are exact (at most 24 significant bits), so the
// sum is rounded once, and the exact sum (6 periods of the pattern) rounds the
// same way as x / 255: there are at least 16 pattern bits below the rounding
// bit, so it is never a tie and the missing tail (< 2^-48 x) cannot cross a
// rounding boundary. tests/test_datasets.py checks all 256 values. (Exact
// products also make the result immune to FMA contraction.)
constexpr float kC1 = 65793.0f / 16777216.0f;                // 0x10101 * 2^-24
constexpr float kC2 = 65793.0f / 16777216.0f / 16777216.0f;  // 0x10101 * 2^-48

inline void to_float_portable(const std::uint8_t* in, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float f = static_cast<float>(in[i]);
    out[i] = f * kC1 + f * kC2;
  }
}

// The float32 gather has an AVX2 variant (the same products and sums, 8 lanes
// at a time), taken when isa() says so (neurovfm/isa.hpp: the kernels' one switch).
#if defined(NEUROVFM_ITEMS_SSE2) && defined(NEUROVFM_X86_AVX2)
#define NEUROVFM_ITEMS_AVX2 1
#endif

struct Geometry {
  std::int64_t grid[3];     // output token grid
  std::int64_t extent[3];   // output voxels
  std::int64_t origin[3];   // crop origin in source voxels, per source axis
  std::int64_t sstride[3];  // source stride (elements) of each output axis, before flips
};

// Where the patch of output token t starts in the source, and the source step
// (elements, negative when flipped) of each output axis.
inline const std::uint8_t* token_source(const std::uint8_t* src, const Geometry& g,
                                        const ItemPlan& plan, const std::int64_t t[3],
                                        std::int64_t ss[3]) {
  std::int64_t off = 0;
  for (int k = 0; k < 3; ++k) {
    const std::int64_t o = t[k] * kPatch[k];
    const std::int64_t start = plan.flip[k] ? g.extent[k] - 1 - o : o;
    off += (g.origin[source_axis(k, plan.transpose_hw)] + start) * g.sstride[k];
    ss[k] = plan.flip[k] ? -g.sstride[k] : g.sstride[k];
  }
  return src + off;
}

// Destination rows of a patch: row (z, y) of 16 values starts at z * dz + y * dy.
struct Rows {
  std::int64_t dz, dy;
};

// The uint8 patch at base (steps ss) into rows of dst.
void gather_u8(const std::uint8_t* base, const std::int64_t ss[3], std::uint8_t* dst, Rows r) {
  const std::int64_t s0 = ss[0], s1 = ss[1], dz = r.dz, dy = r.dy;  // locals: no reloads after stores
  if (ss[2] == 1) {
    for (std::int64_t z = 0; z < kTokD; ++z) {
      const std::uint8_t* p = base + z * s0;
      std::uint8_t* q = dst + z * dz;
      for (std::int64_t y = 0; y < kTokH; ++y) std::memcpy(q + y * dy, p + y * s1, 16);
    }
  } else if (ss[2] == -1) {
    for (std::int64_t z = 0; z < kTokD; ++z)
      for (std::int64_t y = 0; y < kTokH; ++y) copy16(dst + z * dz + y * dy, base + z * s0 + y * s1, true);
  } else if (ss[1] == 1 || ss[1] == -1) {
    // H and W swapped on a source with contiguous rows: read rows, transpose.
    alignas(16) std::uint8_t rows[256], tr[256];
    const bool back = s1 == -1;
    const std::int64_t s2 = ss[2];
    for (std::int64_t z = 0; z < kTokD; ++z) {
      for (std::int64_t x = 0; x < kTokW; ++x) copy16(rows + 16 * x, base + z * s0 + x * s2, back);
      if (dy == kTokW) {
        transpose16(rows, dst + z * dz);
      } else {
        transpose16(rows, tr);
        for (std::int64_t y = 0; y < kTokH; ++y) std::memcpy(dst + z * dz + y * dy, tr + 16 * y, 16);
      }
    }
  } else {
    for (std::int64_t z = 0; z < kTokD; ++z)
      for (std::int64_t y = 0; y < kTokH; ++y)
        for (std::int64_t x = 0; x < kTokW; ++x)
          dst[z * r.dz + y * r.dy + x] = base[z * ss[0] + y * ss[1] + x * ss[2]];
  }
}

void gather_f32_portable(const std::uint8_t* base, const std::int64_t ss[3], float* dst, Rows r) {
  alignas(64) std::uint8_t tile[kTokSize];
  gather_u8(base, ss, tile, Rows{kTokH * kTokW, kTokW});
  for (std::int64_t z = 0; z < kTokD; ++z)
    for (std::int64_t y = 0; y < kTokH; ++y)
      to_float_portable(tile + (z * kTokH + y) * kTokW, dst + z * r.dz + y * r.dy, kTokW);
}

#ifdef NEUROVFM_ITEMS_AVX2
NEUROVFM_TARGET_AVX2 inline void convert16_avx2(__m128i v, float* out) {
  const __m256 c1 = _mm256_set1_ps(kC1), c2 = _mm256_set1_ps(kC2);
  const __m128i a = _mm_cvtepu8_epi32(v), b = _mm_cvtepu8_epi32(_mm_srli_si128(v, 4));
  const __m128i c = _mm_cvtepu8_epi32(_mm_srli_si128(v, 8)), d = _mm_cvtepu8_epi32(_mm_srli_si128(v, 12));
  const __m256 f0 = _mm256_cvtepi32_ps(_mm256_insertf128_si256(_mm256_castsi128_si256(a), b, 1));
  const __m256 f1 = _mm256_cvtepi32_ps(_mm256_insertf128_si256(_mm256_castsi128_si256(c), d, 1));
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_mul_ps(f0, c1), _mm256_mul_ps(f0, c2)));
  _mm256_storeu_ps(out + 8, _mm256_add_ps(_mm256_mul_ps(f1, c1), _mm256_mul_ps(f1, c2)));
}

// gather_f32_portable's bytes, with the uint8 rows read straight from the source.
NEUROVFM_TARGET_AVX2 void gather_f32_avx2(const std::uint8_t* base, const std::int64_t ss[3],
                                          float* dst, Rows r) {
  if (ss[2] == 1) {
    for (std::int64_t z = 0; z < kTokD; ++z)
      for (std::int64_t y = 0; y < kTokH; ++y)
        convert16_avx2(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + z * ss[0] + y * ss[1])),
            dst + z * r.dz + y * r.dy);
  } else if (ss[2] == -1) {
    const __m128i rev = _mm_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (std::int64_t z = 0; z < kTokD; ++z)
      for (std::int64_t y = 0; y < kTokH; ++y) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + z * ss[0] + y * ss[1] - 15));
        convert16_avx2(_mm_shuffle_epi8(v, rev), dst + z * r.dz + y * r.dy);
      }
  } else if (ss[1] == 1 || ss[1] == -1) {
    // H and W swapped: 16 source rows per slice, transposed in registers.
    const __m128i rev = _mm_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const bool back = ss[1] == -1;
    for (std::int64_t z = 0; z < kTokD; ++z) {
      __m128i m[16];
      for (std::int64_t x = 0; x < kTokW; ++x) {
        const std::uint8_t* p = base + z * ss[0] + x * ss[2];
        if (back)
          m[x] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p - 15)), rev);
        else
          m[x] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      }
      transpose16_regs(m);
      for (std::int64_t y = 0; y < kTokH; ++y) convert16_avx2(m[y], dst + z * r.dz + y * r.dy);
    }
  } else {
    alignas(64) std::uint8_t tile[kTokSize];
    gather_u8(base, ss, tile, Rows{kTokH * kTokW, kTokW});
    for (std::int64_t z = 0; z < kTokD; ++z)
      for (std::int64_t y = 0; y < kTokH; ++y)
        convert16_avx2(
            _mm_load_si128(reinterpret_cast<const __m128i*>(tile + (z * kTokH + y) * kTokW)),
            dst + z * r.dz + y * r.dy);
  }
}
#endif

#ifdef NEUROVFM_ITEMS_AVX2
// The uint8 gather with byte shuffles: a reversed row is one load, one shuffle and one
// store (instead of two byte swaps of 8 bytes); in the token layout two rows go out in one
// 32-byte store; and the H/W-swapped patch is transposed two slices at a time (slice z in
// the low 128-bit lane, z + 1 in the high one: the byte unpacks work per lane, so one
// pass of the 16x16 transpose does both). The same bytes as gather_u8
// (tests/test_intensity_fast_paths.py runs both).
NEUROVFM_TARGET_AVX2 void gather_u8_avx2(const std::uint8_t* base, const std::int64_t ss[3],
                                         std::uint8_t* dst, Rows r) {
  const std::int64_t s0 = ss[0], s1 = ss[1], s2 = ss[2], dz = r.dz, dy = r.dy;
  const __m128i rev = _mm_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  if ((s2 == 1 || s2 == -1) && dy == kTokW) {
    // rows y and y + 1 are adjacent in the destination: one 32-byte store for both
    const std::int64_t back = s2 == -1 ? 15 : 0;
    const __m256i rev2 = _mm256_broadcastsi128_si256(rev);
    for (std::int64_t z = 0; z < kTokD; ++z) {
      const std::uint8_t* p = base + z * s0 - back;
      std::uint8_t* q = dst + z * dz;
      for (std::int64_t y = 0; y < kTokH; y += 2) {
        const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + y * s1));
        const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + (y + 1) * s1));
        __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
        if (back) v = _mm256_shuffle_epi8(v, rev2);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + y * kTokW), v);
      }
    }
  } else if (s2 == -1) {
    for (std::int64_t z = 0; z < kTokD; ++z)
      for (std::int64_t y = 0; y < kTokH; ++y) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + z * s0 + y * s1 - 15));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + z * dz + y * dy), _mm_shuffle_epi8(v, rev));
      }
  } else if (s2 != 1 && (s1 == 1 || s1 == -1)) {
    const __m256i rev2 = _mm256_broadcastsi128_si256(rev);
    const std::int64_t back = s1 == -1 ? 15 : 0;  // a reversed row starts 15 bytes lower
    static_assert(kTokD % 2 == 0, "slices are transposed in pairs");
    for (std::int64_t z = 0; z < kTokD; z += 2) {
      __m256i m[16];
      for (std::int64_t x = 0; x < kTokW; ++x) {
        const std::uint8_t* p = base + z * s0 + x * s2 - back;
        const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + s0));
        m[x] = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
        if (back) m[x] = _mm256_shuffle_epi8(m[x], rev2);
      }
      for (int round = 0; round < 4; ++round) {
        __m256i c[16];
        for (int i = 0; i < 8; ++i) {
          c[2 * i] = _mm256_unpacklo_epi8(m[i], m[i + 8]);
          c[2 * i + 1] = _mm256_unpackhi_epi8(m[i], m[i + 8]);
        }
        for (int i = 0; i < 16; ++i) m[i] = c[i];
      }
      for (std::int64_t y = 0; y < kTokH; ++y) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + z * dz + y * dy), _mm256_castsi256_si128(m[y]));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (z + 1) * dz + y * dy), _mm256_extracti128_si256(m[y], 1));
      }
    }
  } else {
    gather_u8(base, ss, dst, r);  // forward rows of the volume layout, and the general case
  }
}
#endif

// `avx2`: use_avx2(), read once per item by the caller.
inline void gather_u8_any(const std::uint8_t* base, const std::int64_t ss[3], std::uint8_t* dst, Rows r,
                          bool avx2) {
#ifdef NEUROVFM_ITEMS_AVX2
  if (avx2) {
    gather_u8_avx2(base, ss, dst, r);
    return;
  }
#else
  (void)avx2;
#endif
  gather_u8(base, ss, dst, r);
}

// `avx2`: use_avx2(), read once per item by the caller.
inline void gather_f32(const std::uint8_t* base, const std::int64_t ss[3], float* dst, Rows r,
                       bool avx2) {
#ifdef NEUROVFM_ITEMS_AVX2
  if (avx2) {
    gather_f32_avx2(base, ss, dst, r);
    return;
  }
#else
  (void)avx2;
#endif
  gather_f32_portable(base, ss, dst, r);
}

void check_plan(const VolumeView& v, const VolumeView& token_background, const ItemPlan& plan) {
  if (v.dtype != DType::u8) throw std::invalid_argument("make_item: the volume must be uint8");
  if (v.shape[0] % kTokD || v.shape[1] % kTokH || v.shape[2] % kTokW)
    throw std::invalid_argument("make_item: volume shape must be a multiple of 4x16x16");
  for (int k = 0; k < 3; ++k) {
    const std::int64_t side = v.shape[k] / kPatch[k];
    if (plan.crop_size[k] < 1 || plan.crop_start[k] < 0 ||
        plan.crop_start[k] + plan.crop_size[k] > side)
      throw std::invalid_argument("make_item: crop box [" + std::to_string(plan.crop_start[k]) +
                                  ", " + std::to_string(plan.crop_start[k] + plan.crop_size[k]) +
                                  ") of axis " + std::to_string(k) + " is outside the token grid (" +
                                  std::to_string(side) + " tokens)");
  }
  if (token_background.data) {
    if (token_background.dtype != DType::u8)
      throw std::invalid_argument("make_item: token background flags must be uint8");
    for (int k = 0; k < 3; ++k)
      if (token_background.shape[k] != v.shape[k] / kPatch[k])
        throw std::invalid_argument(
            "make_item: token background flags shape does not match the token grid");
  }
}

}  // namespace

void item_grid(const ItemPlan& plan, std::int64_t grid[3]) {
  grid[0] = plan.crop_size[0];
  grid[1] = plan.transpose_hw ? plan.crop_size[2] : plan.crop_size[1];
  grid[2] = plan.transpose_hw ? plan.crop_size[1] : plan.crop_size[2];
}

void make_item(const VolumeView& volume, const VolumeView& token_background, const ItemPlan& plan,
               ItemLayout layout, ItemType type, void* out, std::uint8_t* out_token_background,
               std::int32_t* out_coords, int threads) {
  check_plan(volume, token_background, plan);
  const bool avx2 = use_avx2();
  Geometry g{};
  item_grid(plan, g.grid);
  for (int k = 0; k < 3; ++k) {
    const int sa = source_axis(k, plan.transpose_hw);
    g.extent[k] = g.grid[k] * kPatch[k];
    g.origin[k] = plan.crop_start[k] * kPatch[k];
    g.sstride[k] = volume.strides[sa];
  }
  const std::int64_t n = g.grid[0] * g.grid[1] * g.grid[2];
  const auto* src = static_cast<const std::uint8_t*>(volume.data);
  const auto* background_src = static_cast<const std::uint8_t*>(token_background.data);
  const std::int64_t row = g.extent[2], plane = g.extent[1] * g.extent[2];
  parallel_for(static_cast<std::size_t>(n), threads, 32, [&](std::size_t b, std::size_t e) {
    const std::int64_t b0 = static_cast<std::int64_t>(b);
    std::int64_t t[3] = {b0 / (g.grid[1] * g.grid[2]), (b0 / g.grid[2]) % g.grid[1], b0 % g.grid[2]};
    for (std::size_t i = b; i < e; ++i) {
      const std::int64_t ti = static_cast<std::int64_t>(i);
      if (i != b && ++t[2] == g.grid[2]) {  // raster order: advance (d, h, w) without divisions
        t[2] = 0;
        if (++t[1] == g.grid[1]) {
          t[1] = 0;
          ++t[0];
        }
      }
      if (out_coords)
        for (int k = 0; k < 3; ++k) out_coords[3 * ti + k] = static_cast<std::int32_t>(t[k]);
      if (background_src && out_token_background) {
        std::int64_t background_off = 0;
        for (int k = 0; k < 3; ++k) {
          const std::int64_t tk = plan.flip[k] ? g.grid[k] - 1 - t[k] : t[k];
          background_off += (plan.crop_start[source_axis(k, plan.transpose_hw)] + tk) *
                    token_background.strides[source_axis(k, plan.transpose_hw)];
        }
        out_token_background[ti] = background_src[background_off];
      }
      std::int64_t ss[3];
      const std::uint8_t* base = token_source(src, g, plan, t, ss);
      std::int64_t o;
      Rows r;
      if (layout == ItemLayout::tokens) {
        o = ti * kTokSize;
        r = Rows{kTokH * kTokW, kTokW};
      } else {
        o = t[0] * kTokD * plane + t[1] * kTokH * row + t[2] * kTokW;
        r = Rows{plane, row};
      }
      if (type == ItemType::u8)
        gather_u8_any(base, ss, static_cast<std::uint8_t*>(out) + o, r, avx2);
      else
        gather_f32(base, ss, static_cast<float*>(out) + o, r, avx2);
    }
  });
}

}  // namespace neurovfm
