// Any bytes as a tokenizer.model: parse, or a starling::Error; nothing else.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "formats/sentencepiece_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    starling::ParseSentencePieceModel(std::string_view(reinterpret_cast<const char*>(data), size),
                                      "fuzz.model");
  } catch (const starling::Error&) {
  }
  return 0;
}
