#include "pool.h"

#include <chrono>
#include <cstdlib>
#include <immintrin.h>

namespace exo {

Pool& Pool::get() {
  static Pool pool;
  return pool;
}

Pool::Pool() {
  if (const char* spin = std::getenv("EXO_KERNEL_SPIN_US")) spin_us_ = std::atoi(spin);
}

Pool::~Pool() { stop_workers(); }

void Pool::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(wake_mutex_);
    stopping_ = true;
    generation_.store(((generation_.load() >> 8) + 1) << 8);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  stopping_ = false;
}

void Pool::set_threads(int n) {
  std::lock_guard<std::mutex> call(call_mutex_);
  if (n < 1) n = 1;
  if (n == threads()) return;
  stop_workers();
  // The generation a worker starts from is read here, not by the new thread: a thread that starts late (a
  // loaded machine) would otherwise take the first call's generation as already seen, never run its task, and
  // leave the caller spinning on it (seen: a benchmark hung for minutes).
  const uint64_t start = generation_.load();
  for (int i = 0; i < n - 1; ++i) workers_.emplace_back(&Pool::worker, this, i, start);
}

void Pool::run(int n_tasks, const std::function<void(int)>& fn) {
  std::unique_lock<std::mutex> call(call_mutex_, std::try_to_lock);
  if (!call.owns_lock() || n_tasks <= 1 || workers_.empty()) {
    for (int i = 0; i < n_tasks; ++i) fn(i);
    return;
  }
  if (n_tasks > threads()) n_tasks = threads();
  fn_ = &fn;
  pending_.store(n_tasks - 1);
  {
    // The word a worker reads carries the call's task count, so a worker never pairs one call's count
    // with another's tasks.
    std::lock_guard<std::mutex> lock(wake_mutex_);
    generation_.store(((generation_.load() >> 8) + 1) << 8 | (uint64_t)n_tasks, std::memory_order_release);
  }
  wake_.notify_all();
  fn(0);
  while (pending_.load(std::memory_order_acquire) > 0) _mm_pause();
}

void Pool::worker(int index, uint64_t seen) {
  while (true) {
    const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
    while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < spin_until) {
      for (int i = 0; i < 64; ++i) _mm_pause();
    }
    if (generation_.load() == seen) {
      std::unique_lock<std::mutex> lock(wake_mutex_);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stopping_) return;
    if (index + 1 < (int)(seen & 0xFF)) {
      (*fn_)(index + 1);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }
}

} // namespace exo
