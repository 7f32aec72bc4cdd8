#include "reward/reward_source.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "reward/ranking_data.h"
#include "reward/reward.h"

namespace starling {
namespace {

// A reward model in this process, reading conversations with its own template.
class LocalReward final : public RewardSource {
 public:
  LocalReward(const RewardSourceOptions& o) : chat_template_(ChatTemplate::ByName(o.rm_template)) {
    RewardModelOptions options;
    options.files.directory = o.rm;
    options.tokenizer = o.rm_tokenizer;
    rm_ = LoadRewardModelAndTokenizer(options);
    ctx_ =
        static_cast<int32_t>(std::min<int64_t>(rm_.model->config().max_position_embeddings, 4096));
    scorer_ = std::make_unique<RewardScorer>(*rm_.model, *rm_.tokenizer, ctx_);
  }
  std::vector<double> Score(const std::vector<std::vector<ChatMessage>>& conversations) override {
    std::vector<double> out;
    for (const auto& messages : conversations) {
      std::vector<int32_t> ids = RewardConversationIds(*rm_.tokenizer, chat_template_, messages,
                                                       rm_.tokenizer->add_bos_token());
      if (static_cast<int64_t>(ids.size()) > ctx_) {  // the card's truncation_side=left
        ids.erase(ids.begin(), ids.end() - ctx_);
        ++truncated_;
      }
      out.push_back(scorer_->Score(ids));
    }
    return out;
  }

 private:
  const ChatTemplate& chat_template_;
  LoadedRewardModel rm_;
  int32_t ctx_ = 0;
  std::unique_ptr<RewardScorer> scorer_;
  int64_t truncated_ = 0;
};

// A /v1/rewards server (`starling serve --rm`): conversations as messages, rendered there.
// Connection errors, 5xx answers, timeouts and bodies that are not the expected JSON are
// retried (1, 2, 4... seconds apart) up to `retries` times, then the run stops saying why; a
// 4xx answer stops it at once (the request itself is wrong).
class RemoteReward final : public RewardSource {
 public:
  explicit RemoteReward(const RewardSourceOptions& o)
      : url_(o.rm_url), key_(o.rm_api_key), retries_(o.rm_retries), timeout_(o.rm_timeout) {
    if (url_.rfind("http://", 0) != 0 && url_.rfind("https://", 0) != 0) {
      Fail("--rm-url ", url_, ": give an http:// or https:// address");
    }
    while (!url_.empty() && url_.back() == '/') url_.pop_back();
  }
  std::vector<double> Score(const std::vector<std::vector<ChatMessage>>& conversations) override {
    nlohmann::json body = {{"conversations", nlohmann::json::array()}};
    for (const auto& messages : conversations) {
      nlohmann::json list = nlohmann::json::array();
      for (const ChatMessage& m : messages) {
        list.push_back({{"role", m.role}, {"content", m.content}});
      }
      body["conversations"].push_back(std::move(list));
    }
    const std::string text = body.dump();
    std::string last_error;
    for (int32_t attempt = 0; attempt <= retries_; ++attempt) {
      if (attempt > 0) {
        const int seconds = 1 << std::min(attempt - 1, 5);
        std::fprintf(stderr, "reward server: %s; retrying in %d s (%d of %d)\n", last_error.c_str(),
                     seconds, attempt, retries_);
        std::this_thread::sleep_for(std::chrono::seconds(seconds));
      }
      httplib::Client client(url_);
      client.set_connection_timeout(std::chrono::duration<double>(timeout_));
      client.set_read_timeout(std::chrono::duration<double>(timeout_));
      client.set_write_timeout(std::chrono::duration<double>(timeout_));
      httplib::Headers headers;
      if (!key_.empty()) headers.emplace("Authorization", "Bearer " + key_);
      const httplib::Result r = client.Post("/v1/rewards", headers, text, "application/json");
      if (!r) {
        last_error = Concat("no answer from ", url_, " (", httplib::to_string(r.error()), ")");
        continue;
      }
      if (r->status >= 400 && r->status < 500) {
        Fail("reward server ", url_, " refused the request: HTTP ", r->status, ": ",
             r->body.substr(0, 500));
      }
      if (r->status != 200) {
        last_error = Concat("HTTP ", r->status, " from ", url_);
        continue;
      }
      std::vector<double> scores;
      if (ParseScores(r->body, conversations.size(), &scores, &last_error)) return scores;
    }
    Fail("reward server ", url_, ": ", last_error, "; gave up after ", retries_ + 1,
         " attempts (--rm-retries)");
  }

 private:
  static bool ParseScores(const std::string& body, size_t n, std::vector<double>* scores,
                          std::string* error) {
    try {
      const nlohmann::json j = nlohmann::json::parse(body);
      const nlohmann::json& data = j.at("data");
      if (!data.is_array() || data.size() != n) {
        *error = Concat("an answer with ", data.is_array() ? data.size() : 0, " rewards for ", n,
                        " conversations");
        return false;
      }
      scores->assign(n, NAN);
      for (const auto& d : data) {
        const auto index = d.at("index").get<int64_t>();
        const double reward = d.at("reward").get<double>();
        if (index < 0 || index >= static_cast<int64_t>(n) || !std::isfinite(reward)) {
          *error = Concat("an answer with index ", index, " and reward ", reward);
          return false;
        }
        (*scores)[static_cast<size_t>(index)] = reward;
      }
      for (const double s : *scores) {
        if (std::isnan(s)) {
          *error = "an answer that repeats an index";
          return false;
        }
      }
      return true;
    } catch (const nlohmann::json::exception& e) {
      *error = Concat("an answer that is not the /v1/rewards JSON (", e.what(), ")");
      return false;
    }
  }
  std::string url_, key_;
  int32_t retries_;
  double timeout_;
};

}  // namespace

std::unique_ptr<RewardSource> OpenRewardSource(const RewardSourceOptions& o) {
  if (o.rm.empty() == o.rm_url.empty()) Fail("give exactly one of --rm DIR and --rm-url URL");
  if (o.rm_retries < 0) Fail("--rm-retries must be >= 0");
  if (!o.rm.empty()) return std::make_unique<LocalReward>(o);
  return std::make_unique<RemoteReward>(o);
}

}  // namespace starling
