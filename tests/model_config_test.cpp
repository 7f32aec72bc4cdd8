#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "formats/gguf.h"
#include "model/config.h"
#include "model/gguf_config.h"
#include "model/hf_config.h"
#include "test_dir.h"

namespace starling {
namespace {

// The shared tiny-mistral checkpoint's config.json and generation_config.json, verbatim.
constexpr std::string_view kTinyMistralConfig = R"({
  "architectures": [
    "MistralForCausalLM"
  ],
  "model_type": "mistral",
  "vocab_size": 32002,
  "hidden_size": 64,
  "intermediate_size": 176,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "hidden_act": "silu",
  "max_position_embeddings": 8192,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "tie_word_embeddings": false,
  "bos_token_id": 1,
  "eos_token_id": 32000,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "attention_dropout": 0.0,
  "initializer_range": 0.02,
  "sliding_window": 4096
})";
constexpr std::string_view kTinyMistralGenerationConfig = R"({
  "bos_token_id": 1,
  "eos_token_id": 32000,
  "pad_token_id": 0
})";

// A Llama-2-style config (the shape of the shared tiny-rm fixtures' config.json).
constexpr std::string_view kLlamaConfig = R"({
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "vocab_size": 32000,
  "hidden_size": 64,
  "intermediate_size": 172,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 4,
  "hidden_act": "silu",
  "max_position_embeddings": 4096,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "tie_word_embeddings": false,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "pad_token_id": 0,
  "pretraining_tp": 1,
  "attention_bias": false,
  "rope_scaling": null,
  "torch_dtype": "float16"
})";

// The five keys without defaults, plus `extra` (a JSON fragment starting with ", " or empty).
std::string Minimal(std::string_view architecture, std::string_view extra = "") {
  return std::string(R"({"architectures": [")") + std::string(architecture) +
         R"("], "vocab_size": 1000, "hidden_size": 256, "intermediate_size": 512,)"
         R"( "num_hidden_layers": 3, "num_attention_heads": 16)" +
         std::string(extra) + "}";
}

// The Error message of parsing a config ("" if it parses).
std::string ConfigError(std::string_view config, std::string_view generation = "") {
  try {
    ParseHuggingFaceConfig(config, generation, "/models/m");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void ExpectConfigError(std::string_view config, std::initializer_list<std::string_view> parts,
                       std::string_view generation = "") {
  const std::string error = ConfigError(config, generation);
  ASSERT_FALSE(error.empty()) << "parsed without error: " << config;
  EXPECT_EQ(error.rfind("/models/m/", 0), 0u) << error;
  for (const std::string_view part : parts) {
    EXPECT_NE(error.find(part), std::string::npos) << "missing '" << part << "' in: " << error;
  }
}

TEST(ModelConfig, TinyMistral) {
  const ModelConfig c =
      ParseHuggingFaceConfig(kTinyMistralConfig, kTinyMistralGenerationConfig, "tiny");
  EXPECT_EQ(c.architecture, "MistralForCausalLM");
  EXPECT_EQ(c.vocab_size, 32002);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 176);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope_dim, 16);
  EXPECT_EQ(c.rope_layout, RopeLayout::kHalves);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{32000}));
  // Without generation_config.json, config.json's ids stand.
  EXPECT_EQ(ParseHuggingFaceConfig(kTinyMistralConfig, "", "tiny").eos_token_ids,
            (std::vector<int32_t>{32000}));
}

TEST(ModelConfig, LlamaStyle) {
  const ModelConfig c = ParseHuggingFaceConfig(kLlamaConfig, "", "rm");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2}));
}

TEST(ModelConfig, MistralDefaults) {
  // transformers' MistralConfig: 8 KV heads, window 4096, 4096*32 positions, eps 1e-6.
  const ModelConfig c = ParseHuggingFaceConfig(Minimal("MistralForCausalLM"), "", "d");
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope_dim, 16);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2}));
}

TEST(ModelConfig, LlamaDefaults) {
  const ModelConfig c = ParseHuggingFaceConfig(Minimal("LlamaForCausalLM"), "", "d");
  EXPECT_EQ(c.num_kv_heads, 16);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2}));
  // Llama's attention ignores sliding_window, so a Llama config with one has none.
  EXPECT_EQ(
      ParseHuggingFaceConfig(Minimal("LlamaForCausalLM", R"(, "sliding_window": 128)"), "", "d")
          .sliding_window,
      0);
}

TEST(ModelConfig, NullsMeanDefaultsOrNone) {
  const ModelConfig c = ParseHuggingFaceConfig(
      Minimal("MistralForCausalLM", R"(, "num_key_value_heads": null, "head_dim": null,)"
                                    R"( "sliding_window": null, "rope_scaling": null,)"
                                    R"( "bos_token_id": null, "eos_token_id": null,)"
                                    R"( "rope_theta": null, "hidden_act": null)"),
      "", "d");
  EXPECT_EQ(c.num_kv_heads, 16);  // an explicit null is the head count, also for Mistral
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
}

TEST(ModelConfig, ExplicitValues) {
  const ModelConfig c = ParseHuggingFaceConfig(
      Minimal("MistralForCausalLM",
              R"(, "num_key_value_heads": 4, "head_dim": 32, "rope_theta": 1000000,)"
              R"( "rms_norm_eps": 1e-5, "sliding_window": 1024, "max_position_embeddings": 32768,)"
              R"( "tie_word_embeddings": true, "bos_token_id": 5, "eos_token_id": [7, 9, 7])"
              R"(, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0})"),
      "", "d");
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 32);  // need not be hidden_size / heads (as in Mistral-Nemo)
  EXPECT_EQ(c.rope_dim, 32);
  EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);  // rope_parameters (transformers 5) wins
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.sliding_window, 1024);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 5);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{7, 9}));  // duplicates dropped
}

TEST(ModelConfig, Architectures) {
  EXPECT_EQ(
      ParseHuggingFaceConfig(Minimal("MistralForSequenceClassification"), "", "d").architecture,
      "MistralForSequenceClassification");
  EXPECT_EQ(ParseHuggingFaceConfig(Minimal("LlamaForSequenceClassification"), "", "d").architecture,
            "LlamaForSequenceClassification");
  // Without "architectures", model_type decides.
  const std::string body = R"("vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,)"
                           R"( "num_hidden_layers": 1, "num_attention_heads": 8)";
  const ModelConfig mistral =
      ParseHuggingFaceConfig(R"({"model_type": "mistral", )" + body + "}", "", "d");
  EXPECT_EQ(mistral.architecture, "MistralForCausalLM");
  EXPECT_EQ(mistral.sliding_window, 4096);
  EXPECT_EQ(ParseHuggingFaceConfig(
                R"({"model_type": "llama", "architectures": null, )" + body + "}", "", "d")
                .architecture,
            "LlamaForCausalLM");
  // The first supported entry is taken.
  EXPECT_EQ(ParseHuggingFaceConfig(
                R"({"architectures": ["Foo", "LlamaForCausalLM"], )" + body + "}", "", "d")
                .architecture,
            "LlamaForCausalLM");
  ExpectConfigError(
      Minimal("GPT2LMHeadModel"),
      {"config.json: unsupported architecture GPT2LMHeadModel", "supported: MistralForCausalLM"});
  ExpectConfigError(R"({"architectures": [], )" + body + "}",
                    {"unsupported architecture", "list is empty"});
  ExpectConfigError(R"({"architectures": "LlamaForCausalLM", )" + body + "}",
                    {"\"architectures\" must be a list of strings", "found string"});
  ExpectConfigError(R"({"architectures": [3], )" + body + "}",
                    {"\"architectures\" must be a list of strings", "number 3"});
  ExpectConfigError(R"({"model_type": "gpt2", )" + body + "}", {"unsupported model_type \"gpt2\""});
  ExpectConfigError("{" + body + "}", {"neither \"architectures\" nor \"model_type\""});
}

TEST(ModelConfig, GenerationConfigOverrides) {
  const std::string config = Minimal("MistralForCausalLM", R"(, "eos_token_id": 2)");
  ModelConfig c =
      ParseHuggingFaceConfig(config, R"({"eos_token_id": [2, 999], "bos_token_id": 0})", "d");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2, 999}));
  EXPECT_EQ(c.bos_token_id, 0);
  // A null or absent id in generation_config.json leaves config.json's.
  c = ParseHuggingFaceConfig(config, R"({"eos_token_id": null, "do_sample": true})", "d");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2}));
  EXPECT_EQ(c.bos_token_id, 1);
  c = ParseHuggingFaceConfig(config, R"({"eos_token_id": []})", "d");
  EXPECT_TRUE(c.eos_token_ids.empty());

  const std::string gen_error = ConfigError(config, R"({"eos_token_id": "2"})");
  EXPECT_NE(gen_error.find("/models/m/generation_config.json: \"eos_token_id\" must be an integer "
                           "or a list of integers, found string \"2\""),
            std::string::npos)
      << gen_error;
  EXPECT_NE(ConfigError(config, "{").find("generation_config.json: not valid JSON"),
            std::string::npos);
  // Validate sees the merged ids.
  ExpectConfigError(config, {"eos_token_id = 1000 is outside the vocabulary (1000)"},
                    R"({"eos_token_id": [1000]})");
  ExpectConfigError(config, {"bos_token_id = 5000 is outside the vocabulary (1000)"},
                    R"({"bos_token_id": 5000})");
}

TEST(ModelConfig, SpecialTokenIdsOutsideTheVocabularyAreErrors) {
  // A model whose BOS or EOS id has no row would index past the embedding or never stop.
  ExpectConfigError(Minimal("MistralForCausalLM", R"(, "bos_token_id": 1000)"),
                    {"config.json: bos_token_id = 1000 is outside the vocabulary (1000)"});
  ExpectConfigError(Minimal("MistralForCausalLM", R"(, "bos_token_id": -2)"),
                    {"bos_token_id = -2 is outside the vocabulary"});
  ExpectConfigError(Minimal("MistralForCausalLM", R"(, "eos_token_id": [2, 1000])"),
                    {"eos_token_id = 1000 is outside the vocabulary (1000)"});
  ExpectConfigError(Minimal("MistralForCausalLM", R"(, "eos_token_id": -1)"),
                    {"eos_token_id = -1 is outside the vocabulary"});
  // The last id of the vocabulary is fine.
  EXPECT_EQ(
      ConfigError(Minimal("MistralForCausalLM", R"(, "bos_token_id": 999, "eos_token_id": 999)")),
      "");
}

TEST(ModelConfig, WrongTypes) {
  ExpectConfigError(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 100,)"
                    R"( "hidden_size": "64", "intermediate_size": 128, "num_hidden_layers": 1,)"
                    R"( "num_attention_heads": 4})",
                    {"config.json: \"hidden_size\" must be an integer, found string \"64\""});
  ExpectConfigError(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 100,)"
                    R"( "hidden_size": 64.0, "intermediate_size": 128, "num_hidden_layers": 1,)"
                    R"( "num_attention_heads": 4})",
                    {"\"hidden_size\" must be an integer, found number 64.0"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "num_key_value_heads": true)"),
                    {"\"num_key_value_heads\" must be an integer, found boolean true"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "head_dim": [16])"),
                    {"\"head_dim\" must be an integer, found array"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "rope_theta": "1e4")"),
                    {"\"rope_theta\" must be a number, found string \"1e4\""});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "rms_norm_eps": {})"),
                    {"\"rms_norm_eps\" must be a number, found object"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "rope_theta": 1e300)"),
                    {"\"rope_theta\" = 1e+300 does not fit in a float"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "tie_word_embeddings": "false")"),
                    {"\"tie_word_embeddings\" must be true or false, found string \"false\""});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "tie_word_embeddings": 0)"),
                    {"\"tie_word_embeddings\" must be true or false, found number 0"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "eos_token_id": [1, "2"])"),
                    {"\"eos_token_id\" must be an integer or a list of integers",
                     "found a list holding string \"2\""});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "eos_token_id": 2.5)"),
                    {"\"eos_token_id\" must be an integer or a list of integers, found number"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "bos_token_id": "1")"),
                    {"\"bos_token_id\" must be an integer"});
  ExpectConfigError(Minimal("MistralForCausalLM", R"(, "sliding_window": false)"),
                    {"\"sliding_window\" must be an integer, found boolean false"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "hidden_act": 1)"),
                    {"\"hidden_act\" must be a string, found number 1"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "model_type": 1, "architectures": null)"),
                    {"\"model_type\" must be a string"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "max_position_embeddings": 4294967296)"),
                    {"\"max_position_embeddings\" = 4294967296 does not fit in a 32-bit integer"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "max_position_embeddings": -4294967296)"),
                    {"\"max_position_embeddings\" = -4294967296 does not fit"});
  ExpectConfigError("[1, 2]", {"config.json: expected a JSON object, found array"});
  ExpectConfigError("{\"a\": ", {"config.json: not valid JSON"});
  ExpectConfigError("", {"config.json: not valid JSON"});
  ExpectConfigError(std::string(kTinyMistralConfig) + std::string("\0{", 2),
                    {"config.json: not valid JSON: NUL byte"});
}

TEST(ModelConfig, MissingRequiredKeys) {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads"}) {
    std::string config = Minimal("MistralForCausalLM");
    const size_t at = config.find(std::string("\"") + key + "\"");
    ASSERT_NE(at, std::string::npos);
    config.replace(at, 1, "\"x_");  // rename the key
    ExpectConfigError(config, {std::string("missing required key \"") + key + "\""});
  }
}

TEST(ModelConfig, InconsistentShapes) {
  ExpectConfigError(
      R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 100,)"
      R"( "hidden_size": 250, "intermediate_size": 128, "num_hidden_layers": 1,)"
      R"( "num_attention_heads": 16})",
      {"hidden_size (250) is not divisible by num_attention_heads (16)", "head_dim is not set"});
  // With head_dim given, hidden_size need not divide.
  EXPECT_EQ(ConfigError(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 100,)"
                        R"( "hidden_size": 250, "intermediate_size": 128, "num_hidden_layers": 1,)"
                        R"( "num_attention_heads": 16, "head_dim": 16})"),
            "");
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "num_key_value_heads": 6)"),
                    {"num_attention_heads (16) is not a multiple of num_key_value_heads (6)"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "num_key_value_heads": 0)"),
                    {"num_key_value_heads = 0 is out of range"});
  ExpectConfigError(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 100,)"
                    R"( "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,)"
                    R"( "num_attention_heads": 0})",
                    {"num_attention_heads = 0 must be positive"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "intermediate_size": -1)"),
                    {"intermediate_size = -1 is out of range"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "rms_norm_eps": 0)"),
                    {"rms_norm_eps = 0 is out of range"});
  ExpectConfigError(Minimal("MistralForCausalLM", R"(, "sliding_window": -1)"),
                    {"sliding_window = -1 is negative"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "bos_token_id": 1000)"),
                    {"bos_token_id = 1000 is outside the vocabulary"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "head_dim": 15)"),
                    {"rotary dimension 15 must be even"});
}

TEST(ModelConfig, UnsupportedFeatures) {
  ExpectConfigError(
      Minimal("LlamaForCausalLM", R"(, "rope_scaling": {"type": "linear", "factor": 2.0})"),
      {"\"rope_scaling\" asks for rope scaling", "\"linear\"", "not supported yet"});
  ExpectConfigError(
      Minimal("LlamaForCausalLM", R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0})"),
      {"\"rope_scaling\" asks for rope scaling", "\"llama3\""});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "rope_scaling": {"factor": 2.0})"),
                    {"\"rope_scaling\" = {\"factor\":2.0} asks for rope scaling"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "rope_scaling": 2)"),
                    {"\"rope_scaling\" must be an object or null, found number 2"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "rope_parameters": {"rope_type": "yarn"})"),
                    {"\"rope_parameters\" asks for rope scaling", "\"yarn\""});
  // A "default" rope type is no scaling at all.
  EXPECT_EQ(
      ConfigError(Minimal("LlamaForCausalLM", R"(, "rope_scaling": {"rope_type": "default"})")),
      "");
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "hidden_act": "gelu")"),
                    {"hidden_act \"gelu\" is not supported"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "attention_bias": true)"),
                    {"\"attention_bias\" is true"});
  ExpectConfigError(Minimal("LlamaForCausalLM", R"(, "mlp_bias": true)"), {"\"mlp_bias\" is true"});
}

using testing::TempDir;

TEST(ModelConfig, LoadFromDirectory) {
  const TempDir dir("load");
  try {
    LoadHuggingFaceConfig(dir.path());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path() + "/config.json"), std::string::npos);
  }
  dir.Write("config.json", kTinyMistralConfig);
  EXPECT_EQ(LoadHuggingFaceConfig(dir.path()).eos_token_ids, (std::vector<int32_t>{32000}));
  dir.Write("generation_config.json", R"({"eos_token_id": [32000, 2]})");
  const ModelConfig c = LoadHuggingFaceConfig(dir.path());
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{32000, 2}));
  EXPECT_EQ(c.hidden_size, 64);
  dir.Write("generation_config.json", R"({"eos_token_id": "x"})");
  try {
    LoadHuggingFaceConfig(dir.path());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path() + "/generation_config.json: "),
              std::string::npos)
        << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// GGUF

std::string Floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// The metadata llama.cpp's converter wrote for the shared tiny-mistral model-f32.gguf, minus
// what `skip` names, plus an "output.weight" tensor unless `tied`.
GgufWriter TinyGguf(std::initializer_list<std::string_view> skip = {}, bool tied = false) {
  auto keep = [&](std::string_view key) {
    for (const std::string_view s : skip) {
      if (s == key) return false;
    }
    return true;
  };
  GgufWriter w;
  if (keep("general.architecture")) w.AddString("general.architecture", "llama");
  if (keep("llama.block_count")) w.AddUint32("llama.block_count", 2);
  if (keep("llama.context_length")) w.AddUint32("llama.context_length", 8192);
  if (keep("llama.embedding_length")) w.AddUint32("llama.embedding_length", 64);
  if (keep("llama.feed_forward_length")) w.AddUint32("llama.feed_forward_length", 176);
  if (keep("llama.attention.head_count")) w.AddUint32("llama.attention.head_count", 4);
  if (keep("llama.attention.head_count_kv")) w.AddUint32("llama.attention.head_count_kv", 2);
  if (keep("llama.rope.freq_base")) w.AddFloat32("llama.rope.freq_base", 10000.0f);
  if (keep("llama.attention.layer_norm_rms_epsilon")) {
    w.AddFloat32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  }
  if (keep("llama.vocab_size")) w.AddUint32("llama.vocab_size", 32002);
  if (keep("llama.rope.dimension_count")) w.AddUint32("llama.rope.dimension_count", 16);
  if (keep("tokenizer.ggml.tokens")) {
    w.AddStringArray("tokenizer.ggml.tokens", std::vector<std::string>(300, "t"));
  }
  if (keep("tokenizer.ggml.bos_token_id")) w.AddUint32("tokenizer.ggml.bos_token_id", 1);
  if (keep("tokenizer.ggml.eos_token_id")) w.AddUint32("tokenizer.ggml.eos_token_id", 32000);
  w.AddTensor("token_embd.weight", {2}, kGgmlF32, Floats({1, 2}));
  if (!tied) w.AddTensor("output.weight", {2}, kGgmlF32, Floats({3, 4}));
  return w;
}

ModelConfig FromGguf(const GgufWriter& w) {
  const std::string bytes = w.Finish();
  return ModelConfigFromGguf(GgufFile::Parse(bytes, "t.gguf"), "t.gguf");
}

std::string GgufError(const GgufWriter& w) {
  try {
    FromGguf(w);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void ExpectGgufError(const GgufWriter& w, std::initializer_list<std::string_view> parts) {
  const std::string error = GgufError(w);
  ASSERT_FALSE(error.empty()) << "no error";
  EXPECT_EQ(error.rfind("t.gguf: ", 0), 0u) << error;
  for (const std::string_view part : parts) {
    EXPECT_NE(error.find(part), std::string::npos) << "missing '" << part << "' in: " << error;
  }
}

TEST(ModelConfig, GgufTinyMistral) {
  const ModelConfig c = FromGguf(TinyGguf());
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.vocab_size, 32002);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 176);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope_dim, 16);
  EXPECT_EQ(c.rope_layout, RopeLayout::kInterleaved);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{32000}));
}

TEST(ModelConfig, GgufDefaultsAndOptionalKeys) {
  // Without head_count_kv, key_length, rope dims, freq_base, vocab_size and output.weight.
  const ModelConfig c = FromGguf(TinyGguf(
      {"llama.attention.head_count_kv", "llama.rope.dimension_count", "llama.rope.freq_base",
       "llama.vocab_size", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"},
      /*tied=*/true));
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope_dim, 16);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.vocab_size, 300);  // the token list's length
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2}));

  GgufWriter w = TinyGguf();
  w.AddUint32("llama.attention.key_length", 32);
  w.AddUint32("llama.attention.sliding_window", 4096);
  w.AddUint32("tokenizer.ggml.eot_token_id", 32001);
  w.AddString("llama.rope.scaling.type", "none");
  const ModelConfig d = FromGguf(w);
  EXPECT_EQ(d.head_dim, 32);
  EXPECT_EQ(d.rope_dim, 16);  // the file's own rope.dimension_count stands
  EXPECT_EQ(d.sliding_window, 4096);
  EXPECT_EQ(d.eos_token_ids, (std::vector<int32_t>{32000, 32001}));

  GgufWriter same = TinyGguf();
  same.AddUint32("tokenizer.ggml.eot_token_id", 32000);
  EXPECT_EQ(FromGguf(same).eos_token_ids, (std::vector<int32_t>{32000}));
}

TEST(ModelConfig, GgufErrors) {
  GgufWriter gpt2 = TinyGguf({"general.architecture"});
  gpt2.AddString("general.architecture", "gpt2");
  ExpectGgufError(gpt2, {"general.architecture \"gpt2\" is not supported"});
  EXPECT_NE(GgufError(TinyGguf({"general.architecture"})).find("general.architecture"),
            std::string::npos);
  EXPECT_NE(GgufError(TinyGguf({"llama.attention.layer_norm_rms_epsilon"}))
                .find("llama.attention.layer_norm_rms_epsilon"),
            std::string::npos);
  EXPECT_NE(GgufError(TinyGguf({"llama.embedding_length"})).find("llama.embedding_length"),
            std::string::npos);
  EXPECT_NE(GgufError(TinyGguf({"llama.context_length"})).find("llama.context_length"),
            std::string::npos);

  GgufWriter moe = TinyGguf();
  moe.AddUint32("llama.expert_count", 8);
  ExpectGgufError(moe, {"llama.expert_count = 8", "mixture-of-experts"});
  GgufWriter yarn = TinyGguf();
  yarn.AddString("llama.rope.scaling.type", "yarn");
  ExpectGgufError(yarn, {"llama.rope.scaling.type \"yarn\"", "not supported"});
  GgufWriter factor = TinyGguf();
  factor.AddFloat32("llama.rope.scaling.factor", 4.0f);
  ExpectGgufError(factor, {"llama.rope.scaling.factor = 4"});

  GgufWriter odd = TinyGguf({"llama.embedding_length"});
  odd.AddUint32("llama.embedding_length", 66);
  ExpectGgufError(odd, {"llama.embedding_length (66) is not divisible by "
                        "llama.attention.head_count (4)"});
  GgufWriter kv = TinyGguf({"llama.attention.head_count_kv"});
  kv.AddUint32("llama.attention.head_count_kv", 3);
  ExpectGgufError(kv, {"not a multiple of num_key_value_heads (3)"});
  GgufWriter huge = TinyGguf({"llama.context_length"});
  huge.AddUint64("llama.context_length", uint64_t{1} << 40);
  ExpectGgufError(huge, {"llama.context_length = 1099511627776 does not fit in a 32-bit integer"});
  ExpectGgufError(TinyGguf({"llama.vocab_size", "tokenizer.ggml.tokens"}),
                  {"neither llama.vocab_size nor tokenizer.ggml.tokens"});
  GgufWriter eos = TinyGguf({"tokenizer.ggml.eos_token_id"});
  eos.AddUint32("tokenizer.ggml.eos_token_id", 40000);
  ExpectGgufError(eos, {"eos_token_id = 40000 is outside the vocabulary (32002)"});
  GgufWriter typed = TinyGguf({"llama.block_count"});
  typed.AddString("llama.block_count", "2");
  EXPECT_NE(GgufError(typed).find("llama.block_count"), std::string::npos);
}

}  // namespace
}  // namespace starling
