// libFuzzer target for the reward-training data parser (src/reward/ranking_data.h): Nectar
// records and preference pairs in JSON Lines (and the prompt lines of train apa|ppo), rendered by
// each chat template into one id sequence per answer. starling::Error is the expected answer to bad
// input; anything else, a crash or a sanitizer report is a bug. What parses must hold what the
// parser promises.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.h"
#include "reward/ranking_data.h"
#include "tokenizer/load.h"

namespace {

const starling::Tokenizer& Llama2() {
  static const starling::Tokenizer t = starling::LoadTokenizer(
      std::string(STARLING_TEST_DATA_DIR) + "/tokenizers/llama-2/tokenizer.model");
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1 << 16)) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const char* name : {"llama-2", "openchat"}) {
    for (const bool skip : {false, true}) {
      starling::RankingDataOptions options;
      options.ctx = size % 2 ? 16 : 0;
      options.skip_bad_lines = skip;
      try {
        starling::RankingDataStats stats;
        const auto records = starling::ParseRankingData(
            text, "fuzz", Llama2(), starling::ChatTemplate::ByName(name), options, &stats);
        if (static_cast<int64_t>(records.size()) != stats.records) __builtin_trap();
        int64_t answers = 0;
        for (const auto& r : records) {
          if (r.sequences.size() < 2) __builtin_trap();
          for (const auto& ids : r.sequences) {
            if (ids.empty()) __builtin_trap();
            if (options.ctx > 0 && static_cast<int64_t>(ids.size()) > options.ctx) __builtin_trap();
          }
          answers += static_cast<int64_t>(r.sequences.size());
        }
        if (answers != stats.answers) __builtin_trap();
      } catch (const starling::Error&) {
      }
    }
  }
  // The same bytes as a prompts file of train apa|ppo, line by line: what parses is a
  // conversation ending with a user turn, which the templates render with a generation prompt.
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    try {
      const auto messages = starling::ParsePromptLine(text.substr(begin, end - begin), "fuzz:1");
      if (messages.empty() || messages.back().role != "user") __builtin_trap();
      starling::ChatTemplate::ByName("llama-2").Render(Llama2(), messages, true);
    } catch (const starling::Error&) {
    }
    begin = end + 1;
  }
  return 0;
}
