// A fixed pool of worker threads for data-parallel loops. ParallelFor hands out grains of
// [0, n) to the caller's thread and the workers, each taking the next as it finishes one, and
// returns when all are done. No allocation per call: the task is passed by reference.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace starling {

class ThreadPool {
 public:
  // `threads` <= 0 means one per core (std::thread::hardware_concurrency()).
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end, thread_index) over [0, n) in pieces whose boundaries are multiples of
  // `grain` (one grain each, or all of [0, n) when one thread suffices), on up to size()
  // threads that take the next grain as they finish one, so that a thread slowed down (by the
  // memory system, another process) does not hold the others at the end. Which thread runs a grain
  // varies from call to call: fn must not make results depend on it (per-thread scratch is fine).
  // Calls from several threads take turns (e.g. a server's engine thread and a reward request); fn
  // must not call ParallelFor on the same pool.
  template <typename Fn>
  void ParallelFor(int64_t n, int64_t grain, Fn&& fn) {
    Run(n, grain, &Invoke<Fn>, &fn);
  }

  // An exception thrown by fn on any thread stops the grains not yet taken and is rethrown
  // here, on the caller's thread, once every thread has stopped (the first one, if several).
  //
  // The process-wide pool used by the kernels; SetGlobalThreads must be called before first
  // use to change its size (e.g. from the CLI's -t).
  static ThreadPool& Global();
  static void SetGlobalThreads(int threads);

 private:
  using Task = void (*)(void* context, int64_t begin, int64_t end, int thread);
  template <typename Fn>
  static void Invoke(void* context, int64_t begin, int64_t end, int thread) {
    (*static_cast<Fn*>(context))(begin, end, thread);
  }
  void Run(int64_t n, int64_t grain, Task task, void* context);
  void WorkerLoop(int index);
  void RunGrains(int thread);
  void StopWorkers();  // joins every started worker

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one job at a time
  std::mutex mutex_;
  std::condition_variable start_;
  std::condition_variable done_;
  uint64_t generation_ = 0;
  // Published copies of generation_ and the count of parts still running: workers and the
  // caller spin on them briefly before sleeping on the condition variables, because a futex
  // sleep and wake-up costs ~25 us per call here, paid by every matmul of every token.
  std::atomic<uint64_t> published_{0};
  std::atomic<int> pending_{0};
  bool stop_ = false;
  int spin_iterations_ = 0;  // 0 when there are more threads than cores: spinning would steal
  // The current job.
  Task task_ = nullptr;
  void* context_ = nullptr;
  int64_t n_ = 0;
  int64_t grain_ = 1;
  int parts_ = 0;
  std::atomic<int64_t> next_grain_{0};
  std::exception_ptr error_;  // the current job's first exception, under mutex_
};

}  // namespace starling
