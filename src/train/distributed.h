// Data parallelism over MPI (docs/TRAINING.md, "Several processes"): the ranks of one training
// run and the gradient sum that makes them one run. Each rank holds the whole model, its
// gradients and AdamW's moments; the loop (train/loop.cpp) gives each rank a contiguous share
// of every step's micro-batches, the gradients are summed over ranks, and every rank applies
// the same AdamW step to the same values.
//
// Built with MPI when CMake finds it (STARLING_HAVE_MPI); without it, or when the process was
// not started by an MPI launcher (mpirun, srun), there is one rank and nothing here talks.
// One thread at a time calls MPI (MPI_THREAD_SERIALIZED): the main thread, or a GradientSum's
// progress thread while a gradient sum is in flight.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "train/parameters.h"

namespace starling {

// The processes of this run.
class Ranks {
 public:
  static int rank();  // 0 .. size() - 1
  static int size();
  static bool root() { return rank() == 0; }
  static bool built_with_mpi();
  // How long a collective may wait for the others before this rank stops the whole run (a
  // rank that died or hangs); MPI's launcher also stops every rank when one exits early.
  static void set_timeout(double seconds);
  // Sums x over ranks in place; every rank gets the same values. With two ranks the sum is
  // exact and order-free (a + b == b + a); with more, MPI's reduction order is unspecified.
  // `what` names the collective in a timeout's message.
  static void SumDoubles(std::span<double> x, const char* what);
  // Every rank's `mine`, in rank order (an all-gather of bytes); one rank: {mine}.
  static std::vector<std::string> Gather(const std::string& mine, const char* what);
  // This rank's contiguous share [first, last) of `count` items (balanced, in rank order).
  static std::pair<int64_t, int64_t> Share(int64_t count);
};

// Joins MPI for its lifetime when an MPI launcher started the process (and the build has
// MPI); leaves with MPI_Finalize. When an exception is leaving the scope it does not finalize:
// the process exits with the error and the launcher stops the other ranks instead of leaving
// them waiting in a collective.
class DistributedScope {
 public:
  DistributedScope();
  ~DistributedScope();
  DistributedScope(const DistributedScope&) = delete;
  DistributedScope& operator=(const DistributedScope&) = delete;

 private:
  bool joined_ = false;
  int exceptions_ = 0;
};

// The gradient sum of one optimizer step over `slots` micro-batches, of which this rank runs
// [first_slot, first_slot + own_slots) (contiguous, in order):
//   BeginStep; for each own slot: BeginSlot(last), backward, EndSlot; Finish.
// Default (`deterministic` false): the rank's slots add into the gradient buffers, and each
// block's gradients start an MPI_Iallreduce as soon as the block's backward ends in the last
// slot (the model's layer_done hook), driven by a progress thread, so the sum overlaps the
// lower blocks' backward; the embedding, final norm and heads follow in Finish. The result equals
// the one-process sum up to float32 reduction order. `deterministic`: every micro-batch's gradient
// is computed alone and the step's gradient is their pairwise sum in a fixed binary tree over the
// slots (left + right), the same bits for any number of ranks, the one-process run included; ranks
// exchange subtree sums by recursive doubling after the last backward (no overlap). Needs the rank
// count and the slots per rank to be powers of two.
class GradientSum {
 public:
  GradientSum(TrainModel& m, bool deterministic);
  ~GradientSum();
  GradientSum(const GradientSum&) = delete;
  GradientSum& operator=(const GradientSum&) = delete;

  // Checks that `slots` micro-batches per step divide among the ranks (throws a message that
  // names --accum), zeroes the gradients.
  void BeginStep(int64_t slots, int64_t step);
  int64_t first_slot() const { return first_slot_; }
  int64_t own_slots() const { return own_slots_; }
  void BeginSlot(bool last);
  void EndSlot();
  // Every rank's gradients summed into the parameters' grad buffers.
  void Finish();
  // Seconds this step spent waiting for the sum (after its own backward was done).
  double wait_seconds() const { return wait_seconds_; }
  // Bytes each rank contributed to the sum this step.
  uint64_t bytes() const { return bytes_; }

 private:
  void LayerDone(int32_t layer);
  void StartUpTo(int32_t layer);  // starts every pending bucket down to `layer`
  void Start(size_t bucket);
  void FlatPush();  // deterministic: the slot's gradient onto the pairwise-sum stack
  TrainModel& m_;
  bool deterministic_;
  int64_t first_slot_ = 0, own_slots_ = 1, step_ = 0;
  bool armed_ = false;
  // Buckets in the order every rank starts them: blocks from the top down, then the rest.
  std::vector<std::vector<Parameter*>> buckets_;
  std::vector<int32_t> bucket_layer_;  // -1: the last bucket (not a block)
  size_t next_ = 0;                    // the next bucket to start
  struct Channel;                      // its own communicator (distributed.cpp)
  std::unique_ptr<Channel> channel_;
  // deterministic: partial sums and the number of slots each covers
  std::vector<std::vector<float>> stack_;
  std::vector<int64_t> stack_slots_;
  double wait_seconds_ = 0.0;
  uint64_t bytes_ = 0;
};

}  // namespace starling
