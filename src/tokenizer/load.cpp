#include "tokenizer/load.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file.h"
#include "formats/gguf.h"
#include "formats/json.h"

namespace starling {
namespace {

using Json = nlohmann::json;

Json ParseJson(const std::string& text, const std::string& name) {
  return ParseStrictJson(text, name, "", /*allow_duplicate_keys=*/true);
}

// A special-token entry is either a string or an object with "content".
std::string TokenContent(const Json& value, const std::string& where) {
  if (value.is_null()) return {};
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  Fail(where, ": expected a string or an object with a string \"content\"");
}

bool BoolField(const Json& object, const char* key, bool fallback, const std::string& where) {
  if (!object.contains(key) || object[key].is_null()) return fallback;
  if (!object[key].is_boolean()) Fail(where, ": \"", key, "\" must be true or false");
  return object[key].get<bool>();
}

// Merges one added token into `tokens` (keyed by id), checking that files agree.
void AddToken(std::map<int32_t, AddedToken>* tokens, AddedToken token, const std::string& where) {
  if (token.id < 0 || token.id >= (1 << 24)) Fail(where, ": token id ", token.id, " is invalid");
  if (token.content.empty()) Fail(where, ": token ", token.id, " has empty content");
  const auto [it, inserted] = tokens->emplace(token.id, token);
  if (!inserted && it->second.content != token.content) {
    Fail(where, ": id ", token.id, " is '", token.content, "' here but '", it->second.content,
         "' in another tokenizer file");
  }
}

AddedToken AddedTokenFromObject(const Json& entry, int32_t id, const std::string& where) {
  if (!entry.is_object()) Fail(where, ": expected an object");
  AddedToken token;
  token.id = id;
  token.content = TokenContent(entry, where);
  token.special = BoolField(entry, "special", true, where);
  token.lstrip = BoolField(entry, "lstrip", false, where);
  token.rstrip = BoolField(entry, "rstrip", false, where);
  return token;
}

int32_t ParseId(const Json& value, const std::string& where) {
  if (!value.is_number_integer()) Fail(where, ": token id must be an integer");
  const int64_t id = value.get<int64_t>();
  if (id < 0 || id >= (1 << 24)) Fail(where, ": token id ", id, " is out of range");
  return static_cast<int32_t>(id);
}

}  // namespace

HuggingFaceTokenizerInfo ParseHuggingFaceTokenizerFiles(const HuggingFaceTokenizerFiles& files,
                                                        const std::string& directory) {
  HuggingFaceTokenizerInfo info;
  std::map<int32_t, AddedToken> tokens;
  std::vector<std::string> special_contents;

  if (!files.tokenizer_config_json.empty()) {
    const std::string name = directory + "/tokenizer_config.json";
    const Json config = ParseJson(files.tokenizer_config_json, name);
    if (!config.is_object()) Fail(name, ": expected a JSON object");
    if (config.contains("added_tokens_decoder")) {
      const Json& decoder = config["added_tokens_decoder"];
      if (!decoder.is_object()) Fail(name, ": \"added_tokens_decoder\" must be an object");
      for (const auto& [key, entry] : decoder.items()) {
        const std::string where = name + ": added_tokens_decoder[\"" + key + "\"]";
        char* end = nullptr;
        const long id = std::strtol(key.c_str(), &end, 10);
        if (key.empty() || *end != '\0' || id < 0 || id >= (1 << 24)) {
          Fail(where, ": key must be a token id");
        }
        AddToken(&tokens, AddedTokenFromObject(entry, static_cast<int32_t>(id), where), where);
      }
    }
    for (const auto& [key, target] :
         {std::pair{"bos_token", &info.bos_token}, std::pair{"eos_token", &info.eos_token},
          std::pair{"unk_token", &info.unk_token}}) {
      if (config.contains(key)) *target = TokenContent(config[key], name + ": " + key);
    }
    info.legacy = BoolField(config, "legacy", true, name);
    info.add_bos_token = BoolField(config, "add_bos_token", true, name);
    if (config.contains("chat_template")) {
      if (!config["chat_template"].is_string()) {
        Fail(name, ": \"chat_template\" must be a string (named templates are not supported)");
      }
      info.chat_template = config["chat_template"].get<std::string>();
    }
  }

  if (!files.special_tokens_map_json.empty()) {
    const std::string name = directory + "/special_tokens_map.json";
    const Json map = ParseJson(files.special_tokens_map_json, name);
    if (!map.is_object()) Fail(name, ": expected a JSON object");
    for (const auto& [key, value] : map.items()) {
      if (value.is_array()) {
        for (const Json& item : value)
          special_contents.push_back(TokenContent(item, name + ": " + key));
      } else {
        const std::string content = TokenContent(value, name + ": " + key);
        special_contents.push_back(content);
        if (key == "bos_token" && info.bos_token.empty()) info.bos_token = content;
        if (key == "eos_token" && info.eos_token.empty()) info.eos_token = content;
        if (key == "unk_token" && info.unk_token.empty()) info.unk_token = content;
      }
    }
  }

  if (!files.tokenizer_json.empty()) {
    const std::string name = directory + "/tokenizer.json";
    const Json tokenizer = ParseJson(files.tokenizer_json, name);
    if (!tokenizer.is_object()) Fail(name, ": expected a JSON object");
    if (tokenizer.contains("added_tokens")) {
      const Json& list = tokenizer["added_tokens"];
      if (!list.is_array()) Fail(name, ": \"added_tokens\" must be a list");
      for (size_t i = 0; i < list.size(); ++i) {
        const std::string where = Concat(name, ": added_tokens[", i, "]");
        if (!list[i].is_object() || !list[i].contains("id")) Fail(where, ": needs \"id\"");
        AddToken(&tokens, AddedTokenFromObject(list[i], ParseId(list[i]["id"], where), where),
                 where);
      }
    }
  }

  if (!files.added_tokens_json.empty()) {
    const std::string name = directory + "/added_tokens.json";
    const Json added = ParseJson(files.added_tokens_json, name);
    if (!added.is_object()) Fail(name, ": expected an object mapping token text to id");
    for (const auto& [content, value] : added.items()) {
      const std::string where = name + ": \"" + content + "\"";
      AddedToken token;
      token.content = content;
      token.id = ParseId(value, where);
      // added_tokens.json does not say which tokens are special: the special-token map does.
      const auto existing = tokens.find(token.id);
      token.special = existing != tokens.end()
                          ? existing->second.special
                          : std::find(special_contents.begin(), special_contents.end(), content) !=
                                special_contents.end();
      AddToken(&tokens, token, where);
    }
  }

  for (auto& [id, token] : tokens) info.added_tokens.push_back(token);
  return info;
}

Tokenizer LoadSentencePieceTokenizer(const std::string& path) {
  SentencePieceVocab vocab = LoadSentencePieceModel(path);
  std::vector<AddedToken> added;
  for (size_t id = 0; id < vocab.pieces.size(); ++id) {
    if (vocab.types[id] == PieceType::kControl || vocab.types[id] == PieceType::kUnknown) {
      added.push_back({vocab.pieces[id], static_cast<int32_t>(id), true, false, false});
    }
  }
  return Tokenizer(std::move(vocab), std::move(added), path);
}

Tokenizer LoadHuggingFaceTokenizer(const std::string& directory) {
  const std::string model_path = directory + "/tokenizer.model";
  if (!FileExists(model_path)) {
    Fail(directory, ": no tokenizer.model (only SentencePiece tokenizers are supported)");
  }
  SentencePieceVocab vocab = LoadSentencePieceModel(model_path);
  HuggingFaceTokenizerFiles files;
  auto read_if_present = [&](const char* name, std::string* out) {
    const std::string path = directory + "/" + name;
    if (FileExists(path)) *out = ReadFile(path);
  };
  read_if_present("added_tokens.json", &files.added_tokens_json);
  read_if_present("tokenizer_config.json", &files.tokenizer_config_json);
  read_if_present("tokenizer.json", &files.tokenizer_json);
  read_if_present("special_tokens_map.json", &files.special_tokens_map_json);
  HuggingFaceTokenizerInfo info = ParseHuggingFaceTokenizerFiles(files, directory);

  // Control and unknown pieces are special even where no file lists them.
  std::vector<AddedToken> added = info.added_tokens;
  for (size_t id = 0; id < vocab.pieces.size(); ++id) {
    const bool listed = std::any_of(added.begin(), added.end(), [&](const AddedToken& t) {
      return t.id == static_cast<int32_t>(id);
    });
    if (!listed &&
        (vocab.types[id] == PieceType::kControl || vocab.types[id] == PieceType::kUnknown)) {
      added.push_back({vocab.pieces[id], static_cast<int32_t>(id), true, false, false});
    }
  }
  auto id_of = [&](const std::string& content, const char* what) -> int32_t {
    for (const AddedToken& t : added) {
      if (t.content == content) return t.id;
    }
    for (size_t id = 0; id < vocab.pieces.size(); ++id) {
      if (vocab.pieces[id] == content) return static_cast<int32_t>(id);
    }
    Fail(directory, ": ", what, " '", content, "' is not in the vocabulary");
  };
  if (!info.bos_token.empty()) vocab.bos_id = id_of(info.bos_token, "bos_token");
  if (!info.eos_token.empty()) vocab.eos_id = id_of(info.eos_token, "eos_token");
  Tokenizer tokenizer(std::move(vocab), std::move(added), directory);
  tokenizer.set_add_bos_token(info.add_bos_token);
  tokenizer.set_legacy(info.legacy);
  return tokenizer;
}

Tokenizer LoadGgufTokenizer(const GgufFile& gguf, const std::string& source) {
  const std::string model = gguf.GetString("tokenizer.ggml.model");
  if (model != "llama") {
    Fail(source, ": tokenizer.ggml.model is '", model,
         "'; only 'llama' (SentencePiece BPE) is supported");
  }
  SentencePieceVocab vocab;
  vocab.pieces = gguf.GetStringArray("tokenizer.ggml.tokens");
  const size_t n = vocab.pieces.size();
  if (gguf.Has("tokenizer.ggml.scores")) {
    vocab.scores = gguf.GetFloatArray("tokenizer.ggml.scores");
  } else {
    vocab.scores.assign(n, 0.0f);
  }
  const std::vector<int64_t> types = gguf.Has("tokenizer.ggml.token_type")
                                         ? gguf.GetIntArray("tokenizer.ggml.token_type")
                                         : std::vector<int64_t>(n, 1);
  if (vocab.scores.size() != n || types.size() != n) {
    Fail(source, ": ", n, " tokens but ", vocab.scores.size(), " scores and ", types.size(),
         " token types");
  }
  std::vector<AddedToken> added;
  for (size_t id = 0; id < n; ++id) {
    const int64_t type = types[id];
    if (type < 1 || type > 6) Fail(source, ": token ", id, " has unknown token_type ", type);
    vocab.types.push_back(static_cast<PieceType>(type));
    if (vocab.types[id] == PieceType::kByte) vocab.byte_fallback = true;
    // Control and user-defined tokens are what Hugging Face calls added tokens; they are
    // matched in text only as added tokens, never inside BPE.
    if (type == 3 || type == 2 || type == 4) {
      added.push_back({vocab.pieces[id], static_cast<int32_t>(id), type != 4, false, false});
      if (type == 4) vocab.types[id] = PieceType::kControl;
    }
  }
  auto optional_id = [&](const char* key, int32_t fallback) -> int32_t {
    if (!gguf.Has(key)) return fallback;
    const int64_t id = gguf.GetInt(key);
    // llama.cpp's converter writes -1 (as uint32 0xFFFFFFFF) for "no such token".
    if (id == -1 || id == 0xFFFFFFFFll) return -1;
    if (id < 0 || static_cast<uint64_t>(id) >= n) {
      Fail(source, ": ", key, " = ", id, " is out of range (", n, " tokens)");
    }
    return static_cast<int32_t>(id);
  };
  vocab.bos_id = optional_id("tokenizer.ggml.bos_token_id", -1);
  vocab.eos_id = optional_id("tokenizer.ggml.eos_token_id", -1);
  vocab.pad_id = optional_id("tokenizer.ggml.padding_token_id", -1);
  vocab.unk_id = -1;
  for (size_t id = 0; id < n && vocab.unk_id < 0; ++id) {
    if (vocab.types[id] == PieceType::kUnknown) vocab.unk_id = static_cast<int32_t>(id);
  }
  // llama.cpp's converter may mark <unk> as CONTROL and omit unknown_token_id; like
  // llama.cpp, fall back to id 0 then.
  vocab.unk_id = optional_id("tokenizer.ggml.unknown_token_id", std::max(vocab.unk_id, 0));
  if (vocab.unk_id < 0) Fail(source, ": the vocabulary has no unknown token");
  for (AddedToken& token : added) {
    if (token.id == vocab.unk_id) token.special = true;
  }
  vocab.types[vocab.unk_id] = PieceType::kUnknown;
  vocab.add_dummy_prefix = !gguf.Has("tokenizer.ggml.add_space_prefix") ||
                           gguf.GetBool("tokenizer.ggml.add_space_prefix");
  vocab.remove_extra_whitespaces = false;  // GGUF has no key for it; Llama models have none
  vocab.normalizer_name = "identity";
  vocab.Validate(source);
  Tokenizer tokenizer(std::move(vocab), std::move(added), source);
  tokenizer.set_add_bos_token(gguf.GetBoolOr("tokenizer.ggml.add_bos_token", true));
  return tokenizer;
}

std::string GgufTokenizerFile(const std::string& path) {
  if (IsDirectory(path)) {
    const bool trained =
        !FileExists(path + "/tokenizer.model") && FileExists(path + "/tokenizer.gguf");
    return trained ? path + "/tokenizer.gguf" : std::string();
  }
  return ReadFilePrefix(path, 4) == "GGUF" ? path : std::string();
}

std::string LoadChatTemplateJinja(const std::string& path) {
  if (const std::string gguf = GgufTokenizerFile(path); !gguf.empty()) {
    return GgufFile::Open(gguf).GetStringOr("tokenizer.chat_template", "");
  }
  const std::string config = path + "/tokenizer_config.json";
  if (!IsDirectory(path) || !FileExists(config)) return {};
  return ParseHuggingFaceTokenizerFiles({.tokenizer_config_json = ReadFile(config)}, path)
      .chat_template;
}

Tokenizer LoadTokenizer(const std::string& path) {
  if (const std::string gguf = GgufTokenizerFile(path); !gguf.empty()) {
    return LoadGgufTokenizer(GgufFile::Open(gguf), gguf);
  }
  if (IsDirectory(path)) return LoadHuggingFaceTokenizer(path);
  return LoadSentencePieceTokenizer(path);
}

}  // namespace starling
