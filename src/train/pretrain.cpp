#include "train/pretrain.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file.h"
#include "model/hf_config.h"
#include "tokenizer/load.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/step.h"

namespace starling {
namespace {

double MiB(uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

std::string Duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buf;
}

}  // namespace

void RunPretrain(const PretrainOptions& o) {
  if (o.model.empty() == o.config.empty()) Fail("give either -m INIT or --config config.json");
  if (o.batch < 1) Fail("--batch must be at least 1, not ", o.batch);
  if (o.steps < 1) Fail("--steps must be at least 1, not ", o.steps);
  if (!(o.lr >= 0) || !std::isfinite(o.lr)) Fail("--lr must be a finite number >= 0");
  const std::string tokenizer_source = o.tokenizer.empty() ? o.model : o.tokenizer;
  if (tokenizer_source.empty()) Fail("--config needs --tokenizer (a tokenizer.model, HF directory or GGUF)");

  ModelFiles files =
      o.config.empty()
          ? OpenModelFiles(o.model)
          : RandomModelFiles(ParseHuggingFaceConfig(ReadFile(o.config), "", o.config), o.seed);
  const ModelConfig& c = files.config;
  if (c.head != ModelHead::kLanguageModel) Fail(files.source, ": pretraining needs a language model");
  if (c.max_position_embeddings > 0 && o.ctx > c.max_position_embeddings) {
    Fail("--ctx ", o.ctx, " is larger than the model's context (max_position_embeddings ",
         c.max_position_embeddings, ")");
  }
  TrainModel tm(std::move(files), o.unfreeze_layers);

  const Tokenizer tokenizer = LoadTokenizer(tokenizer_source);
  const std::string text = ReadFile(o.data);
  if (text.empty()) Fail(o.data, ": the data file is empty");
  std::vector<int32_t> tokens =
      tokenizer.Encode(text, {.add_bos = tokenizer.add_bos_token(), .parse_special = true});
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= tm.config().vocab_size) {
      Fail(o.data, ": token ", i, " has id ", tokens[i], ", outside the model's vocabulary (",
           tm.config().vocab_size, "): the tokenizer does not match the model");
    }
  }
  const auto token_count = tokens.size();
  TokenWindows windows(std::move(tokens), o.ctx, o.data);

  std::ofstream log;
  if (!o.log.empty()) {
    log.open(o.log, std::ios::trunc);
    if (!log) Fail(o.log, ": cannot open the log for writing");
  }
  std::fprintf(stderr,
               "train: %s, %.2fM trainable + %.2fM frozen parameters (blocks %d..%d trained); %zu "
               "tokens, %lld windows of %lld; batch %lld\n",
               tm.model().source().c_str(), static_cast<double>(tm.parameter_count()) / 1e6,
               static_cast<double>(tm.frozen_count()) / 1e6, tm.lowest_trainable_layer(),
               tm.config().num_layers - 1, token_count, static_cast<long long>(windows.count()),
               static_cast<long long>(o.ctx), static_cast<long long>(o.batch));

  TrainStep step(tm, o.recompute);
  const bool terminal = isatty(fileno(stderr)) != 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t k = 0; k < o.steps; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    TokenBatch b;
    for (int64_t j = 0; j < o.batch; ++j) {
      windows.Append(windows.WindowOf(k * o.batch + j, o.shuffle, o.seed), &b);
    }
    b.normalizer = static_cast<double>(o.batch * o.ctx);
    tm.ZeroGrads();
    const double loss = step.LanguageModelLoss(b);
    const double norm = GradNorm(tm.parameters());
    if (!std::isfinite(loss) || !std::isfinite(norm)) {
      Fail("step ", k + 1, ": the loss is ", loss, " and the gradient norm ", norm,
           "; stopping before the update (nothing written to ", o.out,
           "); try a lower --lr or --grad-clip");
    }
    if (o.grad_clip > 0) ClipGrads(tm.parameters(), norm, o.grad_clip);
    AdamWStep(tm.parameters(), k + 1, o.lr, o.adam);
    const auto t1 = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(t1 - t0).count();
    const double tokens_per_s = static_cast<double>(o.batch * o.ctx) / seconds;
    if (log) {
      const nlohmann::json line = {{"step", k + 1},        {"loss", loss},
                                   {"lr", o.lr},           {"grad_norm", norm},
                                   {"tokens_per_s", tokens_per_s}};
      log << line.dump() << "\n" << std::flush;
    }
    // A terminal gets one line rewritten in place; a file or pipe every 5% of the run.
    const bool last = k + 1 == o.steps;
    if (!o.quiet && (terminal || last || (k + 1) % std::max<int64_t>(1, o.steps / 20) == 0)) {
      const double elapsed = std::chrono::duration<double>(t1 - start).count();
      const double eta = elapsed / static_cast<double>(k + 1) * static_cast<double>(o.steps - k - 1);
      std::fprintf(stderr, "%sstep %lld/%lld  loss %.4f  grad_norm %.3f  %.0f tok/s  ETA %s%s",
                   terminal ? "\r" : "", static_cast<long long>(k + 1),
                   static_cast<long long>(o.steps), loss, norm, tokens_per_s,
                   Duration(eta).c_str(), terminal && !last ? "   " : "\n");
    }
  }
  const uint64_t param_bytes = tm.parameter_count() * sizeof(float);
  std::fprintf(stderr,
               "memory: parameters %.1f MiB + gradients %.1f MiB + AdamW moments %.1f MiB + "
               "activations %.1f MiB%s\n",
               MiB(param_bytes), MiB(param_bytes), MiB(2 * param_bytes),
               MiB(step.activation_bytes()), o.recompute ? " (recomputed per block)" : "");
  SaveHuggingFace(tm, o.out, tokenizer_source);
  std::fprintf(stderr, "wrote %s\n", o.out.c_str());
}

}  // namespace starling
