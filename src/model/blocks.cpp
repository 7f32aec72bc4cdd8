#include "model/blocks.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "kernels/gemm.h"

namespace starling {

SequenceKeyValues::SequenceKeyValues(const ModelConfig& c, std::span<const int64_t> lengths,
                                     std::span<const int64_t> prefixes)
    : kv_dim_(int64_t{c.num_kv_heads} * c.head_dim),
      head_dim_(c.head_dim),
      window_(c.sliding_window) {
  if (!prefixes.empty() && prefixes.size() != lengths.size()) {
    Fail(lengths.size(), " sequences but ", prefixes.size(), " prefix indices");
  }
  std::vector<int64_t> first_row(lengths.size());
  int64_t start = 0, root = -1;
  for (size_t s = 0; s < lengths.size(); ++s) {
    const int64_t length = lengths[s];
    if (length < 1) Fail("a sequence of ", length, " tokens");
    const int64_t prefix = prefixes.empty() ? -1 : prefixes[s];
    if (prefix == -1) {
      root = static_cast<int64_t>(s);
      tree_starts_.push_back(start);
    } else if (prefix != root || root < 0) {
      Fail("sequence ", s, " continues sequence ", prefix,
           ": a prefix must be the latest sequence without a prefix of its own");
    }
    first_row[s] = start;
    const int64_t p_start = prefix == -1 ? start : first_row[prefix];
    const int64_t p_length = prefix == -1 ? 0 : lengths[prefix];
    for (int64_t t = 0; t < length; ++t) {
      start_.push_back(start);
      prefix_start_.push_back(p_start);
      prefix_length_.push_back(p_length);
      positions_.push_back(p_length + t);
    }
    start += length;
    const int64_t seen = p_length + length;
    max_span_ = std::max(max_span_, window_ > 0 ? std::min<int64_t>(seen, window_) : seen);
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
  const auto attend = dispatch::AttentionGroup<DType::kF32>;
  const int64_t head = kv_head * head_dim_;
  const int64_t first = first_visible(row), pos = positions_[row], p = prefix_length_[row];
  const int64_t own = start_[row] * kv_dim_ + head;
  if (first >= p) {  // the row's own rows only: one pass
    attend(q, head_dim_, group, k_ + own, v_ + own, kv_dim_, head_dim_, first - p, pos - p, scores,
           out, head_dim_, lse);
    return;
  }
  // Prefix rows [first, P) and own rows [0, pos - P], each a softmax of its own, merged:
  // lse = log(e^lse_a + e^lse_b), out = e^(lse_a - lse) out_a + e^(lse_b - lse) out_b.
  thread_local std::vector<float> part;  // [group, Dh] prefix outputs, then [2 * group] lses
  part.resize(static_cast<size_t>(group * (head_dim_ + 2)));
  float* out_a = part.data();
  float* lse_a = out_a + group * head_dim_;
  float* lse_b = lse_a + group;
  const int64_t prefix = prefix_start_[row] * kv_dim_ + head;
  attend(q, head_dim_, group, k_ + prefix, v_ + prefix, kv_dim_, head_dim_, first, p - 1, scores,
         out_a, head_dim_, lse_a);
  attend(q, head_dim_, group, k_ + own, v_ + own, kv_dim_, head_dim_, 0, pos - p, scores, out,
         head_dim_, lse_b);
  for (int64_t h = 0; h < group; ++h) {
    const double a = lse_a[h], b = lse_b[h], top = std::max(a, b);
    const double merged = top + std::log(std::exp(a - top) + std::exp(b - top));
    const auto wa = static_cast<float>(std::exp(a - merged));
    const auto wb = static_cast<float>(std::exp(b - merged));
    float* o = out + h * head_dim_;
    const float* oa = out_a + h * head_dim_;
    for (int64_t i = 0; i < head_dim_; ++i) o[i] = wa * oa[i] + wb * o[i];
    if (lse) lse[h] = static_cast<float>(merged);
  }
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

namespace {

// out[N, rows] = x[N, cols] w^T. A training forward (`training`) multiplies float32 weights
// with sgemm (the products the backward uses too); everything else, and inference always,
// goes through MatMul, whose bits the inference tests pin down.
void Linear(const WeightMatrix& w, const float* x, int64_t n, float* out, bool training) {
  if (training && w.format == WeightFormat::kF32 && w.layout == WeightLayout::kRows) {
    return GemmForward(x, static_cast<const float*>(w.data), n, w.cols, w.rows, out);
  }
  MatMul(w, x, n, out);
}

}  // namespace

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
  float* xn = save ? save->xn_attn.data() : s.xn.data();   // [N, D]
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
  Linear(w.wq, xn, n, q, save != nullptr || s.training);  // [N, H * Dh]
  Linear(w.wk, xn, n, k, save != nullptr || s.training);  // [N, KVH * Dh]
  Linear(w.wv, xn, n, v, save != nullptr || s.training);  // [N, KVH * Dh]
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
  Linear(w.wo, attn, n, out, save != nullptr || s.training);
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
  Linear(w.w_gate, xn, n, gate, save != nullptr || s.training);  // [N, F]
  Linear(w.w_up, xn, n, up, save != nullptr || s.training);      // [N, F]
  if (save) std::copy_n(gate, n * f, save->gate.data());
  dispatch::SiluMul(gate, up, n * f);  // gate = silu(gate) * up
  if (save) std::copy_n(gate, n * f, save->act.data());
  float* out = s.xn.data();  // [N, D]
  Linear(w.w_down, gate, n, out, save != nullptr || s.training);
  for (int64_t i = 0; i < n * d; ++i) x[i] += out[i];
}

void RunDecoder(const Model& m, std::span<const int32_t> tokens, std::span<const int64_t> positions,
                KeyValueSource& kv, ForwardScratch& s, ForwardRecord* record) {
  const auto n = static_cast<int64_t>(tokens.size());
  s.Ensure(m.config(), n, kv.max_span());
  EmbedRows(m, tokens, s.x.data());
  RunBlocks(m, 0, n, positions, kv, s, record);
}

void RunBlocks(const Model& m, int32_t first_layer, int64_t n, std::span<const int64_t> positions,
               KeyValueSource& kv, ForwardScratch& s, ForwardRecord* record) {
  const ModelConfig& c = m.config();
  if (first_layer < 0 || first_layer > c.num_layers) Fail("RunBlocks: no layer ", first_layer);
  s.Ensure(c, n, kv.max_span());
  s.training = record != nullptr;
  float* x = s.x.data();  // [N, D], the residual stream
  if (record) record->blocks.resize(static_cast<size_t>(c.num_layers));
  for (int32_t l = first_layer; l < c.num_layers; ++l) {
    BlockActivations* save = nullptr;
    if (record && l >= record->first_saved) {
      if (record->recompute) {
        record->blocks[l].x_attn.assign(x, x + n * c.hidden_size);
      } else {
        save = &record->blocks[l];
        save->Resize(c, n);
      }
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

// ---- Backward ----------------------------------------------------------------------------
namespace {

// A trainable matrix's float32 rows (the backward reads weights as float32).
const float* F32(const WeightMatrix& w, const char* what) {
  if (w.format != WeightFormat::kF32 || w.layout != WeightLayout::kRows) {
    Fail("the backward pass needs float32 weights for ", what, ", not ", WeightFormatName(w.format),
         " (train only the blocks that are float32: --unfreeze-layers)");
  }
  return static_cast<const float*>(w.data);
}

}  // namespace

void BackwardScratch::Ensure(const ModelConfig& c, int64_t n, int64_t max_span) {
  const auto rows = static_cast<size_t>(n);
  const size_t q_dim = static_cast<size_t>(c.num_heads) * c.head_dim * rows;
  const size_t kv_dim = static_cast<size_t>(c.num_kv_heads) * c.head_dim * rows;
  const size_t f = static_cast<size_t>(c.intermediate_size) * rows;
  dxn.resize(static_cast<size_t>(c.hidden_size) * rows);
  dattn.resize(q_dim), dq.resize(q_dim), dk.resize(kv_dim), dv.resize(kv_dim);
  dgate.resize(f), dup.resize(f), dact.resize(f);
  scores.resize(static_cast<size_t>(ThreadPool::Global().size() * max_span));
}

void FeedForwardBlockBackward(const Model& m, int32_t layer, const BlockActivations& a, int64_t n,
                              BackwardScratch& s, float* dx, const BlockGrads& g) {
  const ModelConfig& c = m.config();
  const LayerWeights& w = m.layers()[layer];
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  // out = x + W_down act: d act [N, F] = dx W_down; dW_down += dx^T act.
  LinearBackward(a.act.data(), F32(w.w_down, "mlp.down_proj"), dx, n, f, d, s.dact.data(), false,
                 g.down);
  // act = silu(gate) * up
  dispatch::SiluMulBackward(a.gate.data(), a.up.data(), s.dact.data(), n * f, s.dgate.data(),
                            s.dup.data());
  // gate = xn W_gate^T, up = xn W_up^T: d xn [N, D] = dgate W_gate + dup W_up.
  LinearBackward(a.xn_ffn.data(), F32(w.w_gate, "mlp.gate_proj"), s.dgate.data(), n, d, f,
                 s.dxn.data(), false, g.gate);
  LinearBackward(a.xn_ffn.data(), F32(w.w_up, "mlp.up_proj"), s.dup.data(), n, d, f, s.dxn.data(),
                 true, g.up);
  // xn = norm(x); dx already holds the residual path's gradient.
  for (int64_t t = 0; t < n; ++t) {
    RmsNormBackward(&a.x_ffn[t * d], w.ffn_norm.data(), a.rstd_ffn[t], &s.dxn[t * d], d, &dx[t * d],
                    g.ffn_norm);
  }
}

void AttentionBlockBackward(const Model& m, int32_t layer, const SequenceKeyValues& kv,
                            const BlockActivations& a, BackwardScratch& s, float* dx,
                            const BlockGrads& g) {
  const ModelConfig& c = m.config();
  const LayerWeights& w = m.layers()[layer];
  const int64_t n = kv.rows(), d = c.hidden_size, hd = c.head_dim;
  const int64_t q_dim = int64_t{c.num_heads} * hd, kv_dim = int64_t{c.num_kv_heads} * hd;
  const int64_t group = c.num_heads / c.num_kv_heads;
  const bool interleaved = c.rope_layout == RopeLayout::kInterleaved;
  // out = x + Wo attn: d attn [N, H * Dh] = dx Wo; dWo += dx^T attn.
  LinearBackward(a.attn.data(), F32(w.wo, "self_attn.o_proj"), dx, n, q_dim, d, s.dattn.data(),
                 false, g.wo);
  std::fill(s.dq.begin(), s.dq.end(), 0.0f);
  std::fill(s.dk.begin(), s.dk.end(), 0.0f);
  std::fill(s.dv.begin(), s.dv.end(), 0.0f);
  // One work item per (tree, key/value head): it alone writes that head's dk/dv rows of the
  // tree (a sequence, or a prefix and the sequences continuing it) and its query heads' dq,
  // rows in order (a row with a prefix: its prefix part, then its own), so the sums have a
  // fixed order.
  const std::vector<int64_t>& starts = kv.tree_starts();
  const auto trees = static_cast<int64_t>(starts.size());
  const int64_t span = kv.max_span();
  ThreadPool::Global().ParallelFor(
      trees * c.num_kv_heads, 1, [&](int64_t begin, int64_t end, int thread) {
        float* scores = s.scores.data() + thread * span;
        const auto backward = dispatch::AttentionGroupBackward;
        for (int64_t item = begin; item < end; ++item) {
          const int64_t tree = item / c.num_kv_heads, kvh = item % c.num_kv_heads;
          const int64_t stop = tree + 1 < trees ? starts[tree + 1] : n;
          for (int64_t r = starts[tree]; r < stop; ++r) {
            const int64_t q_off = r * q_dim + kvh * group * hd;
            const int64_t first = kv.first_visible(r), pos = kv.position(r);
            const int64_t p = kv.prefix_length(r);
            auto part = [&](int64_t key_row, int64_t from, int64_t to) {
              const int64_t kv_off = key_row * kv_dim + kvh * hd;
              backward(&a.q[q_off], &a.k[kv_off], &a.v[kv_off], kv_dim, group, hd, from, to,
                       &a.attn[q_off], &a.lse[r * c.num_heads + kvh * group], &s.dattn[q_off],
                       scores, &s.dq[q_off], &s.dk[kv_off], &s.dv[kv_off]);
            };
            if (first < p) part(kv.prefix_start(r), first, p - 1);
            part(kv.sequence_start(r), std::max<int64_t>(0, first - p), pos - p);
          }
        }
      });
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = kv.position(t);
    RopeBackward(&s.dq[t * q_dim], c.num_heads, hd, c.rope_dim, pos, m.inv_freq(), interleaved);
    RopeBackward(&s.dk[t * kv_dim], c.num_kv_heads, hd, c.rope_dim, pos, m.inv_freq(), interleaved);
  }
  // q = xn Wq^T, k = xn Wk^T, v = xn Wv^T.
  LinearBackward(a.xn_attn.data(), F32(w.wq, "self_attn.q_proj"), s.dq.data(), n, d, q_dim,
                 s.dxn.data(), false, g.wq);
  LinearBackward(a.xn_attn.data(), F32(w.wk, "self_attn.k_proj"), s.dk.data(), n, d, kv_dim,
                 s.dxn.data(), true, g.wk);
  LinearBackward(a.xn_attn.data(), F32(w.wv, "self_attn.v_proj"), s.dv.data(), n, d, kv_dim,
                 s.dxn.data(), true, g.wv);
  for (int64_t t = 0; t < n; ++t) {
    RmsNormBackward(&a.x_attn[t * d], w.attn_norm.data(), a.rstd_attn[t], &s.dxn[t * d], d,
                    &dx[t * d], g.attn_norm);
  }
}

void DecoderBackward(const Model& m, std::span<const int32_t> tokens, SequenceKeyValues& kv,
                     const ForwardRecord& record, const float* dhidden, const ModelGrads& g,
                     BackwardScratch& s, std::vector<float>& dx, ForwardScratch& fs,
                     BlockActivations& recomputed) {
  const ModelConfig& c = m.config();
  const int64_t n = kv.rows(), d = c.hidden_size;
  if (g.lowest_layer < record.first_saved) {
    Fail("the forward saved blocks from ", record.first_saved, ", the backward needs ",
         g.lowest_layer);
  }
  s.Ensure(c, n, kv.max_span());
  dx.assign(static_cast<size_t>(n * d), 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    RmsNormBackward(&record.x_final[t * d], m.final_norm().data(), record.rstd_final[t],
                    &dhidden[t * d], d, &dx[t * d], g.final_norm);
  }
  for (int32_t l = c.num_layers - 1; l >= g.lowest_layer; --l) {
    const BlockActivations* saved = &record.blocks[l];
    if (record.recompute) {  // the block's forward again, from its saved input
      fs.Ensure(c, n, kv.max_span());
      recomputed.Resize(c, n);
      std::copy_n(record.blocks[l].x_attn.data(), n * d, fs.x.data());
      AttentionBlock(m, l, kv.positions(), kv, fs, fs.x.data(), &recomputed);
      FeedForwardBlock(m, l, n, fs, fs.x.data(), &recomputed);
      saved = &recomputed;
    }
    const BlockActivations& a = *saved;
    FeedForwardBlockBackward(m, l, a, n, s, dx.data(), g.layers[l]);
    AttentionBlockBackward(m, l, kv, a, s, dx.data(), g.layers[l]);
    if (g.layer_done) g.layer_done(l);
  }
  if (g.lowest_layer == 0 && g.embedding != nullptr) {
    for (int64_t t = 0; t < n; ++t) {  // scatter-add, rows in order
      float* row = g.embedding + static_cast<int64_t>(tokens[t]) * d;
      for (int64_t i = 0; i < d; ++i) row[i] += dx[t * d + i];
    }
  }
}

}  // namespace starling
