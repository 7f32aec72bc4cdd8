// The synthetic chat tasks of tools/chat_tasks.py (issue 16) as `starling eval --task exact`
// scores them: a record's check rule over the model's response, and the true reward. The rules
// are chat_tasks.py's, exactly (its docstring; tests/data/tasks/golden.jsonl holds its answers
// for the C++ to match):
//   integer  the first match of -?[0-9]+ in the response, sign kept, leading zeros removed
//            ("-0" is "0"), equals the answer written the same way;
//   text     the response stripped of surrounding ASCII whitespace, then of one trailing ".",
//            equals the answer (case-sensitive);
//   list     the answer's items (split on ", ") are integers if all match -?[0-9]+ (tokens are
//            then matches of -?[0-9]+), else words (tokens: [A-Za-z]+); the response's first
//            run (its first token and each next token separated from the previous by one or
//            more characters all in " ,") equals the items in order;
//   none     not scored (false; true reward 0).
// True reward: 1 when the check passes, else -max(0.01, min(1, relative error)): integer
// |got - want| / max(1, |want|) (none found: 1), text Levenshtein distance in code points /
// max(1, answer length), list Levenshtein over items / max(1, items) (no token: 1).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "chat/chat_template.h"

namespace starling {

struct TaskRecord {
  std::vector<ChatMessage> messages;  // the prompt (a final assistant message is dropped)
  std::string task, difficulty, answer, check;
  int64_t line = 0;
};

// {"messages": [...], "task", "difficulty", "answer", "check"}; `source` names the line.
TaskRecord ParseTaskRecord(std::string_view json_line, const std::string& source);

bool CheckAnswer(std::string_view response, const TaskRecord& record);
double TrueReward(std::string_view response, const TaskRecord& record);

}  // namespace starling
