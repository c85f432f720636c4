// Row concatenation: the rows of several C-contiguous blocks (the tokens of a
// batch's items) copied into one output, in order. A plain byte copy: the output
// is the same for any thread count and instruction set.
#pragma once

#include <cstddef>
#include <cstdint>

namespace neurovfm {

// One input block: `rows` rows of the common row size, C-contiguous.
struct RowBlock {
  const std::uint8_t* data;
  std::int64_t rows;
};

// Output size from which concat_rows writes with non-temporal stores (x86-64).
constexpr std::size_t kStreamBytes = std::size_t(8) << 20;

// Writes every row of blocks[0], blocks[1], ... in order into `out` (C-contiguous,
// the sum of the blocks' rows, not overlapping any block). Outputs of kStreamBytes
// or more are written with non-temporal stores on x86-64: they bypass the cache (a
// batch is far larger than it) and need no read of the destination first, a third
// less memory traffic than a plain copy. The work is split in 1 MiB blocks of the
// output over `threads` threads (parallel_for), each byte written once.
void concat_rows(const RowBlock* blocks, std::size_t n_blocks, std::size_t row_bytes, std::uint8_t* out,
                 int threads);

}  // namespace neurovfm
