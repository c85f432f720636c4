// A small std::thread parallel-for. No OpenMP: it must survive fork() in
// DataLoader workers and keep wheels free of runtime libraries.
#pragma once

#include <cstddef>
#include <functional>

namespace neurovfm {

// Calls fn(begin, end) on disjoint blocks covering [0, n). Blocks are handed out
// from an atomic counter; with threads <= 1 or a single block everything runs on
// the caller. The first exception thrown by any block is rethrown on the caller
// after all workers have stopped. Each index is processed exactly once, so a
// kernel whose blocks own their output gives identical bytes for any thread count.
void parallel_for(std::size_t n, int threads, std::size_t grain,
                  const std::function<void(std::size_t, std::size_t)>& fn);

// Number of hardware threads (at least 1).
int hardware_threads();

}  // namespace neurovfm
