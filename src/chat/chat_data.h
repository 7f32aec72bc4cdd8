// Supervised fine-tuning data: conversations in JSON Lines rendered by a chat template into
// token ids and per-token loss weights.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "chat/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace starling {

// One conversation ready to train: ids [n] (BOS first) and, for each next-token target
// ids[i+1], its loss weight weights[i] [n - 1]: the conversation's weight where that token is
// an assistant message's content or the end-of-turn closing it, 0 elsewhere.
struct ChatExample {
  std::vector<int32_t> ids;
  std::vector<float> weights;
  int64_t line = 0;  // 1-based line in the file
  int64_t trained_tokens() const;
};

// One conversation rendered by `chat_template` (no generation prompt) into a ChatExample with
// `weight` on its assistant tokens.
ChatExample RenderChatExample(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                              const std::vector<ChatMessage>& messages, double weight);

enum class LongConversations { kSkip, kTruncateLeft };

struct ChatDataOptions {
  int64_t ctx = 0;  // a conversation may have at most ctx + 1 tokens (T inputs + 1)
  LongConversations long_conversations = LongConversations::kSkip;
  bool skip_bad_lines = false;
};

struct ChatDataStats {
  int64_t lines = 0;
  int64_t conversations = 0;  // kept
  int64_t bad_lines = 0;      // skipped with --skip-bad-lines
  int64_t no_assistant = 0;   // nothing to train: skipped
  int64_t too_long_skipped = 0;
  int64_t truncated = 0;  // cut from the left (earliest turns first)
  int64_t trained_tokens = 0;
};

// Reads `path`: one JSON object per line (blank lines ignored), either
//   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...], "weight": w}
// or ShareGPT's {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}
// ("weight" optional, default 1, finite and >= 0). Each conversation is rendered with
// `chat_template` (no generation prompt). A malformed line, an unknown role, an empty
// conversation or one the template cannot render is an error naming path:line (or, with
// skip_bad_lines, counted and skipped); a conversation without an assistant turn is counted
// and skipped.
std::vector<ChatExample> LoadChatData(const std::string& path, const Tokenizer& tokenizer,
                                      const ChatTemplate& chat_template,
                                      const ChatDataOptions& options, ChatDataStats* stats);
// The same over the file's bytes (`source` names it in errors); may return no conversation.
std::vector<ChatExample> ParseChatData(std::string_view text, const std::string& source,
                                       const Tokenizer& tokenizer,
                                       const ChatTemplate& chat_template,
                                       const ChatDataOptions& options, ChatDataStats* stats);

}  // namespace starling
