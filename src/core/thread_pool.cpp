#include "core/thread_pool.h"

#include <algorithm>
#include <memory>

namespace starling {
namespace {
int g_global_threads = 0;
}

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
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

void ThreadPool::Range(int part, int64_t* begin, int64_t* end) const {
  // Split whole grains evenly; the last part also takes the remainder.
  const int64_t grains = (n_ + grain_ - 1) / grain_;
  const int64_t first = grains * part / parts_;
  const int64_t last = grains * (part + 1) / parts_;
  *begin = std::min(n_, first * grain_);
  *end = std::min(n_, last * grain_);
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
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = task;
    context_ = context;
    n_ = n;
    grain_ = grain;
    parts_ = parts;
    pending_ = parts - 1;
    ++generation_;
  }
  start_.notify_all();
  int64_t begin, end;
  Range(0, &begin, &end);
  if (begin < end) task(context, begin, end, 0);
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [this] { return pending_ == 0; });
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  while (true) {
    std::unique_lock<std::mutex> lock(mutex_);
    start_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    if (index >= parts_) continue;  // this job has fewer parts than threads
    const Task task = task_;
    void* context = context_;
    int64_t begin, end;
    Range(index, &begin, &end);
    lock.unlock();
    if (begin < end) task(context, begin, end, index);
    lock.lock();
    if (--pending_ == 0) done_.notify_one();
  }
}

}  // namespace starling
