// A small pool of worker threads that split one kernel call's output rows with the calling thread (MLX's
// stream thread). Workers spin briefly after each call (the next matmul of a decode step is microseconds
// away) and then sleep, so an idle runner costs no CPU. One caller at a time; a second concurrent caller
// (another stream) runs its tasks inline.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace exo {

class Pool {
 public:
  static Pool& get();
  // Threads in all, the caller included (1 = no workers).
  void set_threads(int n);
  int threads() const { return (int)workers_.size() + 1; }
  void set_spin_us(int us) { spin_us_ = us; }
  // Runs fn(0..n_tasks-1), task 0 on the caller, task i on worker i-1; n_tasks <= threads().
  void run(int n_tasks, const std::function<void(int)>& fn);
  ~Pool();

 private:
  Pool();
  void stop_workers();
  void worker(int index, uint64_t seen);

  std::vector<std::thread> workers_;
  std::mutex call_mutex_, wake_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};  // (call counter << 8) | task count
  std::atomic<int> pending_{0};
  std::atomic<bool> stopping_{false};
  const std::function<void(int)>* fn_ = nullptr;
  int spin_us_ = 50;
};

} // namespace exo
