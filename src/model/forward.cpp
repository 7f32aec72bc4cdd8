#include "model/forward.h"

#include <algorithm>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/dot.h"

namespace starling {

SequenceKeyValues::SequenceKeyValues(const ModelConfig& c, std::span<const int64_t> lengths)
    : kv_dim_(int64_t{c.num_kv_heads} * c.head_dim),
      head_dim_(c.head_dim),
      window_(c.sliding_window) {
  int64_t start = 0;
  for (const int64_t length : lengths) {
    if (length < 1) Fail("a sequence of ", length, " tokens");
    for (int64_t p = 0; p < length; ++p) {
      start_.push_back(start);
      positions_.push_back(p);
    }
    start += length;
    max_span_ = std::max(max_span_, window_ > 0 ? std::min<int64_t>(length, window_) : length);
  }
}

void SequenceKeyValues::Append(int32_t /*layer*/, const float* k, const float* v) {
  k_ = k;
  v_ = v;
}

int64_t SequenceKeyValues::first_visible(int64_t r) const {
  const int64_t pos = positions_[r];
  return window_ > 0 ? std::max<int64_t>(0, pos - window_ + 1) : 0;
}

void SequenceKeyValues::Attend(int32_t /*layer*/, int64_t row, int64_t kv_head, const float* q,
                               int64_t group, float* scores, float* out, float* lse) const {
  const float* keys = k_ + start_[row] * kv_dim_ + kv_head * head_dim_;
  const float* values = v_ + start_[row] * kv_dim_ + kv_head * head_dim_;
  const auto attend = ActiveSimdLevel() != SimdLevel::kScalar ? AttentionGroupAvx2<DType::kF32>
                                                              : AttentionGroup<DType::kF32>;
  attend(q, head_dim_, group, keys, values, kv_dim_, head_dim_, first_visible(row), positions_[row],
         scores, out, head_dim_, lse);
}

void BlockActivations::Resize(const ModelConfig& c, int64_t n) {
  const auto rows = static_cast<size_t>(n);
  const size_t d = static_cast<size_t>(c.hidden_size) * rows;
  const size_t q_dim = static_cast<size_t>(c.num_heads) * c.head_dim * rows;
  const size_t kv_dim = static_cast<size_t>(c.num_kv_heads) * c.head_dim * rows;
  const size_t f = static_cast<size_t>(c.intermediate_size) * rows;
  x_attn.resize(d), rstd_attn.resize(rows), xn_attn.resize(d);
  q.resize(q_dim), k.resize(kv_dim), v.resize(kv_dim), attn.resize(q_dim);
  lse.resize(static_cast<size_t>(c.num_heads) * rows);
  x_ffn.resize(d), rstd_ffn.resize(rows), xn_ffn.resize(d);
  gate.resize(f), up.resize(f), act.resize(f);
}

uint64_t BlockActivations::bytes() const {
  uint64_t n = 0;
  for (const auto* b : {&x_attn, &rstd_attn, &xn_attn, &q, &k, &v, &attn, &lse, &x_ffn, &rstd_ffn,
                        &xn_ffn, &gate, &up, &act}) {
    n += b->size() * sizeof(float);
  }
  return n;
}

uint64_t ForwardRecord::bytes() const {
  uint64_t n = (x_final.size() + rstd_final.size() + hidden.size()) * sizeof(float);
  for (const BlockActivations& b : blocks) n += b.bytes();
  return n;
}

void EmbedRows(const Model& m, std::span<const int32_t> tokens, float* x) {
  const int64_t d = m.config().hidden_size;
  for (size_t t = 0; t < tokens.size(); ++t) ReadRow(m.embedding(), tokens[t], &x[t * d]);
}

void AttentionBlock(const Model& m, int32_t layer, std::span<const int64_t> positions,
                    KeyValueSource& kv, ForwardScratch& s, float* x, BlockActivations* save) {
  const ModelConfig& c = m.config();
  const LayerWeights& w = m.layers()[layer];
  const auto n = static_cast<int64_t>(positions.size());
  const int64_t d = c.hidden_size, hd = c.head_dim;
  const int64_t q_dim = int64_t{c.num_heads} * hd, kv_dim = int64_t{c.num_kv_heads} * hd;
  const bool interleaved = c.rope_layout == RopeLayout::kInterleaved;
  // Working buffers: the record's when training (so the forward writes what the backward
  // reads, once), else the scratch.
  float* xn = save ? save->xn_attn.data() : s.xn.data();  // [N, D]
  float* q = save ? save->q.data() : s.q.data();           // [N, H * Dh]
  float* k = save ? save->k.data() : s.k.data();           // [N, KVH * Dh]
  float* v = save ? save->v.data() : s.v.data();           // [N, KVH * Dh]
  float* attn = save ? save->attn.data() : s.attn.data();  // [N, H * Dh]
  float* lse = save ? save->lse.data() : nullptr;          // [N, H]
  if (save) std::copy_n(x, n * d, save->x_attn.data());

  for (int64_t t = 0; t < n; ++t) {
    const float rstd = RmsNorm(&x[t * d], w.attn_norm.data(), d, c.rms_norm_eps, &xn[t * d]);
    if (save) save->rstd_attn[t] = rstd;
  }
  MatMul(w.wq, xn, n, q);  // [N, H * Dh]
  MatMul(w.wk, xn, n, k);  // [N, KVH * Dh]
  MatMul(w.wv, xn, n, v);  // [N, KVH * Dh]
  for (int64_t t = 0; t < n; ++t) {
    Rope(&q[t * q_dim], c.num_heads, hd, c.rope_dim, positions[t], m.inv_freq(), interleaved);
    Rope(&k[t * kv_dim], c.num_kv_heads, hd, c.rope_dim, positions[t], m.inv_freq(), interleaved);
  }
  kv.Append(layer, k, v);
  // One item per (slice of a group, row) over the threads: the query heads of a group share
  // their key/value head, whose keys and values AttentionGroup reads once for all of them. A
  // slice is the whole group unless that leaves too few items to keep the threads busy
  // (decoding a single row): then groups split in halves. Each head's output has the same bits
  // however its group is sliced, so results do not depend on the thread count. Slice-major, so
  // that each thread gets whole slices (rows late in a prompt cost more).
  const int64_t group = c.num_heads / c.num_kv_heads;
  const int64_t threads = ThreadPool::Global().size();
  int64_t slice = group;  // query heads per item
  while (slice % 2 == 0 && c.num_heads / slice * n < 4 * threads) slice /= 2;
  const int64_t slices = c.num_heads / slice;
  ThreadPool::Global().ParallelFor(slices * n, 1, [&](int64_t begin, int64_t end, int thread) {
    float* scores = s.scores.data() + thread * group * s.context;  // [slice, context]
    for (int64_t i = begin; i < end; ++i) {
      const int64_t h = i / n * slice, t = i % n;  // the slice's first query head
      kv.Attend(layer, t, h / group, &q[t * q_dim + h * hd], slice, scores,
                &attn[t * q_dim + h * hd], lse ? &lse[t * c.num_heads + h] : nullptr);
    }
  });
  float* out = s.xn.data();  // [N, D]; free again (the normed input is in the record or done)
  MatMul(w.wo, attn, n, out);
  for (int64_t i = 0; i < n * d; ++i) x[i] += out[i];
}

void FeedForwardBlock(const Model& m, int32_t layer, int64_t n, ForwardScratch& s, float* x,
                      BlockActivations* save) {
  const ModelConfig& c = m.config();
  const LayerWeights& w = m.layers()[layer];
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  float* xn = save ? save->xn_ffn.data() : s.xn.data();  // [N, D]
  float* gate = s.gate.data();                           // [N, F]
  float* up = save ? save->up.data() : s.up.data();      // [N, F]
  if (save) std::copy_n(x, n * d, save->x_ffn.data());
  for (int64_t t = 0; t < n; ++t) {
    const float rstd = RmsNorm(&x[t * d], w.ffn_norm.data(), d, c.rms_norm_eps, &xn[t * d]);
    if (save) save->rstd_ffn[t] = rstd;
  }
  MatMul(w.w_gate, xn, n, gate);  // [N, F]
  MatMul(w.w_up, xn, n, up);      // [N, F]
  if (save) std::copy_n(gate, n * f, save->gate.data());
  const auto silu_mul = ActiveSimdLevel() != SimdLevel::kScalar ? SiluMulAvx2 : SiluMul;
  silu_mul(gate, up, n * f);  // gate = silu(gate) * up
  if (save) std::copy_n(gate, n * f, save->act.data());
  float* out = s.xn.data();  // [N, D]
  MatMul(w.w_down, gate, n, out);
  for (int64_t i = 0; i < n * d; ++i) x[i] += out[i];
}

void RunDecoder(const Model& m, std::span<const int32_t> tokens,
                std::span<const int64_t> positions, KeyValueSource& kv, ForwardScratch& s,
                ForwardRecord* record) {
  const ModelConfig& c = m.config();
  const auto n = static_cast<int64_t>(tokens.size());
  s.Ensure(c, n, kv.max_span());
  float* x = s.x.data();  // [N, D], the residual stream
  EmbedRows(m, tokens, x);
  if (record) record->blocks.resize(static_cast<size_t>(c.num_layers));
  for (int32_t l = 0; l < c.num_layers; ++l) {
    BlockActivations* save = nullptr;
    if (record && l >= record->first_saved) {
      save = &record->blocks[l];
      save->Resize(c, n);
    }
    AttentionBlock(m, l, positions, kv, s, x, save);
    FeedForwardBlock(m, l, n, s, x, save);
  }
  if (record) {
    const auto dn = static_cast<size_t>(n * c.hidden_size);
    record->x_final.assign(x, x + dn);
    record->rstd_final.resize(static_cast<size_t>(n));
    record->hidden.resize(dn);
    FinalNorm(m, x, n, record->hidden.data(), record->rstd_final.data());
  }
}

void FinalNorm(const Model& m, const float* x, int64_t rows, float* out, float* rstd) {
  const ModelConfig& c = m.config();
  const int64_t d = c.hidden_size;
  for (int64_t t = 0; t < rows; ++t) {
    const float r = RmsNorm(&x[t * d], m.final_norm().data(), d, c.rms_norm_eps, &out[t * d]);
    if (rstd) rstd[t] = r;
  }
}

}  // namespace starling
