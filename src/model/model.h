// A Llama/Mistral-architecture decoder: its config, its weights (memory-mapped where they
// are stored, never copied), and the forward pass over a KV cache.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/file.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "quant/weight.h"

namespace starling {

class GgufFile;     // formats/gguf.h
class TensorTable;  // model.cpp: tensors by name, checked as they are bound
struct TensorSpec;

// A tensor as a file stores it, before it is bound to a role in the model.
struct TensorRef {
  std::string name;  // canonical (Hugging Face) name
  std::string file;  // for messages
  WeightFormat format = WeightFormat::kF32;
  std::vector<int64_t> shape;  // outermost first: a [rows, cols] matrix is {rows, cols}
  const void* data = nullptr;
  uint64_t size_bytes = 0;
  // The file mapping `data` lies in, if any: pages the model no longer reads are dropped.
  const MappedFile* mapping = nullptr;
};

// Norm weights are float32 views: into the file where it stores them as aligned F32 (so a
// trainer updating that memory updates the model), else into a converted copy the model owns.
struct LayerWeights {
  std::span<const float> attn_norm;  // [D]
  WeightMatrix wq;                   // [H * Dh, D]
  WeightMatrix wk;                   // [KVH * Dh, D]
  WeightMatrix wv;                   // [KVH * Dh, D]
  WeightMatrix wo;                   // [D, H * Dh]
  std::span<const float> ffn_norm;   // [D]
  WeightMatrix w_gate;               // [F, D]
  WeightMatrix w_up;                 // [F, D]
  WeightMatrix w_down;               // [D, F]
};

// Called as a model's tensors are bound (copied, converted or relaid from their files): bytes
// of the files' tensors done so far, of `total`.
using LoadProgress = std::function<void(uint64_t done, uint64_t total)>;

class Model {
 public:
  // A Hugging Face directory (config.json + *.safetensors, sharded or not) or a GGUF file.
  static Model Load(const std::string& path, const LoadProgress& progress = {});
  // A GGUF file already in memory (e.g. embedded in the executable); `bytes` must outlive
  // the model.
  static Model LoadGgufBytes(std::string_view bytes, const std::string& source);
  // A GGUF file the caller has opened (so that the tokenizer and the template are read from the
  // same parse); the model keeps `gguf` alive.
  static Model LoadGguf(std::shared_ptr<const GgufFile> gguf, const LoadProgress& progress = {});

  // Binds named tensors to the model's roles, checking that every tensor is present with
  // the shape the config implies and a supported dtype. `storage` keeps the mappings alive.
  Model(ModelConfig config, const std::vector<TensorRef>& tensors, std::string source,
        std::shared_ptr<const void> storage, const LoadProgress& progress = {});

  const ModelConfig& config() const { return config_; }
  const std::string& source() const { return source_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  const WeightMatrix& embedding() const { return embedding_; }  // [V, D]
  // The output head: [V, D] (language model) or [1, D] (reward model); see ModelHead.
  const WeightMatrix& head() const { return head_; }
  const WeightMatrix& value_head() const { return value_head_; }     // [1, D] when config has one
  std::span<const float> final_norm() const { return final_norm_; }  // [D]
  const std::vector<float>& inv_freq() const { return inv_freq_; }   // [rope_dim / 2]
  // Bytes of weights as stored (what generating one token reads), and the tensor list.
  uint64_t weight_bytes() const { return weight_bytes_; }
  const std::vector<TensorRef>& tensors() const { return tensors_; }
  // What keeps the tensors' bytes alive (file mappings, a trainer's parameters).
  const std::shared_ptr<const void>& storage() const { return storage_; }

  // A copy of this model with `replacements` (canonical names, shapes as the config implies)
  // bound in place of its tensors of those names; every other weight is this model's, shared,
  // not copied or relaid again (e.g. a reference policy: its own copies of the trained tensors
  // over the frozen ones). `storage` keeps the replacements' bytes alive.
  Model WithReplacedTensors(const std::vector<TensorRef>& replacements, std::string source,
                            std::shared_ptr<const void> storage) const;

 private:
  ModelConfig config_;
  std::string source_;
  std::shared_ptr<const void> storage_;
  std::vector<TensorRef> tensors_;
  WeightMatrix embedding_;
  WeightMatrix head_;
  WeightMatrix value_head_;
  std::span<const float> final_norm_;
  std::vector<LayerWeights> layers_;
  // Norm weights converted to float32 (shared by copies of the model, as relaid_ is).
  std::vector<std::shared_ptr<const std::vector<float>>> vectors_;
  std::vector<float> inv_freq_;
  // Matrices rearranged at load into the layout MatMul runs fastest (see LoadForMatMul).
  std::vector<std::shared_ptr<const HugePageBuffer>> relaid_;
  uint64_t weight_bytes_ = 0;
  // Binds the tensor of `spec` from `table` to its role.
  void Bind(const TensorSpec& spec, const TensorTable& table);
};

// Activations of a batch of rows (tokens) in flight through the forward pass; grows to the
// largest batch seen, so steady decoding allocates nothing.
struct ForwardScratch {
  int64_t rows = 0;
  int64_t context = 0;
  std::vector<float> x, xn, q, k, v, attn, gate, up, scores, last;
  std::vector<int32_t> row_tokens;     // [N] of the rows in flight
  std::vector<int64_t> row_positions;  // [N]
  // Set by a training forward: float32 weights multiply with sgemm (see blocks.cpp, Linear).
  bool training = false;
  // Sizes the buffers for `tokens` rows and attention over up to `context_length` positions.
  void Ensure(const ModelConfig& c, int64_t tokens, int64_t context_length);
};

// The model files behind a path, opened but not yet bound: a Hugging Face directory or a GGUF
// file as canonical tensors. Model::Load binds them; a trainer binds its own parameters in
// place of some of them.
struct ModelFiles {
  ModelConfig config;
  std::vector<TensorRef> tensors;
  std::string source;
  std::shared_ptr<const void> storage;
};
ModelFiles OpenModelFiles(const std::string& path);

// One sequence's state: the KV cache and scratch buffers, sized once for `context_length`
// positions, so that decoding allocates nothing.
class Session {
 public:
  // `kv_type`: the KV cache's element type. kF32 (the default) keeps keys and values exactly;
  // kF16 (llama.cpp's default cache type) rounds them to nearest-even binary16 as they are
  // stored, which halves the cache and the bytes attention reads (the arithmetic stays
  // float32). Throws starling::Error for any other type or a context length < 1.
  Session(const Model& model, int32_t context_length, DType kv_type = DType::kF32);

  // Runs `tokens` at positions [length(), length() + T) and appends their keys and values to
  // the cache. Writes the head's outputs (O = config().output_size(): logits, or the reward)
  // of the last token [O], or with `all_logits` [T, O] for every token, into `logits`. Throws
  // starling::Error when the context would overflow or a token id is outside the vocabulary.
  // Prompts longer than kChunkRows run in chunks of that many rows, so that scratch memory
  // stays bounded whatever the prompt's length.
  void Forward(std::span<const int32_t> tokens, std::span<float> logits, bool all_logits = false);
  static constexpr int64_t kChunkRows = 512;

  // The head's outputs [O] for `token` placed at RoPE position `position` (>= length()) that
  // attends to the cached positions only, not to itself; the cache is left unchanged. This is
  // what a right-padded batch computes at a padding position when the padding is masked as
  // keys (Hugging Face's attention mask), e.g. Starling-RM's card reading its reward at the
  // last padded position. Needs length() >= 1.
  void Probe(int32_t token, int64_t position, std::span<float> outputs);

  const Model& model() const { return *model_; }
  int32_t length() const { return length_; }
  // The token ids whose keys and values the cache holds, [length()].
  const std::vector<int32_t>& tokens() const { return tokens_; }
  // Prefix reuse: keeps the longest prefix of the cache that `ids` starts with, but leaves at
  // least the last id of `ids` to run (its outputs are what a caller wants), truncating the
  // rest; returns the kept length. The caller then runs ids[returned..]. The forward pass gives
  // each position the same bits whether it ran now or earlier.
  int32_t ReusePrefix(std::span<const int32_t> ids);
  int32_t context_length() const { return context_length_; }
  // Forgets positions >= n (n <= length()), e.g. to start a new conversation.
  void Truncate(int32_t n);
  DType kv_type() const { return kv_type_; }
  uint64_t kv_cache_bytes() const {
    return (keys_.size() + values_.size()) * sizeof(float) +
           (half_keys_.size() + half_values_.size()) * sizeof(uint16_t);
  }

  // One decode step for several sessions of the same model (continuous batching): token i
  // runs in sessions[i] at its next position, with every matmul batched over the sessions
  // (the weights are read once per step, not once per session). outputs: [B, O]. Gives each
  // session exactly the bits Forward(tokens[i]) would. Sessions may differ in kv_type().
  // Throws starling::Error (before any work) when a session is full, ids are bad, or sessions
  // repeat or mix models.
  static void ForwardBatch(std::span<Session* const> sessions, std::span<const int32_t> tokens,
                           std::span<float> outputs, ForwardScratch* scratch);

 private:
  friend class SessionKeyValues;
  // A token in flight: where it runs and what it attends to.
  struct Row {
    Session* session;
    int32_t token;
    int64_t position;  // RoPE position
    bool probe;        // attends to the cache only and stores nothing
  };
  // The forward pass over rows of any sessions of one model. Outputs: every row's [n, O], or
  // only the last row's [O].
  // `outputs_wanted` false: run the rows for their keys and values only (a prompt's early
  // chunks), computing no head outputs.
  static void RunRows(const Model& m, std::span<const Row> rows, ForwardScratch* s,
                      std::span<float> outputs, bool all_outputs, bool outputs_wanted = true);
  void CheckTokens(std::span<const int32_t> tokens) const;
  // Stores a token's key and value [KVH * Dh] of `layer` at `position`, in kv_type_.
  void StoreKeyValue(int32_t layer, int64_t position, const float* key, const float* value);
  // AttentionGroup over this session's cache of `layer`, key/value head `kv_head`, positions
  // [first, last], for `group` consecutive query heads of it: q and out [group, Dh]; scores:
  // scratch [group, last - first + 1]. Picks the kernel for kv_type_ and the CPU.
  void Attend(int32_t layer, int64_t kv_head, const float* q, int64_t group, int64_t first,
              int64_t last, float* scores, float* out, float* lse) const;

  const Model* model_;
  int32_t context_length_;
  int32_t length_ = 0;
  std::vector<int32_t> tokens_;  // [length_]
  DType kv_type_;
  // The cache, [L, S, KVH * Dh] each, in the pair of kv_type_ (the other pair stays empty):
  // float32, or binary16 bits.
  std::vector<float> keys_, values_;
  std::vector<uint16_t> half_keys_, half_values_;
  ForwardScratch scratch_;
  std::vector<Row> rows_;
};

}  // namespace starling
