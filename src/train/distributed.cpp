#include "train/distributed.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>

#include "core/error.h"

#ifdef STARLING_HAVE_MPI
// MPI's C interface only (Open MPI's and MPICH's deprecated C++ bindings stay out).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace starling {
namespace {

int g_rank = 0, g_size = 1;
double g_timeout = 900.0;

// The largest count one MPI call takes (an int), rounded down to a whole number of floats.
constexpr int64_t kMaxCount = int64_t{1} << 30;

bool IsPowerOfTwo(int64_t x) {
  return x > 0 && (x & (x - 1)) == 0;
}

#ifdef STARLING_HAVE_MPI
void Check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  Fail("rank ", g_rank, " of ", g_size, ": MPI failed in ", what, ": ",
       std::string(text, static_cast<size_t>(std::max(0, length))));
}

// The other ranks are dead or stuck: waiting longer would hang forever, so the whole job stops.
[[noreturn]] void StopAfterTimeout(const char* what) {
  std::fprintf(stderr,
               "starling: error: rank %d of %d: no answer from the other ranks for %.0f s in %s: "
               "a rank died or hangs; stopping every rank (the last checkpoint is intact; "
               "--rank-timeout sets the wait)\n",
               g_rank, g_size, g_timeout, what);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 3);
  std::abort();  // MPI_Abort does not return
}

// Waits for every request, driving MPI's progress; past the timeout the whole run stops: the
// other ranks are dead or stuck, and waiting longer would hang forever.
double WaitAll(std::vector<MPI_Request>& requests, const char* what) {
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::duration<double>(g_timeout);
  int done = 0;
  for (int64_t spins = 0;; ++spins) {
    Check(
        MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE),
        what);
    if (done != 0) break;
    if (std::chrono::steady_clock::now() > deadline) StopAfterTimeout(what);
    if (spins < 1000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  requests.clear();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
#endif

#ifdef STARLING_HAVE_MPI
// Moves the gradient all-reduce along while the backward runs. MPI advances a non-blocking
// collective only inside MPI calls (Open MPI has no progress thread of its own for them), and
// the compute threads make none; this thread starts each bucket's MPI_Iallreduce and tests
// them every 50 us until they are done. One per process, for every GradientSum: it is the only
// thread in MPI while a sum is in flight, and the main thread calls MPI only when it is idle
// (MPI_THREAD_SERIALIZED).
class ProgressThread {
 public:
  ProgressThread() : thread_([this] { Run(); }) {}
  ~ProgressThread() {
    {
      const std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // Queues the sum of data[0, count) over `comm`'s ranks; sums start in queue order.
  void Start(float* data, int64_t count, MPI_Comm comm) {
    {
      const std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back({data, count, comm});
      ++outstanding_;
    }
    cv_.notify_all();
  }
  // Waits until every started sum is done; returns the seconds waited.
  double Wait() {
    const auto start = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    const auto deadline = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                      std::chrono::duration<double>(g_timeout));
    while (outstanding_ > 0 && error_.empty()) {
      if (done_.wait_until(lock, deadline) == std::cv_status::timeout && outstanding_ > 0) {
        StopAfterTimeout("the gradient all-reduce");
      }
    }
    if (!error_.empty()) Fail(error_);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

 private:
  void Run() {
    std::vector<MPI_Request> in_flight;
    for (;;) {
      std::vector<Span> spans;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (in_flight.empty()) cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        spans.swap(queue_);
      }
      std::string error;
      for (const Span& span : spans) {
        MPI_Request request;
        const int rc = MPI_Iallreduce(MPI_IN_PLACE, span.data, static_cast<int>(span.count),
                                      MPI_FLOAT, MPI_SUM, span.comm, &request);
        if (rc != MPI_SUCCESS) {
          error = "MPI_Iallreduce failed";
          break;
        }
        in_flight.push_back(request);
      }
      int done = 0;
      if (error.empty() && !in_flight.empty() &&
          MPI_Testall(static_cast<int>(in_flight.size()), in_flight.data(), &done,
                      MPI_STATUSES_IGNORE) != MPI_SUCCESS) {
        error = "MPI_Testall failed";
      }
      if (!error.empty()) {
        const std::lock_guard<std::mutex> lock(mu_);
        error_ = "rank " + std::to_string(g_rank) + " of " + std::to_string(g_size) +
                 ": the gradient all-reduce: " + error;
        done_.notify_all();
        return;
      }
      if (done != 0) {
        const std::lock_guard<std::mutex> lock(mu_);
        outstanding_ -= static_cast<int64_t>(in_flight.size());
        in_flight.clear();
        if (outstanding_ == 0) done_.notify_all();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_;
  struct Span {
    float* data;
    int64_t count;
    MPI_Comm comm;
  };
  std::vector<Span> queue_;
  int64_t outstanding_ = 0;
  bool stop_ = false;
  std::string error_;
  std::thread thread_;
};

// The process's one progress thread (DistributedScope starts it with a multi-rank job and
// stops it before MPI_Finalize).
std::unique_ptr<ProgressThread> g_progress;
#endif

}  // namespace

int Ranks::rank() {
  return g_rank;
}
int Ranks::size() {
  return g_size;
}

bool Ranks::built_with_mpi() {
#ifdef STARLING_HAVE_MPI
  return true;
#else
  return false;
#endif
}

void Ranks::set_timeout(double seconds) {
  if (!(seconds > 0)) Fail("--rank-timeout must be positive, not ", seconds);
  g_timeout = seconds;
}

void Ranks::SumDoubles(std::span<double> x, const char* what) {
  if (g_size == 1 || x.empty()) return;
#ifdef STARLING_HAVE_MPI
  std::vector<MPI_Request> requests(1);
  Check(MPI_Iallreduce(MPI_IN_PLACE, x.data(), static_cast<int>(x.size()), MPI_DOUBLE, MPI_SUM,
                       MPI_COMM_WORLD, &requests[0]),
        what);
  WaitAll(requests, what);
#else
  (void)what;
#endif
}

std::vector<std::string> Ranks::Gather(const std::string& mine, const char* what) {
  if (g_size == 1) return {mine};
#ifdef STARLING_HAVE_MPI
  std::vector<long long> sizes(static_cast<size_t>(g_size));
  long long own = static_cast<long long>(mine.size());
  std::vector<MPI_Request> requests(1);
  Check(MPI_Iallgather(&own, 1, MPI_LONG_LONG, sizes.data(), 1, MPI_LONG_LONG, MPI_COMM_WORLD,
                       &requests[0]),
        what);
  WaitAll(requests, what);
  std::vector<int> counts, offsets;
  long long total = 0;
  for (const long long n : sizes) {
    if (total + n > INT_MAX) Fail(what, ": more than 2 GiB to gather over ranks");
    counts.push_back(static_cast<int>(n));
    offsets.push_back(static_cast<int>(total));
    total += n;
  }
  std::string all(static_cast<size_t>(total), '\0');
  requests.resize(1);
  Check(MPI_Iallgatherv(mine.data(), static_cast<int>(own), MPI_CHAR, all.data(), counts.data(),
                        offsets.data(), MPI_CHAR, MPI_COMM_WORLD, &requests[0]),
        what);
  WaitAll(requests, what);
  std::vector<std::string> out;
  for (size_t r = 0; r < counts.size(); ++r) {
    out.push_back(all.substr(static_cast<size_t>(offsets[r]), static_cast<size_t>(counts[r])));
  }
  return out;
#else
  (void)what;
  return {mine};
#endif
}

std::pair<int64_t, int64_t> Ranks::Share(int64_t count) {
  return {count * g_rank / g_size, count * (g_rank + 1) / g_size};
}

DistributedScope::DistributedScope() : exceptions_(std::uncaught_exceptions()) {
#ifdef STARLING_HAVE_MPI
  // Open MPI (mpirun), PMI-1/2 and PMIx launchers (srun --mpi=..., MPICH's hydra).
  const bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr ||
                        std::getenv("PMI_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
  if (!launched) return;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized != 0) return;  // a scope already joined
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS) {
    Fail("MPI_Init_thread failed: cannot join the MPI job");
  }
  joined_ = true;
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (provided < MPI_THREAD_SERIALIZED) {
    Fail("this MPI library gives thread level ", provided,
         "; starling needs MPI_THREAD_SERIALIZED (one thread in MPI at a time)");
  }
  if (g_size > 1) g_progress = std::make_unique<ProgressThread>();
#endif
}

DistributedScope::~DistributedScope() {
#ifdef STARLING_HAVE_MPI
  if (!joined_) return;
  g_progress.reset();  // stopped and joined first: no thread may be in MPI after this
  // Leaving with an error: no MPI_Finalize (it would wait for ranks that wait for us); the
  // launcher sees the early exit and stops the job.
  if (std::uncaught_exceptions() > exceptions_) return;
  MPI_Finalize();
  g_rank = 0;
  g_size = 1;
#endif
}

// A GradientSum's own communicator (a duplicate of the world's): MPI needs every rank to start
// collectives on a communicator in the same order, and each GradientSum starts its buckets in a
// fixed order, but two of them (a policy's and a separate value model's) interleave by timing.
#ifdef STARLING_HAVE_MPI
struct GradientSum::Channel {
  MPI_Comm comm = MPI_COMM_NULL;
};
#else
struct GradientSum::Channel {};
#endif

GradientSum::GradientSum(TrainModel& m, bool deterministic) : m_(m), deterministic_(deterministic) {
#ifdef STARLING_HAVE_MPI
  if (Ranks::size() > 1 && !deterministic) {
    if (!g_progress) Fail("GradientSum: no progress thread (MPI joined outside DistributedScope)");
    channel_ = std::make_unique<Channel>();
    Check(MPI_Comm_dup(MPI_COMM_WORLD, &channel_->comm), "MPI_Comm_dup");
  }
#endif
  const int32_t layers = m.config().num_layers;
  for (int32_t l = layers - 1; l >= -1; --l) {
    std::vector<Parameter*> bucket;
    for (Parameter& p : m.parameters()) {
      const int32_t layer = p.spec.layer >= 0 ? p.spec.layer : -1;
      if (layer == l && !p.grad.empty()) bucket.push_back(&p);
    }
    if (bucket.empty()) continue;
    buckets_.push_back(std::move(bucket));
    bucket_layer_.push_back(l);
  }
  m_.set_layer_done([this](int32_t layer) { LayerDone(layer); });
}

GradientSum::~GradientSum() {
  m_.set_layer_done({});
#ifdef STARLING_HAVE_MPI
  // (Leaving with an error, the job ends anyway, and a sum may still be in flight on it.)
  if (channel_ && std::uncaught_exceptions() == 0) MPI_Comm_free(&channel_->comm);
#endif
}

void GradientSum::BeginStep(int64_t slots, int64_t step) {
  const int n = Ranks::size();
  if (slots % n != 0) {
    Fail("--accum ", slots, " does not divide among ", n,
         " ranks: each rank runs accum / ranks of every step's micro-batches, so --accum must "
         "be a multiple of the rank count (the same global batch: divide --batch and multiply "
         "--accum)");
  }
  own_slots_ = slots / n;
  first_slot_ = Ranks::rank() * own_slots_;
  if (deterministic_ && n > 1 && (!IsPowerOfTwo(n) || !IsPowerOfTwo(own_slots_))) {
    Fail(
        "--deterministic-reduce sums in a binary tree: it needs a power-of-two rank count and "
        "micro-batches per rank (--accum / ranks), not ",
        n, " ranks and ", own_slots_);
  }
  step_ = step;
  armed_ = false;
  next_ = 0;
  wait_seconds_ = 0.0;
  bytes_ = 0;
  stack_.clear();
  stack_slots_.clear();
  m_.ZeroGrads();
}

void GradientSum::BeginSlot(bool last) {
  armed_ = last && !deterministic_ && Ranks::size() > 1;
  if (deterministic_) m_.ZeroGrads();  // each micro-batch's gradient alone
}

void GradientSum::EndSlot() {
  armed_ = false;
  if (deterministic_) FlatPush();
}

void GradientSum::FlatPush() {
  std::vector<float> flat;
  for (const Parameter& p : m_.parameters()) flat.insert(flat.end(), p.grad.begin(), p.grad.end());
  stack_.push_back(std::move(flat));
  stack_slots_.push_back(1);
  // Binary-counter pairwise summation: equal-sized neighbours merge, left + right.
  while (stack_.size() >= 2 && stack_slots_[stack_.size() - 1] == stack_slots_[stack_.size() - 2]) {
    std::vector<float>& left = stack_[stack_.size() - 2];
    const std::vector<float>& right = stack_.back();
    for (size_t i = 0; i < left.size(); ++i) left[i] += right[i];
    stack_slots_[stack_.size() - 2] *= 2;
    stack_.pop_back();
    stack_slots_.pop_back();
  }
}

void GradientSum::LayerDone(int32_t layer) {
  if (armed_) StartUpTo(layer);
}

void GradientSum::StartUpTo(int32_t layer) {
  while (next_ < buckets_.size() && bucket_layer_[next_] >= layer) Start(next_++);
}

void GradientSum::Start(size_t bucket) {
  for (Parameter* p : buckets_[bucket]) {
    const int64_t n = static_cast<int64_t>(p->grad.size());
    for (int64_t begin = 0; begin < n; begin += kMaxCount) {
#ifdef STARLING_HAVE_MPI
      if (channel_) {
        g_progress->Start(p->grad.data() + begin, std::min(kMaxCount, n - begin), channel_->comm);
      }
#endif
    }
    bytes_ += static_cast<uint64_t>(n) * sizeof(float);
  }
}

void GradientSum::Finish() {
  const int n = Ranks::size();
  if (!deterministic_) {
    if (n == 1) return;
    StartUpTo(INT32_MIN);  // whatever the hooks did not start, in the same order on every rank
#ifdef STARLING_HAVE_MPI
    if (channel_) wait_seconds_ += g_progress->Wait();
#endif
    return;
  }
  if (stack_.empty()) Fail("step ", step_, ": no micro-batch ran on rank ", Ranks::rank());
  std::vector<float> sum = std::move(stack_[0]);  // one-process leftovers fold left to right
  for (size_t i = 1; i < stack_.size(); ++i) {
    for (size_t j = 0; j < sum.size(); ++j) sum[j] += stack_[i][j];
  }
  stack_.clear();
  stack_slots_.clear();
#ifdef STARLING_HAVE_MPI
  // Recursive doubling: at distance s, partners swap their subtree sums and both add them;
  // a + b == b + a, so both hold the same bits, which are the one-process tree's.
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> received;
  const int64_t total = static_cast<int64_t>(sum.size());
  const int64_t chunk = std::min<int64_t>(total, int64_t{1} << 24);
  for (int s = 1; s < n; s <<= 1) {
    const int partner = Ranks::rank() ^ s;
    for (int64_t begin = 0; begin < total; begin += chunk) {
      const int count = static_cast<int>(std::min(chunk, total - begin));
      received.resize(static_cast<size_t>(count));
      std::vector<MPI_Request> r(2);
      Check(MPI_Irecv(received.data(), count, MPI_FLOAT, partner, 17, MPI_COMM_WORLD, &r[0]),
            "the deterministic gradient sum");
      Check(MPI_Isend(sum.data() + begin, count, MPI_FLOAT, partner, 17, MPI_COMM_WORLD, &r[1]),
            "the deterministic gradient sum");
      WaitAll(r, "the deterministic gradient sum");
      for (int i = 0; i < count; ++i) sum[static_cast<size_t>(begin + i)] += received[i];
    }
    bytes_ += static_cast<uint64_t>(total) * sizeof(float);
  }
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
#endif
  size_t at = 0;
  for (Parameter& p : m_.parameters()) {
    std::copy_n(sum.begin() + static_cast<std::ptrdiff_t>(at), p.grad.size(), p.grad.begin());
    at += p.grad.size();
  }
}

}  // namespace starling
