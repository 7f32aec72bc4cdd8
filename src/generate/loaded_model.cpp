#include "generate/loaded_model.h"

#include <algorithm>

#include "core/error.h"
#include "core/file.h"
#include "formats/gguf.h"
#include "tokenizer/load.h"

namespace starling {

const ChatTemplate& LoadedModel::ChooseTemplate(std::string_view name) const {
  if (!name.empty()) return ChatTemplate::ByName(name);
  if (chat_template_jinja.empty()) {
    Fail(source, " ships no chat template; choose one with --template (",
         "openchat, openchat-code, llama-2, raw)");
  }
  const ChatTemplate* known = ChatTemplate::FromJinja(chat_template_jinja);
  if (known == nullptr) {
    Fail(source,
         " ships a chat template that is not one of the known templates; choose one "
         "with --template (openchat, openchat-code, llama-2, raw)");
  }
  return *known;
}

std::vector<int32_t> LoadedModel::StopTokens(const ChatTemplate* chat_template) const {
  std::vector<int32_t> stops = model->config().eos_token_ids;
  if (tokenizer->eos_id() >= 0) stops.push_back(tokenizer->eos_id());
  if (chat_template != nullptr) {
    if (const auto id = tokenizer->FindAddedToken(chat_template->end_of_turn())) {
      stops.push_back(*id);
    }
  }
  std::sort(stops.begin(), stops.end());
  stops.erase(std::unique(stops.begin(), stops.end()), stops.end());
  return stops;
}

void CheckTokenizerFitsModel(const Tokenizer& tokenizer, const ModelConfig& config,
                             const std::string& source) {
  if (tokenizer.vocab_size() > config.vocab_size) {
    Fail(source, ": the tokenizer has ", tokenizer.vocab_size(),
         " tokens but the model's vocabulary is ", config.vocab_size);
  }
}

namespace {

void CheckVocabulary(const LoadedModel& m) {
  CheckTokenizerFitsModel(*m.tokenizer, m.model->config(), m.source);
}

// Model, tokenizer and template from one parse of the GGUF file.
LoadedModel FromGguf(std::shared_ptr<const GgufFile> gguf, const std::string& name,
                     const LoadProgress& progress) {
  LoadedModel m;
  m.source = name;
  m.model = std::make_unique<Model>(Model::LoadGguf(gguf, progress));
  m.tokenizer = std::make_unique<Tokenizer>(LoadGgufTokenizer(*gguf, name));
  m.chat_template_jinja = gguf->GetStringOr("tokenizer.chat_template", "");
  CheckVocabulary(m);
  return m;
}

}  // namespace

LoadedModel LoadModel(const std::string& path, const LoadProgress& progress) {
  if (!IsDirectory(path) && ReadFilePrefix(path, 4) == "GGUF") {
    return FromGguf(std::make_shared<const GgufFile>(GgufFile::Open(path)), path, progress);
  }
  LoadedModel m;
  m.source = path;
  m.model = std::make_unique<Model>(Model::Load(path, progress));
  m.tokenizer = std::make_unique<Tokenizer>(LoadTokenizer(path));
  m.chat_template_jinja = LoadChatTemplateJinja(path);
  CheckVocabulary(m);
  return m;
}

LoadedModel LoadModelFromGgufBytes(std::string_view bytes, const std::string& name) {
  return FromGguf(std::make_shared<const GgufFile>(GgufFile::Parse(bytes, name)), name, {});
}

}  // namespace starling
