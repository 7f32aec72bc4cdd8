#include "tokenizer/gguf_export.h"

#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/file.h"
#include "formats/gguf.h"
#include "tokenizer/load.h"

namespace starling {

void WriteTokenizerToGguf(const std::string& path, GgufWriter* writer) {
  const bool directory = IsDirectory(path);
  const std::string model_path = directory ? path + "/tokenizer.model" : path;
  const SentencePieceVocab vocab = LoadSentencePieceModel(model_path);
  // The loaded tokenizer resolves added tokens, bos/eos names and specialness exactly as
  // encoding does; the raw vocabulary supplies scores and piece types.
  const Tokenizer tokenizer = LoadTokenizer(path);
  const auto base = static_cast<int32_t>(vocab.pieces.size());
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
    tokens.push_back(tokenizer.Piece(id));
    if (id < base) {
      scores.push_back(vocab.scores[id]);
      types.push_back(static_cast<int32_t>(vocab.types[id]));
    } else {
      scores.push_back(0.0f);
      types.push_back(static_cast<int32_t>(tokenizer.IsSpecial(id) ? PieceType::kControl
                                                                   : PieceType::kUserDefined));
    }
  }
  writer->AddString("tokenizer.ggml.model", "llama");
  writer->AddStringArray("tokenizer.ggml.tokens", tokens);
  writer->AddFloat32Array("tokenizer.ggml.scores", scores);
  writer->AddInt32Array("tokenizer.ggml.token_type", types);
  if (tokenizer.bos_id() >= 0) {
    writer->AddUint32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tokenizer.bos_id()));
  }
  if (tokenizer.eos_id() >= 0) {
    writer->AddUint32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tokenizer.eos_id()));
  }
  writer->AddUint32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(tokenizer.unk_id()));
  writer->AddBool("tokenizer.ggml.add_bos_token", tokenizer.add_bos_token());
  writer->AddBool("tokenizer.ggml.add_eos_token", false);
  if (!vocab.add_dummy_prefix) writer->AddBool("tokenizer.ggml.add_space_prefix", false);
  const std::string chat_template = LoadChatTemplateJinja(path);
  if (!chat_template.empty()) writer->AddString("tokenizer.chat_template", chat_template);
}

void CopyTokenizerToGguf(const std::string& source, GgufWriter* writer) {
  const std::string file = GgufTokenizerFile(source);
  if (file.empty()) {
    WriteTokenizerToGguf(source, writer);
    return;
  }
  const GgufFile gguf = GgufFile::Open(file);
  for (const GgufKeyValue& kv : gguf.metadata()) {
    if (kv.key.rfind("tokenizer.", 0) == 0) writer->AddValue(kv.key, kv.value);
  }
}

int32_t CopyTokenizerToGguf(const std::string& source, const TokenizerAdditions& additions,
                            GgufWriter* writer) {
  // Read the tokenizer as GGUF metadata whatever its source, then rewrite the keys that change.
  std::string converted;
  GgufFile gguf = [&] {
    if (const std::string file = GgufTokenizerFile(source); !file.empty()) {
      return GgufFile::Open(file);
    }
    GgufWriter temp;
    WriteTokenizerToGguf(source, &temp);
    converted = temp.Finish();
    return GgufFile::Parse(converted, source);
  }();
  std::vector<std::string> tokens = gguf.GetStringArray("tokenizer.ggml.tokens");
  std::vector<float> scores = gguf.Has("tokenizer.ggml.scores")
                                  ? gguf.GetFloatArray("tokenizer.ggml.scores")
                                  : std::vector<float>(tokens.size(), 0.0f);
  std::vector<int32_t> types;
  if (gguf.Has("tokenizer.ggml.token_type")) {
    for (const int64_t t : gguf.GetIntArray("tokenizer.ggml.token_type")) {
      types.push_back(static_cast<int32_t>(t));
    }
  } else {
    types.assign(tokens.size(), static_cast<int32_t>(PieceType::kNormal));
  }
  if (scores.size() != tokens.size() || types.size() != tokens.size()) {
    Fail(source, ": ", tokens.size(), " tokens but ", scores.size(), " scores and ", types.size(),
         " token types");
  }
  auto find = [&](const std::string& piece) -> int64_t {
    for (size_t id = 0; id < tokens.size(); ++id) {
      if (tokens[id] == piece) return static_cast<int64_t>(id);
    }
    return -1;
  };
  for (const std::string& token : additions.special_tokens) {
    if (token.empty()) Fail(source, ": a token to add is empty");
    const int64_t id = find(token);
    if (id >= 0) Fail(source, ": '", token, "' is already token ", id);
    tokens.push_back(token);
    scores.push_back(0.0f);
    types.push_back(static_cast<int32_t>(PieceType::kControl));
  }
  int64_t eos = -1;
  if (!additions.eos_token.empty()) {
    eos = find(additions.eos_token);
    if (eos < 0)
      Fail(source, ": the EOS token '", additions.eos_token, "' is not in the vocabulary");
  }
  for (const GgufKeyValue& kv : gguf.metadata()) {
    if (kv.key.rfind("tokenizer.", 0) != 0) continue;
    if (kv.key == "tokenizer.ggml.tokens" || kv.key == "tokenizer.ggml.scores" ||
        kv.key == "tokenizer.ggml.token_type" ||
        (eos >= 0 && kv.key == "tokenizer.ggml.eos_token_id") ||
        (!additions.chat_template.empty() && kv.key == "tokenizer.chat_template")) {
      continue;
    }
    writer->AddValue(kv.key, kv.value);
  }
  writer->AddStringArray("tokenizer.ggml.tokens", tokens);
  writer->AddFloat32Array("tokenizer.ggml.scores", scores);
  writer->AddInt32Array("tokenizer.ggml.token_type", types);
  if (eos >= 0) writer->AddUint32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(eos));
  if (!additions.chat_template.empty()) {
    writer->AddString("tokenizer.chat_template", additions.chat_template);
  }
  return static_cast<int32_t>(tokens.size());
}

}  // namespace starling
