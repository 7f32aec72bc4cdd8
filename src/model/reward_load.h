// Loading reward models as their authors publish them: a decoder (Llama/Mistral) whose final
// hidden state goes through a [1, D] head instead of the language-model head.
//
// Accepted checkpoints (one directory, or the options naming each file):
//   - pytorch_model.bin (torch.save state dict, read by formats/torch_checkpoint without running
//     pickle), or sharded: pytorch_model.bin.index.json + the shards it names;
//   - *.safetensors: model.safetensors or model.safetensors.index.json + shards.
// Accepted tensor names, mapped to the canonical Hugging Face names of model.cpp:
//   - Starling-RM's GPTRewardModel: transformer.* (the decoder, -> model.*) and v_head.weight
//     (-> score.weight). The class also lists the same decoder as model.model.* and a
//     model.lm_head.weight the reward never uses: those are dropped (model.model.* is used
//     when there is no transformer.*).
//   - Hugging Face's LlamaForSequenceClassification / MistralForSequenceClassification:
//     model.* and score.weight, as they are.
// Any other unused tensor (lm_head.weight, rotary inv_freq buffers) is ignored; a missing head
// or decoder tensor, or a shape that does not match config.json, is an error naming both.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "model/model.h"

namespace starling {

struct RewardModelFiles {
  std::string directory = {};  // holds config.json and the checkpoint unless named below
  std::string config = {};     // config.json; default <directory>/config.json
  std::string checkpoint =
      {};  // a .bin, .safetensors or index .json file; default: found in directory
};

// The canonical name of a reward checkpoint's tensor, or nullopt for one the reward does not
// use. `has_transformer_prefix`: whether the checkpoint has any transformer.* tensor (then
// model.model.* duplicates it).
std::optional<std::string> CanonicalRewardTensorName(std::string_view name,
                                                     bool has_transformer_prefix);

// Loads config and weights with ModelHead::kReward. Throws starling::Error naming the file.
Model LoadRewardModel(const RewardModelFiles& files);
// The same as files (canonical names; what a trainer takes).
ModelFiles OpenRewardModelFiles(const RewardModelFiles& files);
// Whether `directory` holds a reward checkpoint (config.json and a checkpoint with a
// v_head.weight or score.weight), rather than a language model.
bool IsRewardCheckpoint(const std::string& directory);

}  // namespace starling
