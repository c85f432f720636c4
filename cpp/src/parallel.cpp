#include "neurovfm/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace neurovfm {

namespace {

// Large buffers freed recently, kept for reuse. Touching fresh memory is slow
// (a page fault per page, and on virtual machines that hand freed memory back
// to the host, far slower); volumes of one dataset have similar sizes, so the
// next image reuses the last one's buffers. Bounded: at most kKeep buffers and
// kKeepBytes in all; neurovfm::release_cached_buffers() empties it.
constexpr std::size_t kKeep = 6;
constexpr std::size_t kKeepBytes = std::size_t(768) << 20;
constexpr std::size_t kHuge = std::size_t(2) << 20;

struct Block {
  void* p;
  std::size_t bytes;
};

std::mutex g_cache_mutex;
std::vector<Block> g_cache;  // most recently freed last
std::mutex g_sizes_mutex;
std::vector<Block> g_live;  // sizes of big blocks handed out

std::size_t cached_bytes() {
  std::size_t t = 0;
  for (const auto& b : g_cache) t += b.bytes;
  return t;
}

}  // namespace

void release_cached_buffers() {
  std::vector<Block> drop;
  {
    std::lock_guard<std::mutex> lock(g_cache_mutex);
    drop.swap(g_cache);
  }
  for (auto& b : drop) std::free(b.p);
}

void* big_alloc(std::size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes < 2 * kHuge) {
    void* p = std::malloc(bytes);
    if (!p) throw std::bad_alloc();
    return p;
  }
  const std::size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p = nullptr;
  {
    // The smallest cached block that fits and wastes at most half of itself.
    std::lock_guard<std::mutex> lock(g_cache_mutex);
    std::size_t best = g_cache.size();
    for (std::size_t i = 0; i < g_cache.size(); ++i)
      if (g_cache[i].bytes >= rounded && g_cache[i].bytes <= 2 * rounded &&
          (best == g_cache.size() || g_cache[i].bytes < g_cache[best].bytes))
        best = i;
    if (best < g_cache.size()) {
      p = g_cache[best].p;
      const std::size_t got = g_cache[best].bytes;
      g_cache.erase(g_cache.begin() + static_cast<std::ptrdiff_t>(best));
      std::lock_guard<std::mutex> lk(g_sizes_mutex);
      g_live.push_back({p, got});
      return p;
    }
  }
#if defined(__linux__)
  if (posix_memalign(&p, kHuge, rounded) != 0 || p == nullptr) throw std::bad_alloc();
  madvise(p, rounded, MADV_HUGEPAGE);  // advisory: ignore failure
#else
  p = std::malloc(rounded);
  if (!p) throw std::bad_alloc();
#endif
  std::lock_guard<std::mutex> lk(g_sizes_mutex);
  g_live.push_back({p, rounded});
  return p;
}

void* plain_alloc(std::size_t bytes) {
  void* p = std::malloc(bytes == 0 ? 1 : bytes);
  if (!p) throw std::bad_alloc();
  return p;  // not in g_live: BigFree hands it straight back to free()
}

void BigFree::operator()(void* p) const {
  if (p == nullptr) return;
  std::size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lk(g_sizes_mutex);
    for (std::size_t i = 0; i < g_live.size(); ++i)
      if (g_live[i].p == p) {
        bytes = g_live[i].bytes;
        g_live[i] = g_live.back();
        g_live.pop_back();
        break;
      }
  }
  if (bytes == 0 || bytes > kKeepBytes) {
    std::free(p);
    return;
  }
  std::vector<Block> drop;
  {
    std::lock_guard<std::mutex> lock(g_cache_mutex);
    g_cache.push_back({p, bytes});
    while (g_cache.size() > kKeep || cached_bytes() > kKeepBytes) {
      drop.push_back(g_cache.front());
      g_cache.erase(g_cache.begin());
    }
  }
  for (auto& b : drop) std::free(b.p);
}

int hardware_threads() {
  unsigned h = std::thread::hardware_concurrency();
  return h == 0 ? 1 : static_cast<int>(h);
}

int max_threads() { return std::max(64, 4 * hardware_threads()); }

int clamp_threads(int threads) { return std::clamp(threads, 1, max_threads()); }

std::size_t physical_memory() {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) return static_cast<std::size_t>(pages) * static_cast<std::size_t>(page);
#endif
  return std::size_t(1) << 40;
}

namespace {

// A process-wide pool of worker threads, started on first use and reused by
// every parallel_for (starting threads per call costs tens of microseconds,
// as much as a small kernel). After fork() the child gets a fresh, empty pool:
// the parent's threads do not exist there (DataLoader workers fork).
class Pool {
 public:
  // Runs job(worker_index) on `extra` pool threads and returns at once.
  // The caller waits with wait().
  void run(std::size_t extra, const std::function<void()>* job) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (workers_.size() < extra) {
      try {
        workers_.emplace_back([this, id = workers_.size()] { loop(id); });
      } catch (...) {
        break;  // could not start a thread: fewer helpers
      }
    }
    job_ = job;
    wanted_ = std::min(extra, workers_.size());
    taken_ = 0;
    finished_ = 0;
    ++generation_;
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    done_cv_.wait(lock, [this] { return finished_ == wanted_; });
    job_ = nullptr;
  }
  std::mutex& call_mutex() { return call_mutex_; }

 private:
  void loop(std::size_t) {
    std::size_t seen = 0;
    for (;;) {
      const std::function<void()>* job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return generation_ != seen && taken_ < wanted_; });
        seen = generation_;
        ++taken_;
        job = job_;
      }
      (*job)();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        ++finished_;
      }
      done_cv_.notify_all();
    }
  }
  std::mutex call_mutex_;  // one parallel_for at a time uses the pool
  std::mutex mutex_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void()>* job_ = nullptr;
  std::size_t wanted_ = 0, taken_ = 0, finished_ = 0, generation_ = 0;
};

Pool* g_pool = nullptr;
std::once_flag g_atfork_once;
std::mutex g_pool_init;

void forget_pool_in_child() {
  // The threads are gone in the child; leak the old pool (its mutexes may be
  // in any state) and start afresh on next use.
  g_pool = nullptr;
  new (&g_pool_init) std::mutex();
}

Pool& pool() {
#if defined(__unix__) || defined(__APPLE__)
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, forget_pool_in_child); });
#endif
  if (g_pool == nullptr) g_pool = new Pool();  // never destroyed: workers live until exit
  return *g_pool;
}

}  // namespace

void parallel_for(std::size_t n, int threads, std::size_t grain,
                  const std::function<void(std::size_t, std::size_t)>& fn) {
  if (n == 0) return;
  if (grain == 0) grain = 1;
  const std::size_t blocks = (n + grain - 1) / grain;
  const std::size_t nthreads =
      std::min<std::size_t>(blocks, static_cast<std::size_t>(clamp_threads(threads)));
  if (nthreads <= 1) {
    fn(0, n);
    return;
  }
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  const std::function<void()> worker = [&]() {
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
  Pool* p;
  {
    std::lock_guard<std::mutex> lock(g_pool_init);
    p = &pool();
  }
  // Concurrent callers (e.g. several Python threads) or a nested call from a
  // pool thread would wait on each other: they run the work alone instead.
  std::unique_lock<std::mutex> busy(p->call_mutex(), std::try_to_lock);
  if (!busy.owns_lock()) {
    worker();
  } else {
    p->run(nthreads - 1, &worker);
    worker();
    p->wait();
  }
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
  if (seq > submitted_)  // would never come: waiting for it would hang
    throw std::invalid_argument("wait: job " + std::to_string(seq) + " was never submitted (last " +
                                std::to_string(submitted_) + ")");
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
