// Reward-model training data: prompts with ranked answers, in JSON Lines, rendered by a chat
// template into one token sequence per (prompt, answer).
//
// A line is either a Nectar record (berkeley-nest/Nectar):
//   {"prompt": "\n\nHuman: ...\n\nAssistant: ", "answers": [{"answer": "...", "rank": 1}, ...]}
// ordered by "rank" (1 = best; an integer, possibly written 1.0), never by position; or a pair
// as TRL's and OpenRLHF's preference data sets have them:
//   {"prompt": "...", "chosen": "...", "rejected": "..."}
// where the prompt is a Human/Assistant string (split as Nectar's), a plain string (one user
// turn) or a message list, and chosen/rejected are strings or message lists ending with the
// assistant's answer (without "prompt", the lists are whole conversations: everything before
// the last message is the prompt, and both must share it).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "chat/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace starling {

// The ids of a conversation as Starling-RM's card's get_reward() feeds them: BOS when `add_bos`
// (the tokenizer's add_bos_token), then the template's rendering (which starts with its own
// <s>). What `starling score` scores and what reward training trains on.
std::vector<int32_t> RewardConversationIds(const Tokenizer& tokenizer,
                                           const ChatTemplate& chat_template,
                                           const std::vector<ChatMessage>& messages, bool add_bos);

struct RankingRecord {
  std::vector<ChatMessage> prompt;   // ends with a user turn
  std::vector<std::string> answers;  // best first
};

// One line (`source` names it, e.g. "file:12"). Throws starling::Error for a malformed line,
// fewer than 2 answers, a missing, non-integer or repeated rank, an empty answer, or a prompt
// that does not parse into turns.
RankingRecord ParseRankingRecord(std::string_view json_line, const std::string& source);

// A record ready to train: each answer's whole token sequence (the template's rendering of the
// prompt and that answer, as `starling score` renders a conversation), best first.
struct RankingExample {
  std::vector<std::vector<int32_t>> sequences;
  int64_t line = 0;  // 1-based line in the file
};

struct RankingDataOptions {
  int64_t ctx = 0;      // longer sequences keep their last ctx tokens (truncation_side=left)
  bool add_bos = true;  // the tokenizer's BOS before the template's rendering
  bool skip_bad_lines = false;
};

struct RankingDataStats {
  int64_t lines = 0;
  int64_t records = 0;    // kept
  int64_t answers = 0;    // in the kept records
  int64_t bad_lines = 0;  // skipped with skip_bad_lines
  int64_t truncated = 0;  // sequences cut from the left
};

// Reads `path` (blank lines ignored): an error names path:line, or with skip_bad_lines the line
// is counted and skipped. Throws when no record is left.
std::vector<RankingExample> LoadRankingData(const std::string& path, const Tokenizer& tokenizer,
                                            const ChatTemplate& chat_template,
                                            const RankingDataOptions& options,
                                            RankingDataStats* stats);
// The same over the file's bytes (`source` names it in errors); may return no record.
std::vector<RankingExample> ParseRankingData(std::string_view text, const std::string& source,
                                             const Tokenizer& tokenizer,
                                             const ChatTemplate& chat_template,
                                             const RankingDataOptions& options,
                                             RankingDataStats* stats);

// One line of a prompts file (policy tuning's prompts, train apa|ppo): {"messages": [...]} (ending
// with a user turn; a final assistant message, e.g. an SFT line's answer, is dropped) or {"prompt":
// "..."} (Nectar's
// "\n\nHuman: ...\n\nAssistant:" turns, or a plain string as one user turn). `source` names the
// line in errors.
std::vector<ChatMessage> ParsePromptLine(std::string_view json_line, const std::string& source);

}  // namespace starling
