// Any bytes as the Hugging Face added-token JSON files: parse, or a starling::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "tokenizer/load.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks which file the rest is.
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  starling::HuggingFaceTokenizerFiles files;
  switch (data[0] % 4) {
    case 0: files.added_tokens_json = text; break;
    case 1: files.tokenizer_config_json = text; break;
    case 2: files.tokenizer_json = text; break;
    default: files.special_tokens_map_json = text; break;
  }
  try {
    starling::ParseHuggingFaceTokenizerFiles(files, "fuzz");
  } catch (const starling::Error&) {
  }
  return 0;
}
