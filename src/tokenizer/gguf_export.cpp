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
  if (IsDirectory(source) || ReadFilePrefix(source, 4) != "GGUF") {
    WriteTokenizerToGguf(source, writer);
    return;
  }
  const GgufFile gguf = GgufFile::Open(source);
  for (const GgufKeyValue& kv : gguf.metadata()) {
    if (kv.key.rfind("tokenizer.", 0) == 0) writer->AddValue(kv.key, kv.value);
  }
}

}  // namespace starling
