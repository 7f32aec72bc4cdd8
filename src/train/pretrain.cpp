#include "train/pretrain.h"

#include <cmath>
#include <cstdio>

#include "chat/chat_data.h"
#include "core/error.h"
#include "core/file.h"
#include "model/hf_config.h"
#include "tokenizer/load.h"
#include "train/data.h"
#include "train/distributed.h"

namespace starling {
namespace {

// The language model to train, from -m or --config.
TrainModel OpenTrainModel(const TrainerOptions& o, std::string* tokenizer_source) {
  ModelFiles files = OpenInitFiles(o, tokenizer_source);
  CheckContext(o, files.config);
  if (files.config.head != ModelHead::kLanguageModel)
    Fail(files.source, ": this trainer needs a language model");
  return TrainModel(std::move(files), o.unfreeze_layers);
}

// Pretraining windows: micro-batch at position p is samples p .. p+B-1 (TokenWindows' order).
class WindowSource final : public BatchSource {
 public:
  WindowSource(TokenWindows windows, int64_t batch, bool shuffle, uint64_t seed)
      : windows_(std::move(windows)), batch_(batch), order_(windows_.count(), shuffle, seed) {}
  TokenBatch Next(int64_t* position) override {
    TokenBatch b;
    for (int64_t j = 0; j < batch_; ++j) {
      windows_.Append(order_(*position + j), &b);
    }
    *position += batch_;
    return b;
  }
  int64_t examples() const override { return windows_.count(); }

 private:
  TokenWindows windows_;
  int64_t batch_;
  EpochOrder order_;
};

// Conversations. Without shuffling, the micro-batch at position p is conversations
// (p + j) mod N, j < B, each its own sequence. With shuffling, conversations come in a
// seeded Fisher-Yates order per epoch (TokenWindows' rule) and are packed: B rows of at most
// --ctx tokens each, filled in order with whole conversations, each still its own sequence
// (positions restart, attention stays inside it), so packing changes no loss, only how many
// conversations a step takes.
class ChatSource final : public BatchSource {
 public:
  ChatSource(std::vector<ChatExample> examples, int64_t batch, int64_t ctx, bool shuffle,
             uint64_t seed)
      : examples_(std::move(examples)),
        batch_(batch),
        ctx_(ctx),
        shuffle_(shuffle),
        order_(static_cast<int64_t>(examples_.size()), shuffle, seed) {}

  TokenBatch Next(int64_t* position) override {
    TokenBatch b;
    if (!shuffle_) {
      for (int64_t j = 0; j < batch_; ++j) Append(Example(*position + j), &b);
      *position += batch_;
      return b;
    }
    for (int64_t row = 0; row < batch_; ++row) {
      int64_t room = ctx_;
      while (true) {
        const ChatExample& e = Example(*position);
        const auto need = static_cast<int64_t>(e.ids.size()) - 1;
        if (need > room && room < ctx_) break;  // the row is full (a row always takes one)
        Append(e, &b);
        ++*position;
        room -= need;
        if (room <= 0) break;
      }
    }
    return b;
  }
  int64_t examples() const override { return static_cast<int64_t>(examples_.size()); }

 private:
  const ChatExample& Example(int64_t position) { return examples_[order_(position)]; }
  static void Append(const ChatExample& e, TokenBatch* b) {
    b->lengths.push_back(static_cast<int64_t>(e.ids.size()) - 1);
    b->inputs.insert(b->inputs.end(), e.ids.begin(), e.ids.end() - 1);
    b->targets.insert(b->targets.end(), e.ids.begin() + 1, e.ids.end());
    b->weights.insert(b->weights.end(), e.weights.begin(), e.weights.end());
  }

  std::vector<ChatExample> examples_;
  int64_t batch_, ctx_;
  bool shuffle_;
  EpochOrder order_;
};

}  // namespace

void CheckTrainerOptions(const TrainerOptions& o, std::string* tokenizer_source) {
  if (o.model.empty() == o.config.empty()) Fail("give either -m INIT or --config config.json");
  if (o.batch < 1) Fail("--batch must be at least 1, not ", o.batch);
  if (o.ctx < 1) Fail("--ctx must be at least 1, not ", o.ctx);
  if (!(o.loop.lr.lr >= 0) || !std::isfinite(o.loop.lr.lr))
    Fail("--lr must be a finite number >= 0");
  *tokenizer_source = o.tokenizer.empty() ? o.model : o.tokenizer;
  if (tokenizer_source->empty()) {
    Fail("--config needs --tokenizer (a tokenizer.model, HF directory or GGUF)");
  }
}

ModelFiles OpenInitFiles(const TrainerOptions& o, std::string* tokenizer_source) {
  CheckTrainerOptions(o, tokenizer_source);
  ModelFiles files =
      o.config.empty()
          ? OpenModelFiles(o.model)
          : RandomModelFiles(ParseHuggingFaceConfig(ReadFile(o.config), "", o.config), o.seed);
  return files;
}

void CheckContext(const TrainerOptions& o, const ModelConfig& c) {
  if (c.max_position_embeddings > 0 && o.ctx > c.max_position_embeddings) {
    Fail("--ctx ", o.ctx, " is larger than the model's context (max_position_embeddings ",
         c.max_position_embeddings, ")");
  }
}

// The loop's settings that follow from the trainer's, and the run's identity for resume.
TrainLoopOptions LoopOptions(const TrainerOptions& o, const TrainModel& m, int64_t examples,
                             int64_t examples_per_micro_batch, const std::string& tokenizer_source,
                             nlohmann::json run) {
  TrainLoopOptions loop = o.loop;
  if (o.epochs > 0 && loop.steps <= 0) {
    const int64_t per_step = examples_per_micro_batch * loop.accum;
    loop.steps = (o.epochs * examples + per_step - 1) / per_step;
  }
  if (loop.steps < 1) Fail("give --steps N or --epochs E");
  loop.lr.kind = LrScheduleFromName(o.schedule);
  loop.lr.total = loop.steps;
  loop.tokenizer_source = tokenizer_source;
  run["model"] = o.model.empty() ? "config:" + o.config : o.model;
  run["data"] = o.data;
  run["ctx"] = o.ctx;
  run["batch"] = o.batch;
  run["accum"] = loop.accum;
  run["steps"] = loop.steps;
  run["seed"] = o.seed;
  run["shuffle"] = o.shuffle;
  run["unfreeze_layers"] = o.unfreeze_layers;
  run["trainable_parameters"] = m.parameter_count();
  loop.run_config = std::move(run);
  if (Ranks::root())
    std::fprintf(stderr,
                 "train: %s, %.2fM trainable + %.2fM frozen parameters (blocks %d..%d trained); "
                 "%lld steps\n",
                 m.model().source().c_str(), static_cast<double>(m.parameter_count()) / 1e6,
                 static_cast<double>(m.frozen_count()) / 1e6, m.lowest_trainable_layer(),
                 m.config().num_layers - 1, static_cast<long long>(loop.steps));
  return loop;
}

void CheckIds(const std::vector<int32_t>& ids, int32_t vocab, const std::string& what) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= vocab) {
      Fail(what, ": token ", i, " has id ", ids[i], ", outside the model's vocabulary (", vocab,
           "): the tokenizer does not match the model");
    }
  }
}

void RunPretrain(TrainerOptions o) {
  std::string tokenizer_source;
  TrainModel m = OpenTrainModel(o, &tokenizer_source);
  const Tokenizer tokenizer = LoadTokenizer(tokenizer_source);
  const std::string text = ReadFile(o.data);
  if (text.empty()) Fail(o.data, ": the data file is empty");
  std::vector<int32_t> tokens =
      tokenizer.Encode(text, {.add_bos = tokenizer.add_bos_token(), .parse_special = true});
  CheckIds(tokens, m.config().vocab_size, o.data);
  const size_t token_count = tokens.size();
  WindowSource source(TokenWindows(std::move(tokens), o.ctx, o.data), o.batch, o.shuffle, o.seed);
  if (Ranks::root())
    std::fprintf(stderr, "data: %s, %zu tokens, %lld windows of %lld\n", o.data.c_str(),
                 token_count, static_cast<long long>(source.examples()),
                 static_cast<long long>(o.ctx));
  const TrainLoopOptions loop =
      LoopOptions(o, m, source.examples(), o.batch, tokenizer_source, {{"trainer", "pretrain"}});
  LanguageModelObjective objective(source, {});
  RunTrainLoop(m, objective, loop);
}

void RunSft(SftOptions s) {
  TrainerOptions& o = s.common;
  std::string tokenizer_source;
  TrainModel m = OpenTrainModel(o, &tokenizer_source);
  const Tokenizer tokenizer = LoadTokenizer(tokenizer_source);
  // Without --template, the model's own (as chat and serve choose it).
  if (s.chat_template.empty()) {
    const ChatTemplate* own = ChatTemplate::OfModel(tokenizer_source);
    if (own == nullptr) {
      Fail(tokenizer_source,
           " ships no chat template that starling knows; choose one with "
           "--template (openchat, openchat-code, llama-2, raw)");
    }
    s.chat_template = std::string(own->name());
  }
  const ChatTemplate& chat_template = ChatTemplate::ByName(s.chat_template);
  ChatDataOptions data_options;
  data_options.ctx = o.ctx;
  if (s.long_conversations == "truncate") {
    data_options.long_conversations = LongConversations::kTruncateLeft;
  } else if (s.long_conversations != "skip") {
    Fail("--long-conversations must be skip or truncate, not '", s.long_conversations, "'");
  }
  data_options.skip_bad_lines = s.skip_bad_lines;
  ChatDataStats stats;
  std::vector<ChatExample> examples =
      LoadChatData(o.data, tokenizer, chat_template, data_options, &stats);
  for (const ChatExample& e : examples) {
    CheckIds(e.ids, m.config().vocab_size, o.data + ":" + std::to_string(e.line));
  }
  if (Ranks::root())
    std::fprintf(stderr,
                 "data: %s: %lld conversations, %lld trained tokens; skipped: %lld without an "
                 "assistant turn, %lld longer than --ctx, %lld bad lines; %lld truncated from the "
                 "left\n",
                 o.data.c_str(), static_cast<long long>(stats.conversations),
                 static_cast<long long>(stats.trained_tokens),
                 static_cast<long long>(stats.no_assistant),
                 static_cast<long long>(stats.too_long_skipped),
                 static_cast<long long>(stats.bad_lines), static_cast<long long>(stats.truncated));
  std::vector<TokenBatch> eval;
  if (!s.eval_data.empty()) {
    ChatDataStats eval_stats;
    const std::vector<ChatExample> held_out =
        LoadChatData(s.eval_data, tokenizer, chat_template, data_options, &eval_stats);
    ChatSource eval_source(held_out, o.batch, o.ctx, /*shuffle=*/false, 0);
    for (int64_t p = 0; p < eval_source.examples();) {
      TokenBatch b = eval_source.Next(&p);
      // The last batch may wrap around to the start: keep each conversation once.
      const int64_t extra = std::max<int64_t>(0, p - eval_source.examples());
      for (int64_t i = 0; i < extra; ++i) {
        const int64_t len = b.lengths.back();
        b.lengths.pop_back();
        b.inputs.resize(b.inputs.size() - len);
        b.targets.resize(b.targets.size() - len);
        b.weights.resize(b.weights.size() - len);
      }
      for (const int32_t id : b.inputs) {
        if (id >= m.config().vocab_size) Fail(s.eval_data, ": a token outside the vocabulary");
      }
      eval.push_back(std::move(b));
    }
  }
  const auto examples_count = static_cast<int64_t>(examples.size());
  // Conversations per micro-batch: B without packing; with packing, measured over one epoch.
  int64_t per_micro = o.batch;
  ChatSource source(std::move(examples), o.batch, o.ctx, o.shuffle, o.seed);
  if (o.shuffle && o.epochs > 0 && o.loop.steps <= 0) {
    ChatSource probe = source;
    int64_t p = 0, micro = 0;
    while (p < examples_count) probe.Next(&p), ++micro;
    per_micro = std::max<int64_t>(1, examples_count / micro);
  }
  TrainLoopOptions loop = LoopOptions(o, m, examples_count, per_micro, tokenizer_source,
                                      {{"trainer", "sft"},
                                       {"template", s.chat_template},
                                       {"eval_data", s.eval_data},
                                       {"long_conversations", s.long_conversations}});
  loop.log_header = {
      {"conversations", stats.conversations},       {"trained_tokens", stats.trained_tokens},
      {"skipped_no_assistant", stats.no_assistant}, {"skipped_too_long", stats.too_long_skipped},
      {"skipped_bad_lines", stats.bad_lines},       {"truncated", stats.truncated}};
  LanguageModelObjective objective(source, std::move(eval));
  RunTrainLoop(m, objective, loop);
}

}  // namespace starling
