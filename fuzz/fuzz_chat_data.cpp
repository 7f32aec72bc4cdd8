// libFuzzer target for the SFT data parser (src/chat/chat_data.h): JSON Lines conversations
// rendered by each chat template into ids and loss weights. starling::Error is the expected
// answer to bad input; anything else, a crash or a sanitizer report is a bug. What parses must
// hold what the parser promises.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "chat/chat_data.h"
#include "core/error.h"
#include "tokenizer/load.h"

namespace {

const starling::Tokenizer& OpenChat() {
  static const starling::Tokenizer t =
      starling::LoadTokenizer(std::string(STARLING_MODELS_DIR) + "/openchat-3.5-tokenizer");
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1 << 16)) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const char* name : {"openchat", "llama-2"}) {
    for (const bool skip : {false, true}) {
      starling::ChatDataOptions options;
      options.ctx = size % 2 ? 64 : 0;
      options.skip_bad_lines = skip;
      options.long_conversations = size % 3 ? starling::LongConversations::kSkip
                                            : starling::LongConversations::kTruncateLeft;
      try {
        starling::ChatDataStats stats;
        const auto examples = starling::ParseChatData(
            text, "fuzz", OpenChat(), starling::ChatTemplate::ByName(name), options, &stats);
        if (static_cast<int64_t>(examples.size()) != stats.conversations) __builtin_trap();
        for (const auto& e : examples) {
          if (e.ids.size() < 2 || e.weights.size() + 1 != e.ids.size()) __builtin_trap();
          if (options.ctx > 0 && static_cast<int64_t>(e.ids.size()) > options.ctx + 1)
            __builtin_trap();
          if (e.trained_tokens() == 0) __builtin_trap();
          for (const float w : e.weights) {
            if (!(w >= 0.0f)) __builtin_trap();
          }
        }
      } catch (const starling::Error&) {
      }
    }
  }
  return 0;
}
