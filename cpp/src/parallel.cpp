#include "neurovfm/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>
#include <cstdlib>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace neurovfm {

void* big_alloc(std::size_t bytes) {
  if (bytes == 0) bytes = 1;
#if defined(__linux__)
  constexpr std::size_t kHuge = std::size_t(2) << 20;
  if (bytes >= 2 * kHuge) {
    void* p = nullptr;
    const std::size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    if (posix_memalign(&p, kHuge, rounded) != 0 || p == nullptr) throw std::bad_alloc();
    madvise(p, rounded, MADV_HUGEPAGE);  // advisory: ignore failure
    return p;
  }
#endif
  void* p = std::malloc(bytes);
  if (!p) throw std::bad_alloc();
  return p;
}

void BigFree::operator()(void* p) const { std::free(p); }

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

namespace neurovfm {

SerialWorker::SerialWorker() : thread_([this] { run(); }) {}

SerialWorker::~SerialWorker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void SerialWorker::run() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stop requested and nothing left
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    std::exception_ptr err;
    if (!error_) {  // after a failure the remaining jobs are skipped
      try {
        job();
      } catch (...) {
        err = std::current_exception();
      }
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (err && !error_) error_ = err;
      ++done_;
    }
    cv_.notify_all();
  }
}

std::size_t SerialWorker::submit(std::function<void()> job) {
  std::size_t seq;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back(std::move(job));
    seq = ++submitted_;
  }
  cv_.notify_all();
  return seq;
}

void SerialWorker::wait(std::size_t seq) {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [&] { return done_ >= seq; });
  if (error_) std::rethrow_exception(error_);
}

void SerialWorker::wait_all() {
  std::size_t seq;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    seq = submitted_;
  }
  wait(seq);
}

}  // namespace neurovfm
