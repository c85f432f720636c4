#include "neurovfm/concat.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "neurovfm/parallel.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define NEUROVFM_X86_64_STREAM 1
#endif

namespace neurovfm {

namespace {

// Output bytes per parallel_for block.
constexpr std::size_t kBlockBytes = std::size_t(1) << 20;

using CopyFn = void (*)(std::uint8_t*, const std::uint8_t*, std::size_t);

void copy_plain(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  if (n) std::memcpy(dst, src, n);
}

#ifdef NEUROVFM_X86_64_STREAM
// SSE2 (every x86-64 CPU): 16-byte non-temporal stores; the unaligned head and
// the tail by memcpy.
void copy_stream_sse2(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  std::size_t head = (16 - (reinterpret_cast<std::uintptr_t>(dst) & 15)) & 15;
  head = std::min(head, n);
  copy_plain(dst, src, head);
  dst += head;
  src += head;
  n -= head;
  std::size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
  copy_plain(dst + i, src + i, n - i);
}
#endif

CopyFn pick_copy(bool stream) {
  if (!stream) return copy_plain;
#ifdef NEUROVFM_X86_64_STREAM
  return copy_stream_sse2;
#else
  return copy_plain;
#endif
}

// Non-temporal stores are weakly ordered: fence them before the block counts as done.
void store_fence(bool stream) {
#ifdef NEUROVFM_X86_64_STREAM
  if (stream) _mm_sfence();
#else
  (void)stream;
#endif
}

}  // namespace

void concat_rows(const RowBlock* blocks, std::size_t n_blocks, std::size_t row_bytes, std::uint8_t* out,
                 int threads) {
  if (row_bytes == 0 || n_blocks == 0) return;
  // starts[k]: first byte of block k in the output; starts[n_blocks]: the total.
  std::vector<std::size_t> starts(n_blocks + 1, 0);
  for (std::size_t k = 0; k < n_blocks; ++k)
    starts[k + 1] = starts[k] + static_cast<std::size_t>(blocks[k].rows) * row_bytes;
  const std::size_t total = starts[n_blocks];
  const bool stream = total >= kStreamBytes;
  const CopyFn copy = pick_copy(stream);
  parallel_for(total, threads, kBlockBytes, [&](std::size_t begin, std::size_t end) {
    // the block holding byte `begin` (empty blocks skipped), then on until `end`
    std::size_t k = static_cast<std::size_t>(std::upper_bound(starts.begin() + 1, starts.end(), begin) -
                                             (starts.begin() + 1));
    for (std::size_t pos = begin; pos < end && k < n_blocks; ++k) {
      const std::size_t hi = std::min(end, starts[k + 1]);
      if (hi > pos) {
        copy(out + pos, blocks[k].data + (pos - starts[k]), hi - pos);
        pos = hi;
      }
    }
    store_fence(stream);
  });
}

}  // namespace neurovfm
