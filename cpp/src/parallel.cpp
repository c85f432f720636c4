#include "neurovfm/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace neurovfm {

int hardware_threads() {
  unsigned h = std::thread::hardware_concurrency();
  return h == 0 ? 1 : static_cast<int>(h);
}

void parallel_for(std::size_t n, int threads, std::size_t grain,
                  const std::function<void(std::size_t, std::size_t)>& fn) {
  if (n == 0) return;
  if (grain == 0) grain = 1;
  const std::size_t blocks = (n + grain - 1) / grain;
  const std::size_t nthreads =
      std::min<std::size_t>(blocks, static_cast<std::size_t>(std::max(threads, 1)));
  if (nthreads <= 1) {
    fn(0, n);
    return;
  }
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&]() {
    while (!failed.load(std::memory_order_relaxed)) {
      const std::size_t b = next.fetch_add(1, std::memory_order_relaxed);
      if (b >= blocks) break;
      const std::size_t begin = b * grain;
      const std::size_t end = std::min(n, begin + grain);
      try {
        fn(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        failed.store(true, std::memory_order_relaxed);
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(nthreads - 1);
  try {
    for (std::size_t t = 1; t < nthreads; ++t) pool.emplace_back(worker);
  } catch (...) {
    // Could not start a thread: the caller still does all the work below.
  }
  worker();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace neurovfm
