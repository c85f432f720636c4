// A small std::thread parallel-for. No OpenMP: it must survive fork() in
// DataLoader workers and keep wheels free of runtime libraries.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

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

// The most threads one parallel_for uses, whatever the caller asks for (the pool
// keeps its threads, so an absurd count must not start thousands of them).
// Results do not depend on the thread count, so the cap changes no output.
int max_threads();
// `threads` clamped to [1, max_threads()]: what a kernel sizes its work for.
int clamp_threads(int threads);

// Bytes of physical memory (an upper bound on any sane allocation); a large
// constant where the system does not tell.
std::size_t physical_memory();

// Uninitialised storage for large intermediate volumes: 2 MiB aligned and
// marked for transparent huge pages on Linux (far fewer page faults and TLB
// misses on first touch); plain malloc for small sizes. Freed large buffers
// are kept (bounded) and reused by the next allocation of a similar size.
struct BigFree {
  void operator()(void* p) const;
};
template <typename T>
using BigBuffer = std::unique_ptr<T[], BigFree>;
void* big_alloc(std::size_t bytes);
// Frees the large buffers kept for reuse (see big_alloc).
void release_cached_buffers();
// Plain malloc storage (4 KiB pages, no huge-page advice, never pooled): given back
// to the system as soon as it is freed. For a buffer as large as a scan's
// intermediate that must not stay resident after its pass (BigFree frees it).
void* plain_alloc(std::size_t bytes);
template <typename T>
BigBuffer<T> make_big(std::size_t n) {
  return BigBuffer<T>(static_cast<T*>(big_alloc(n * sizeof(T))));
}
template <typename T>
BigBuffer<T> make_plain(std::size_t n) {
  return BigBuffer<T>(static_cast<T*>(plain_alloc(n * sizeof(T))));
}

}  // namespace neurovfm

#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

namespace neurovfm {

// One background thread running submitted jobs in order (used to overlap
// decoding a file with processing what is already decoded). submit() returns a
// sequence number; wait(seq) blocks until that job and all before it are done
// and rethrows the first job failure. The destructor drains the queue.
class SerialWorker {
 public:
  SerialWorker();
  ~SerialWorker();
  SerialWorker(const SerialWorker&) = delete;
  SerialWorker& operator=(const SerialWorker&) = delete;

  std::size_t submit(std::function<void()> job);
  void wait(std::size_t seq);
  void wait_all();

 private:
  void run();
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::size_t submitted_ = 0, done_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace neurovfm
