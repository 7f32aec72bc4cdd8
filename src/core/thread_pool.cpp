#include "core/thread_pool.h"

#include <algorithm>
#include <memory>
#include <system_error>
#include <utility>

#include "core/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace starling {
namespace {
int g_global_threads = 0;

// How long a waiting thread polls before it sleeps: ~50-100 us, longer than the gap between
// two matmuls of a decode step, far shorter than a pause between requests.
constexpr int kSpinIterations = 1 << 12;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Polls `done` up to `iterations` times; true as soon as it holds.
template <typename Done>
bool SpinUntil(int iterations, Done&& done) {
  for (int i = 0; i < iterations; ++i) {
    if (done()) return true;
    CpuRelax();
  }
  return done();
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (threads <= 0) threads = cores;
  spin_iterations_ = threads <= cores ? kSpinIterations : 0;
  try {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
  } catch (const std::system_error& e) {
    // E.g. -t 1024 under a memory limit. The destructor will not run: stop the workers that did
    // start here (a joinable std::thread left behind would call std::terminate).
    StopWorkers();
    Fail("cannot start ", threads, " compute threads (-t): ", e.what(), " after ",
         workers_.size() + 1);
  }
}

ThreadPool::~ThreadPool() {
  StopWorkers();
}

void ThreadPool::StopWorkers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  start_.notify_all();
  for (std::thread& t : workers_) t.join();
}

ThreadPool& ThreadPool::Global() {
  static ThreadPool pool(g_global_threads);
  return pool;
}

void ThreadPool::SetGlobalThreads(int threads) {
  g_global_threads = threads;
}

void ThreadPool::RunGrains(int thread) {
  const int64_t grains = (n_ + grain_ - 1) / grain_;
  try {
    for (int64_t g = next_grain_.fetch_add(1, std::memory_order_relaxed); g < grains;
         g = next_grain_.fetch_add(1, std::memory_order_relaxed)) {
      task_(context_, g * grain_, std::min(n_, (g + 1) * grain_), thread);
    }
  } catch (...) {
    // Escaping a worker would end the process; escaping the caller's part early would leave
    // the workers running on its stack. Keep the first, skip the grains left, let Run rethrow.
    next_grain_.store(grains, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_ == nullptr) error_ = std::current_exception();
  }
}

void ThreadPool::Run(int64_t n, int64_t grain, Task task, void* context) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t grains = (n + grain - 1) / grain;
  const int parts = static_cast<int>(std::min<int64_t>(size(), grains));
  if (parts <= 1) {
    task(context, 0, n, 0);
    return;
  }
  const std::lock_guard<std::mutex> one_job_at_a_time(run_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = task;
    context_ = context;
    n_ = n;
    grain_ = grain;
    parts_ = parts;
    next_grain_.store(0, std::memory_order_relaxed);
    pending_.store(parts - 1, std::memory_order_relaxed);
    ++generation_;
    published_.store(generation_, std::memory_order_release);
  }
  start_.notify_all();
  RunGrains(0);
  const auto finished = [this] { return pending_.load(std::memory_order_acquire) == 0; };
  if (!SpinUntil(spin_iterations_, finished)) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, finished);
  }
  // Every part has ended, and pending_ was read with acquire after each part's release: no
  // thread writes error_ now.
  if (error_ != nullptr) std::rethrow_exception(std::exchange(error_, nullptr));
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  while (true) {
    SpinUntil(spin_iterations_, [&] { return published_.load(std::memory_order_acquire) != seen; });
    std::unique_lock<std::mutex> lock(mutex_);
    start_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    if (index >= parts_) continue;  // this job has fewer parts than threads
    lock.unlock();
    RunGrains(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      // Under the mutex, so a caller that checked pending_ and is about to sleep is woken.
      std::lock_guard<std::mutex> guard(mutex_);
      done_.notify_one();
    }
  }
}

}  // namespace starling
