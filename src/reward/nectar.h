// Nectar (berkeley-nest/Nectar) records and the agreement of a reward model's scores with their
// GPT-4 rankings.
//
// A record: {"prompt": "\n\nHuman: ...\n\nAssistant: ", "answers": [{"answer", "model",
// "rank"}, ...], "turns", "num_responses", "source", "good_natured"}; rank 1 is the best.
// Only prompt and answers (answer, rank) are read; other fields are ignored.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "chat/chat_template.h"

namespace starling {

struct NectarAnswer {
  std::string answer;
  std::string model;  // may be empty
  double rank = 0;    // 1 = best
};

struct NectarRecord {
  std::vector<ChatMessage> prompt;  // user/assistant turns, ending with a user turn
  std::vector<NectarAnswer> answers;
};

// The prompt's "\n\nHuman: " / "\n\nAssistant: " turns become user / assistant messages (each
// content with surrounding whitespace trimmed); the trailing empty "Assistant:" turn, which
// the answer fills, is dropped. Throws starling::Error naming `source` (e.g. "file:line").
NectarRecord ParseNectarRecord(std::string_view json_line, const std::string& source);
NectarRecord NectarRecordFromJson(const nlohmann::json& record, const std::string& source);
std::vector<ChatMessage> ParseHumanAssistantPrompt(std::string_view prompt,
                                                   const std::string& source);

// Agreement of scores (higher = better) with ranks (lower = better), one record.
struct RankAgreement {
  double kendall_tau = 0;     // tau-b between -rank and score; 0 when undefined (all tied)
  bool top1_correct = false;  // the highest score is on a rank-1 answer (strictly highest)
  int adjacent_pairs = 0;     // pairs of answers whose ranks are consecutive distinct values
  int adjacent_correct = 0;   // of which the better-ranked one has the strictly higher score
};
RankAgreement CompareRanking(const std::vector<double>& ranks, const std::vector<double>& scores);

}  // namespace starling
