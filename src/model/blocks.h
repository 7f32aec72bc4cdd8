// The forward pass as block functions over explicit activations, shared by inference
// (Session: keys and values through the KV cache) and training (train/: the batch's own keys
// and values, with every activation the backward needs saved). Reads top to bottom:
//
//   EmbedRows -> for each layer: AttentionBlock, FeedForwardBlock -> FinalNorm -> heads
//
// Shapes: N rows (tokens) in flight, D hidden, H heads, KVH key/value heads, Dh head dim,
// F feed-forward, V vocabulary.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/model.h"

namespace starling {

// Where attention finds the keys and values a row attends to.
class KeyValueSource {
 public:
  virtual ~KeyValueSource() = default;
  // Block `layer`'s new keys (post-RoPE) and values of every row, k and v [N, KVH * Dh]; valid
  // until the block ends. A cache stores them; a batch attends to them directly.
  virtual void Append(int32_t layer, const float* k, const float* v) = 0;
  // AttentionGroup for row `row`: the `group` query heads q[group, Dh] of key/value head
  // `kv_head`, over the positions the row sees; out[group, Dh]; scores: scratch
  // [group, max_span()]; lse: null or [group] (training saves it).
  virtual void Attend(int32_t layer, int64_t row, int64_t kv_head, const float* q, int64_t group,
                      float* scores, float* out, float* lse) const = 0;
  // The most positions any row attends to (sizes the scores scratch).
  virtual int64_t max_span() const = 0;
};

// Rows that are whole sequences laid end to end (training, scoring): sequence s has lengths[s]
// rows, attending causally (and within Mistral's sliding window) to its own rows' keys and
// values, which it reads from the block's k/v, float32.
//
// A sequence may continue an earlier one (prefixes[s] = that sequence's index; -1 or an empty
// `prefixes`: none): its rows then sit at positions P.. (P the prefix's length) and see the
// prefix's rows before their own, as if the prefix were written in front of each. K answers to
// one prompt share the prompt's rows this way: the prompt's forward is computed once and its
// gradient gathers the K answers' contributions. A prefix has no prefix of its own, and the
// sequences continuing it follow it directly (a root and its continuations are one block of
// rows, a "tree"). A row with a prefix attends in two parts, prefix then its own rows, merged
// through their log-sum-exps (agrees with one pass to rounding); a row without one takes the
// single pass of before, bit for bit.
class SequenceKeyValues final : public KeyValueSource {
 public:
  SequenceKeyValues(const ModelConfig& c, std::span<const int64_t> lengths,
                    std::span<const int64_t> prefixes = {});
  void Append(int32_t layer, const float* k, const float* v) override;
  void Attend(int32_t layer, int64_t row, int64_t kv_head, const float* q, int64_t group,
              float* scores, float* out, float* lse) const override;
  int64_t max_span() const override { return max_span_; }
  int64_t rows() const { return static_cast<int64_t>(start_.size()); }
  // Row r's position (RoPE) and the rows it sees: its prefix's rows
  // [prefix_start(r), prefix_start(r) + prefix_length(r)) at positions 0..P-1, then its own
  // sequence's from sequence_start(r) at positions P.., all from position first_visible(r)
  // (0, or pos - window + 1) to its own.
  int64_t position(int64_t r) const { return positions_[r]; }
  int64_t sequence_start(int64_t r) const { return start_[r]; }
  int64_t prefix_start(int64_t r) const { return prefix_start_[r]; }
  int64_t prefix_length(int64_t r) const { return prefix_length_[r]; }
  int64_t first_visible(int64_t r) const;
  const std::vector<int64_t>& positions() const { return positions_; }
  // The first row of each tree (a sequence without a prefix and those continuing it), in order.
  const std::vector<int64_t>& tree_starts() const { return tree_starts_; }

 private:
  int64_t kv_dim_, head_dim_, window_, max_span_ = 0;
  std::vector<int64_t> start_;          // [N] first row of each row's own sequence
  std::vector<int64_t> prefix_start_;   // [N] first row of its prefix (its own start if none)
  std::vector<int64_t> prefix_length_;  // [N] 0 if none
  std::vector<int64_t> positions_;      // [N]
  std::vector<int64_t> tree_starts_;
  const float* k_ = nullptr;
  const float* v_ = nullptr;
};

// What one decoder block's backward needs, saved by its forward (N rows).
struct BlockActivations {
  std::vector<float> x_attn;     // [N, D] input of the attention block (its norm's input)
  std::vector<float> rstd_attn;  // [N]
  std::vector<float> xn_attn;    // [N, D] normed
  std::vector<float> q;          // [N, H * Dh] after RoPE
  std::vector<float> k, v;       // [N, KVH * Dh] (k after RoPE)
  std::vector<float> attn;       // [N, H * Dh] attention output (input of Wo)
  std::vector<float> lse;        // [N, H] log-sum-exp of each head's scores
  std::vector<float> x_ffn;      // [N, D] input of the feed-forward block
  std::vector<float> rstd_ffn;   // [N]
  std::vector<float> xn_ffn;     // [N, D]
  std::vector<float> gate, up;   // [N, F] before SwiGLU
  std::vector<float> act;        // [N, F] silu(gate) * up (input of W_down)
  void Resize(const ModelConfig& c, int64_t n);
  uint64_t bytes() const;
};

// Everything a training forward saves: blocks from `first_saved` up (blocks below the lowest
// trainable one need no backward), and the final norm's input, rstd and output.
struct ForwardRecord {
  int32_t first_saved = 0;
  // Recompute instead of saving: blocks keep only their input x_attn, and the backward runs
  // each block's forward again just before its backward (memory: one block's activations
  // instead of every block's, for about a third more compute).
  bool recompute = false;
  std::vector<BlockActivations> blocks;  // [L], empty below first_saved
  std::vector<float> x_final;            // [N, D]
  std::vector<float> rstd_final;         // [N]
  std::vector<float> hidden;             // [N, D] the heads' input
  uint64_t bytes() const;
};

// x[N, D] = embedding rows of tokens[N].
void EmbedRows(const Model& m, std::span<const int32_t> tokens, float* x);

// x[N, D] += Wo . attention(rope(Wq . norm(x)), rope(Wk . norm(x)), Wv . norm(x)), rows at
// RoPE positions[N], keys and values through `kv`. `save`: null (inference) or the block's
// record, whose buffers then serve as the working buffers (nothing is copied twice).
void AttentionBlock(const Model& m, int32_t layer, std::span<const int64_t> positions,
                    KeyValueSource& kv, ForwardScratch& s, float* x, BlockActivations* save);

// x[N, D] += W_down . (silu(W_gate . norm(x)) * (W_up . norm(x))).
void FeedForwardBlock(const Model& m, int32_t layer, int64_t n, ForwardScratch& s, float* x,
                      BlockActivations* save);

// The decoder over N rows: embed, every block, leaving the residual stream in s.x [N, D]
// (before the final norm). `record`: null, or where a training forward saves its activations.
void RunDecoder(const Model& m, std::span<const int32_t> tokens, std::span<const int64_t> positions,
                KeyValueSource& kv, ForwardScratch& s, ForwardRecord* record);

// The blocks from `first_layer` up over s.x [N, D], which holds that block's input (RunDecoder
// after EmbedRows is RunBlocks from 0). A policy and its reference that share their lower
// blocks (trlx's "hydra") run those once: the reference continues from the policy's saved input
// of its first own block. `record` as RunDecoder's (its first_saved >= first_layer).
void RunBlocks(const Model& m, int32_t first_layer, int64_t n, std::span<const int64_t> positions,
               KeyValueSource& kv, ForwardScratch& s, ForwardRecord* record);

// out[rows, D] = the final norm of x[rows, D] (the heads' input); returns nothing, saves the
// rstd into rstd[rows] when not null.
void FinalNorm(const Model& m, const float* x, int64_t rows, float* out, float* rstd);

// ---- Backward ----------------------------------------------------------------------------
// Each block's backward sits under its forward's declaration's twin here and in blocks.cpp.
// Weights read by a backward must be float32 rows (a trainer's parameters); gradients are
// accumulated (+=) in a fixed order, so they do not depend on the thread count.

// Where one block's weight gradients go, each shaped as its weight; null: frozen (its weight
// gradient is not computed; the gradient still flows through it to the block's input).
struct BlockGrads {
  float* attn_norm = nullptr;  // [D]
  float* wq = nullptr;         // [H * Dh, D]
  float* wk = nullptr;         // [KVH * Dh, D]
  float* wv = nullptr;         // [KVH * Dh, D]
  float* wo = nullptr;         // [D, H * Dh]
  float* ffn_norm = nullptr;   // [D]
  float* gate = nullptr;       // [F, D]
  float* up = nullptr;         // [F, D]
  float* down = nullptr;       // [D, F]
};

struct ModelGrads {
  float* embedding = nullptr;      // [V, D]
  float* final_norm = nullptr;     // [D]
  std::vector<BlockGrads> layers;  // [L]
  // The lowest block the backward reaches (blocks below it get no backward at all), and
  // whether the embedding rows get the input gradient (only when that block is 0).
  int32_t lowest_layer = 0;
  // Called by DecoderBackward as soon as block `layer` has added its gradients (data
  // parallelism starts summing them over ranks while the blocks below run); may be empty.
  std::function<void(int32_t layer)> layer_done;
};

// Working memory of the backward, sized on first use and kept (N rows).
struct BackwardScratch {
  std::vector<float> dxn, dattn, dq, dk, dv, dgate, dup, dact, scores;
  void Ensure(const ModelConfig& c, int64_t n, int64_t max_span);
};

// dx[N, D]: on entry d loss / d (block output), on return d loss / d (block input).
void FeedForwardBlockBackward(const Model& m, int32_t layer, const BlockActivations& a, int64_t n,
                              BackwardScratch& s, float* dx, const BlockGrads& g);
void AttentionBlockBackward(const Model& m, int32_t layer, const SequenceKeyValues& kv,
                            const BlockActivations& a, BackwardScratch& s, float* dx,
                            const BlockGrads& g);

// The backward of RunDecoder + FinalNorm over whole sequences: from dhidden[N, D] (d loss / d
// the heads' input) through the final norm and the blocks from the top down to
// g.lowest_layer, then into the embedding rows when g.lowest_layer == 0 and g.embedding is
// set. dx: [N, D] working memory (ends as d loss / d (the lowest block's input)).
// With record.recompute, each block's activations are recomputed into `recomputed` (using
// `fs` as forward scratch) from its saved input.
void DecoderBackward(const Model& m, std::span<const int32_t> tokens, SequenceKeyValues& kv,
                     const ForwardRecord& record, const float* dhidden, const ModelGrads& g,
                     BackwardScratch& s, std::vector<float>& dx, ForwardScratch& fs,
                     BlockActivations& recomputed);

}  // namespace starling
