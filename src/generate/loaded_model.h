// A model with its tokenizer and chat template, loaded from one path: what the CLI and the
// server hold.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "chat/chat_template.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace starling {

struct LoadedModel {
  std::unique_ptr<Model> model;  // stable address: sessions point to it
  std::unique_ptr<Tokenizer> tokenizer;
  std::string chat_template_jinja;  // as the model ships it; may be empty
  std::string source;

  // The template to use: `name` when given, else the model's own when it is exactly one we
  // know; throws starling::Error otherwise (never guesses from substrings).
  const ChatTemplate& ChooseTemplate(std::string_view name) const;
  // The ids that end generation: the model's EOS ids, and the template's end of turn.
  std::vector<int32_t> StopTokens(const ChatTemplate* chat_template) const;
};

// Throws unless every token id `tokenizer` can produce is a row of the model's vocabulary (the
// rule LoadModel applies; `make-model` applies it before writing a model).
void CheckTokenizerFitsModel(const Tokenizer& tokenizer, const ModelConfig& config,
                             const std::string& source);

LoadedModel LoadModel(const std::string& path, const LoadProgress& progress = {});
// A GGUF image in memory (the executable's embedded default model).
LoadedModel LoadModelFromGgufBytes(std::string_view bytes, const std::string& name);

}  // namespace starling
