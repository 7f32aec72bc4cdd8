#include "model/hf_config.h"

#include "formats/json.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "core/error.h"
#include "core/file.h"

namespace starling {
namespace {

using Json = nlohmann::json;

constexpr const char* kSupportedArchitectures[] = {
    "MistralForCausalLM",
    "LlamaForCausalLM",
    "MistralForSequenceClassification",
    "LlamaForSequenceClassification",
};

std::string Describe(const Json& value) {
  // Concat rather than operator+: GCC 12 warns falsely (-Wrestrict) on "literal" + string.
  if (value.is_number() || value.is_boolean()) return Concat(value.type_name(), " ", value.dump());
  if (value.is_string()) {
    std::string text = value.get<std::string>();
    if (text.size() > 40) text = text.substr(0, 40) + "...";
    return "string \"" + text + "\"";
  }
  return value.type_name();
}

std::string JoinPath(const std::string& dir, const char* name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

Json ParseObject(std::string_view text, const std::string& source) {
  const Json json = ParseStrictJson(text, source, "", /*allow_duplicate_keys=*/true);
  if (!json.is_object()) Fail(source, ": expected a JSON object, found ", Describe(json));
  return json;
}

// Typed access to one JSON object; every error names the file and the key. Find and the typed
// getters treat a key set to null as absent (None in transformers mostly means "use the
// default"); Has tells the two apart for the keys where transformers does too.
class Keys {
 public:
  Keys(const Json& json, const std::string& source) : json_(json), source_(source) {}

  const std::string& source() const { return source_; }

  // nullptr when absent or null.
  const Json* Find(const char* key) const {
    const auto it = json_.find(key);
    return it == json_.end() || it->is_null() ? nullptr : &*it;
  }
  bool Has(const char* key) const { return json_.contains(key); }  // null included

  template <typename... Parts>
  [[noreturn]] void FailKey(const char* key, Parts&&... parts) const {
    Fail(source_, ": \"", key, "\" ", std::forward<Parts>(parts)...);
  }

  int32_t ToInt32(const char* key, const Json& value) const {
    if (!value.is_number_integer()) FailKey(key, "must be an integer, found ", Describe(value));
    if (value.is_number_unsigned()) {
      const uint64_t v = value.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
        FailKey(key, "= ", v, " does not fit in a 32-bit integer");
      }
      return static_cast<int32_t>(v);
    }
    const int64_t v = value.get<int64_t>();
    if (v < std::numeric_limits<int32_t>::min()) {
      FailKey(key, "= ", v, " does not fit in a 32-bit integer");
    }
    return static_cast<int32_t>(v);
  }

  int32_t RequiredInt(const char* key) const {
    const Json* value = Find(key);
    if (value == nullptr) Fail(source_, ": missing required key \"", key, "\"");
    return ToInt32(key, *value);
  }
  std::optional<int32_t> OptionalInt(const char* key) const {
    const Json* value = Find(key);
    if (value == nullptr) return std::nullopt;
    return ToInt32(key, *value);
  }

  // Any JSON number (configs write rope_theta as 10000 or 10000.0 alike), as a finite float.
  float Float(const char* key, float fallback) const {
    const Json* value = Find(key);
    if (value == nullptr) return fallback;
    if (!value->is_number()) FailKey(key, "must be a number, found ", Describe(*value));
    const auto f = static_cast<float>(value->get<double>());
    if (!std::isfinite(f)) FailKey(key, "= ", value->dump(), " does not fit in a float");
    return f;
  }

  bool Bool(const char* key, bool fallback) const {
    const Json* value = Find(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) FailKey(key, "must be true or false, found ", Describe(*value));
    return value->get<bool>();
  }

  std::optional<std::string> String(const char* key) const {
    const Json* value = Find(key);
    if (value == nullptr) return std::nullopt;
    if (!value->is_string()) FailKey(key, "must be a string, found ", Describe(*value));
    return value->get<std::string>();
  }

  // An id or a list of ids ("eos_token_id": 2 or [2, 32000]); duplicates dropped, order kept.
  std::vector<int32_t> IdList(const char* key, const Json& value) const {
    std::vector<int32_t> ids;
    auto add = [&](int32_t id) {
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    };
    if (value.is_array()) {
      for (const Json& element : value) {
        if (!element.is_number_integer()) {
          FailKey(key, "must be an integer or a list of integers, found a list holding ",
                  Describe(element));
        }
        add(ToInt32(key, element));
      }
    } else if (value.is_number_integer()) {
      add(ToInt32(key, value));
    } else {
      FailKey(key, "must be an integer or a list of integers, found ", Describe(value));
    }
    return ids;
  }

 private:
  const Json& json_;
  const std::string& source_;
};

// The rope settings of either spelling: "rope_theta" + "rope_scaling" (transformers 4.x) or
// "rope_parameters" {"rope_type", "rope_theta"} (transformers 5). Only unscaled ("default") rope
// is supported.
float RopeTheta(const Keys& keys) {
  auto check_type = [&](const char* key, const Json& value) {
    if (!value.is_object()) keys.FailKey(key, "must be an object or null, found ", Describe(value));
    for (const char* type_key : {"rope_type", "type"}) {
      const auto it = value.find(type_key);
      if (it == value.end()) continue;
      if (!it->is_string() || it->get<std::string>() != "default") {
        Fail(keys.source(), ": \"", key, "\" asks for rope scaling (", type_key, " ", Describe(*it),
             "), which is not supported yet");
      }
    }
  };
  if (const Json* scaling = keys.Find("rope_scaling")) {
    check_type("rope_scaling", *scaling);
    // A scaling object without a "default" type is a scaling we do not implement.
    if (!scaling->contains("rope_type") && !scaling->contains("type")) {
      Fail(keys.source(), ": \"rope_scaling\" = ", scaling->dump(),
           " asks for rope scaling, which is not supported yet");
    }
  }
  float theta = keys.Float("rope_theta", 10000.0f);
  if (const Json* params = keys.Find("rope_parameters")) {
    check_type("rope_parameters", *params);
    // Nested rope_parameters per attention type ({"full_attention": {...}}) are not Llama's.
    const Keys inner(*params, keys.source());
    theta = inner.Float("rope_theta", theta);
  }
  return theta;
}

// The first supported entry of "architectures", or the causal-LM class of "model_type".
std::string Architecture(const Keys& keys) {
  auto supported = [](const std::string& name) {
    return std::find(std::begin(kSupportedArchitectures), std::end(kSupportedArchitectures),
                     name) != std::end(kSupportedArchitectures);
  };
  if (const Json* list = keys.Find("architectures")) {
    if (!list->is_array()) {
      keys.FailKey("architectures", "must be a list of strings, found ", Describe(*list));
    }
    std::string names;
    for (const Json& entry : *list) {
      if (!entry.is_string()) {
        keys.FailKey("architectures", "must be a list of strings, found a list holding ",
                     Describe(entry));
      }
      const std::string& name = entry.get_ref<const std::string&>();
      if (supported(name)) return name;
      names += Concat(names.empty() ? "" : ", ", name);
    }
    Fail(keys.source(), ": unsupported architecture ",
         names.empty() ? std::string("(the \"architectures\" list is empty)") : names,
         "; supported: MistralForCausalLM, LlamaForCausalLM, MistralForSequenceClassification, "
         "LlamaForSequenceClassification");
  }
  const std::optional<std::string> model_type = keys.String("model_type");
  if (!model_type) Fail(keys.source(), ": has neither \"architectures\" nor \"model_type\"");
  if (*model_type == "mistral") return "MistralForCausalLM";
  if (*model_type == "llama") return "LlamaForCausalLM";
  Fail(keys.source(), ": unsupported model_type \"", *model_type, "\"; supported: mistral, llama");
}

}  // namespace

ModelConfig ParseHuggingFaceConfig(std::string_view config_json,
                                   std::string_view generation_config_json,
                                   const std::string& source_dir) {
  const std::string source = JoinPath(source_dir, "config.json");
  const Json json = ParseObject(config_json, source);
  const Keys keys(json, source);

  ModelConfig c;
  c.architecture = Architecture(keys);
  // Defaults differ between the two transformers config classes; the architecture decides.
  const bool mistral = c.architecture.starts_with("Mistral");

  c.vocab_size = keys.RequiredInt("vocab_size");
  c.hidden_size = keys.RequiredInt("hidden_size");
  c.intermediate_size = keys.RequiredInt("intermediate_size");
  c.num_layers = keys.RequiredInt("num_hidden_layers");
  c.num_heads = keys.RequiredInt("num_attention_heads");
  if (c.num_heads <= 0) {
    Fail(source, ": num_attention_heads = ", c.num_heads, " must be positive");
  }
  // MistralConfig defaults an absent num_key_value_heads to 8 and only an explicit null to the
  // head count; LlamaConfig defaults both to the head count.
  if (const std::optional<int32_t> kv = keys.OptionalInt("num_key_value_heads")) {
    c.num_kv_heads = *kv;
  } else {
    c.num_kv_heads = mistral && !keys.Has("num_key_value_heads") ? 8 : c.num_heads;
  }
  if (const std::optional<int32_t> head_dim = keys.OptionalInt("head_dim")) {
    c.head_dim = *head_dim;
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      Fail(source, ": hidden_size (", c.hidden_size, ") is not divisible by num_attention_heads (",
           c.num_heads, "), and head_dim is not set");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.rope_dim = c.head_dim;
  c.rope_layout = RopeLayout::kHalves;
  c.rope_theta = RopeTheta(keys);
  c.rms_norm_eps = keys.Float("rms_norm_eps", 1e-6f);
  // Only Mistral's attention reads sliding_window (default 4096 when absent, none when null);
  // transformers' Llama ignores the key, so a Llama config with one still attends to everything.
  if (mistral) {
    c.sliding_window =
        keys.Has("sliding_window") ? keys.OptionalInt("sliding_window").value_or(0) : 4096;
  } else {
    c.sliding_window = 0;
  }
  c.max_position_embeddings =
      keys.OptionalInt("max_position_embeddings").value_or(mistral ? 4096 * 32 : 2048);
  c.tie_word_embeddings = keys.Bool("tie_word_embeddings", false);

  if (const std::optional<std::string> act = keys.String("hidden_act"); act && *act != "silu") {
    Fail(source, ": hidden_act \"", *act, "\" is not supported (only \"silu\")");
  }
  for (const char* bias : {"attention_bias", "mlp_bias"}) {
    if (keys.Bool(bias, false)) {
      Fail(source, ": \"", bias, "\" is true; biased projections are not supported");
    }
  }

  // transformers' defaults are bos 1 and eos 2; an explicit null means "no such token".
  c.bos_token_id = keys.Has("bos_token_id") ? keys.OptionalInt("bos_token_id").value_or(-1) : 1;
  c.eos_token_ids = {2};
  if (keys.Has("eos_token_id")) {
    const Json* eos = keys.Find("eos_token_id");
    c.eos_token_ids = eos == nullptr ? std::vector<int32_t>{} : keys.IdList("eos_token_id", *eos);
  }

  // generate() stops on generation_config.json's ids when it has them. A null there means
  // "unset" (GenerationConfig's default), so config.json's value stands.
  if (!generation_config_json.empty()) {
    const std::string gen_source = JoinPath(source_dir, "generation_config.json");
    const Json gen_json = ParseObject(generation_config_json, gen_source);
    const Keys gen(gen_json, gen_source);
    if (const Json* eos = gen.Find("eos_token_id")) {
      c.eos_token_ids = gen.IdList("eos_token_id", *eos);
    }
    if (const std::optional<int32_t> bos = gen.OptionalInt("bos_token_id")) c.bos_token_id = *bos;
  }

  if (c.architecture.ends_with("ForSequenceClassification")) c.head = ModelHead::kReward;
  c.Validate(source);
  return c;
}

ModelConfig LoadHuggingFaceConfig(const std::string& dir) {
  const std::string config_path = JoinPath(dir, "config.json");
  const std::string generation_path = JoinPath(dir, "generation_config.json");
  const std::string config = ReadFile(config_path);
  const std::string generation = FileExists(generation_path) ? ReadFile(generation_path) : "";
  return ParseHuggingFaceConfig(config, generation, dir);
}

std::string HuggingFaceConfigJson(const ModelConfig& c, const std::string& torch_dtype) {
  const bool reward = c.head == ModelHead::kReward;
  const bool llama = c.architecture.rfind("Llama", 0) == 0 || c.architecture == "llama";
  std::string architecture = c.architecture;
  if (architecture == "llama") architecture = "LlamaForCausalLM";  // GGUF's name
  const nlohmann::json config = {
      {"architectures", {architecture}},
      {"model_type", llama ? "llama" : "mistral"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"hidden_act", "silu"},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"sliding_window",
       c.sliding_window > 0 ? nlohmann::json(c.sliding_window) : nlohmann::json()},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"bos_token_id", c.bos_token_id},
      {"eos_token_id", c.eos_token_ids.size() == 1 ? nlohmann::json(c.eos_token_ids.front())
                                                   : nlohmann::json(c.eos_token_ids)},
      {"num_labels", reward ? nlohmann::json(1) : nlohmann::json()},
      {"torch_dtype", torch_dtype},
  };
  nlohmann::json out = config;
  if (!reward) out.erase("num_labels");
  return out.dump(2) + "\n";
}

}  // namespace starling
