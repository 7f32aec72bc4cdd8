// Reading a Hugging Face model directory's config.json (and generation_config.json) into a
// ModelConfig, for the Mistral and Llama architectures.
#pragma once

#include <string>
#include <string_view>

#include "model/config.h"

namespace starling {

// Parses the text of config.json and of generation_config.json (empty when the directory has
// none). `source_dir` only names the files in error messages ("<dir>/config.json: ...").
//
// Accepted: "architectures" naming MistralForCausalLM, LlamaForCausalLM,
// MistralForSequenceClassification or LlamaForSequenceClassification, or no "architectures" and
// "model_type" "mistral" or "llama". Required keys: vocab_size, hidden_size, intermediate_size,
// num_hidden_layers, num_attention_heads. Every other key has the default of transformers'
// MistralConfig / LlamaConfig. Refused: rope scaling, hidden_act other than "silu", and attention
// or MLP biases. The end-of-sequence ids are generation_config.json's when it sets them, else
// config.json's. The result has passed ModelConfig::Validate.
ModelConfig ParseHuggingFaceConfig(std::string_view config_json,
                                   std::string_view generation_config_json,
                                   const std::string& source_dir);

// Reads `dir`/config.json and, when present, `dir`/generation_config.json.
ModelConfig LoadHuggingFaceConfig(const std::string& dir);

// config.json for `c` as Hugging Face writes it (indented, newline-terminated), with
// `torch_dtype` "float32", "float16" or "bfloat16". ParseHuggingFaceConfig reads it back to c.
std::string HuggingFaceConfigJson(const ModelConfig& c, const std::string& torch_dtype);

}  // namespace starling
