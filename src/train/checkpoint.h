// Saving a trained model as a Hugging Face directory that generate, chat, quantize and serve
// load unchanged.
#pragma once

#include <string>

#include "train/parameters.h"

namespace starling {

// Writes `dir` (created if needed): config.json, model.safetensors (every tensor of
// ModelTensors as float32: trained values, frozen ones converted; Q/K rows of an interleaved-RoPE
// (GGUF) model put back into Hugging Face's layout; a reward model's under Starling-RM's names,
// transformer.* and v_head.weight) and the tokenizer of `tokenizer_source`: a
// Hugging Face directory's tokenizer and generation files copied, or a GGUF file's tokenizer as
// tokenizer.gguf. Each file is written to a temporary name and renamed, so an interruption leaves
// the previous file whole. Throws, writing nothing, when a parameter is not finite.
void SaveHuggingFace(const TrainModel& m, const std::string& dir,
                     const std::string& tokenizer_source);

// Reads every parameter of `m` back from a model.safetensors that SaveHuggingFace wrote
// (float32; Q/K rows returned to the model's own RoPE layout), exactly.
void LoadParameters(TrainModel& m, const std::string& safetensors_path);

}  // namespace starling
