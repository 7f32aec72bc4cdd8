// Where rewards come from, for trainers and evaluations that score conversations: a reward
// model in this process, or a /v1/rewards server (`starling serve --rm`, or any server with the
// same API).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "chat/chat_template.h"

namespace starling {

class RewardSource {
 public:
  virtual ~RewardSource() = default;
  // One score per conversation (prompt messages + the assistant's response).
  virtual std::vector<double> Score(const std::vector<std::vector<ChatMessage>>& conversations) = 0;
};

struct RewardSourceOptions {
  std::string rm;      // a reward model directory (anything `starling score` loads), or
  std::string rm_url;  // a server's address, http(s)://host:port
  std::string rm_api_key;
  std::string rm_template = "llama-2";  // how the in-process model reads a conversation
  std::string rm_tokenizer;             // default: the reward model's
  int32_t rm_retries = 3;
  double rm_timeout = 60;  // seconds per request
};

// In process: conversations rendered with rm_template (BOS first, as the card), left-truncated
// to the model's positions (at most 4096), scored at the last token. Over HTTP: connection
// errors, 5xx, timeouts and bodies that are not the /v1/rewards JSON (wrong count or index,
// non-finite rewards) are retried 1, 2, 4... s apart up to rm_retries times, then an error
// says why; a 4xx is an error at once. Throws for options that name neither or both.
std::unique_ptr<RewardSource> OpenRewardSource(const RewardSourceOptions& options);

}  // namespace starling
