// `starling score` and `starling rank`: a reward model over conversations and Nectar records.
#include <chrono>
#include <cstdio>
#include <istream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "commands.h"
#include "core/error.h"
#include "core/file.h"
#include "formats/json.h"
#include "reward/nectar.h"
#include "reward/reward.h"

namespace starling::cli {
namespace {

struct RewardFlags {
  std::string model;       // directory
  std::string config;      // config.json
  std::string checkpoint;  // .bin / .safetensors / index
  std::string tokenizer;
  std::string template_name = "llama-2";
  std::string readout = "last";
  int32_t card_max_length = 2048;
  int32_t context = 4096;
  bool no_bos = false;

  void Add(CLI::App* cmd) {
    cmd->add_option("-m,--model", model,
                    "reward model directory (config.json, tokenizer.model and pytorch_model.bin "
                    "or *.safetensors)")
        ->required();
    cmd->add_option("--config", config, "config.json (default: in the model directory)");
    cmd->add_option("--checkpoint", checkpoint,
                    "pytorch_model.bin, *.safetensors or an index .json (default: found in the "
                    "model directory)");
    cmd->add_option("--tokenizer", tokenizer,
                    "tokenizer.model, HF directory or GGUF (default: the model directory)");
    cmd->add_option("--template,--chat-template", template_name,
                    "chat template the conversation is rendered with (llama-2: Starling-RM's)")
        ->capture_default_str();
    cmd->add_option("--readout", readout,
                    "where the reward is read: 'last' (the last token) or 'card' (exactly as "
                    "Starling-RM's model card: see docs/REWARD.md)")
        ->check(CLI::IsMember({"last", "card"}))
        ->capture_default_str();
    cmd->add_option("--card-max-length", card_max_length, "the card's max_length (card read-out)")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    cmd->add_option("-c,--ctx", context, "longest sequence in tokens")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    cmd->add_flag("--no-bos", no_bos,
                  "do not add the tokenizer's BOS before the template (the card's tokenizer "
                  "call adds one, so its ids start with two)");
    AddThreadsOption(cmd);
  }

  RewardReadout Readout() const {
    return readout == "card" ? RewardReadout::kCard : RewardReadout::kLastToken;
  }
};

struct Loaded {
  LoadedRewardModel rm;
  std::unique_ptr<RewardScorer> scorer;
  const ChatTemplate* chat_template = nullptr;
};

Loaded Load(const RewardFlags& f) {
  Loaded out;
  out.rm = LoadRewardModelAndTokenizer(
      {.files = {.directory = f.model, .config = f.config, .checkpoint = f.checkpoint},
       .tokenizer = f.tokenizer});
  out.chat_template = &ChatTemplate::ByName(f.template_name);
  const int32_t context =
      f.Readout() == RewardReadout::kCard ? std::min(f.context, f.card_max_length) : f.context;
  out.scorer = std::make_unique<RewardScorer>(*out.rm.model, *out.rm.tokenizer, context);
  return out;
}

std::vector<int32_t> Ids(const Loaded& l, const RewardFlags& f,
                         const std::vector<ChatMessage>& messages) {
  return RewardConversationIds(*l.rm.tokenizer, *l.chat_template, messages,
                               l.rm.tokenizer->add_bos_token() && !f.no_bos);
}

void PrintLine(const nlohmann::json& j) {
  const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
}

// Calls fn(line, "file:N") for each non-blank line of `path` ('-': stdin).
template <typename Fn>
void ForEachLine(const std::string& path, Fn&& fn) {
  const std::string text = path == "-" ? ReadStdin() : ReadFile(path);
  std::istringstream in(text);
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    fn(line, Concat(path == "-" ? "<stdin>" : path, ":", number));
  }
}

struct ScoreFlags {
  std::string prompt, response, messages, file;
  std::vector<std::string> ids;
  bool json = false;
  bool all_positions = false;
};

void RunScore(const RewardFlags& f, const ScoreFlags& s) {
  const int given = !s.prompt.empty() + !s.messages.empty() + !s.file.empty() + !s.ids.empty();
  if (given != 1) Fail("give exactly one of --prompt/--response, --messages, --ids or -f FILE");
  if (s.prompt.empty() != s.response.empty() && s.file.empty() && s.ids.empty()) {
    Fail("--prompt and --response go together");
  }
  Loaded l = Load(f);
  auto report = [&](const std::vector<int32_t>& ids, nlohmann::json extra) {
    nlohmann::json out = std::move(extra);
    if (s.all_positions) {
      out["rewards"] = l.scorer->ScoreAllPositions(ids);
    }
    const float reward = l.scorer->Score(ids, f.Readout(), f.card_max_length);
    out["reward"] = reward;
    out["tokens"] = ids.size();
    if (s.json || !s.file.empty()) {
      PrintLine(out);
    } else {
      std::printf("%.6f\n", static_cast<double>(reward));
    }
  };
  if (!s.ids.empty()) {
    report(ParseIds(s.ids), nlohmann::json::object());
  } else if (!s.prompt.empty()) {
    report(Ids(l, f, {{"user", s.prompt}, {"assistant", s.response}}), nlohmann::json::object());
  } else if (!s.messages.empty()) {
    report(Ids(l, f, ReadMessages(s.messages)), nlohmann::json::object());
  } else {
    // JSONL: {"messages": [...]} per line -> {"reward": r, "tokens": n} per line, in order.
    ForEachLine(s.file, [&](const std::string& line, const std::string& where) {
      const nlohmann::json j = ParseStrictJson(line, where, "", true);
      if (!j.is_object() || !j.contains("messages")) {
        Fail(where, ": expected an object with a \"messages\" list");
      }
      report(Ids(l, f, ParseChatMessages(j["messages"].dump(), where + ": messages")),
             nlohmann::json::object());
    });
  }
}

void RunRank(const RewardFlags& f, const std::string& path, bool separately) {
  Loaded l = Load(f);
  l.scorer->set_reuse_prefix(!separately);
  int64_t records = 0, top1 = 0, adjacent_pairs = 0, adjacent_correct = 0;
  double tau_sum = 0;
  const auto start = std::chrono::steady_clock::now();
  ForEachLine(path, [&](const std::string& line, const std::string& where) {
    const NectarRecord record = ParseNectarRecord(line, where);
    std::vector<double> scores, ranks;
    for (const NectarAnswer& answer : record.answers) {
      std::vector<ChatMessage> messages = record.prompt;
      messages.push_back({"assistant", answer.answer});
      scores.push_back(l.scorer->Score(Ids(l, f, messages), f.Readout(), f.card_max_length));
      ranks.push_back(answer.rank);
    }
    const RankAgreement agreement = CompareRanking(ranks, scores);
    std::vector<size_t> order(scores.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return scores[a] > scores[b]; });
    nlohmann::json out;
    out["record"] = records;
    out["scores"] = scores;
    out["ranks"] = ranks;
    out["model_order"] = order;  // answer indices, best first
    out["kendall_tau"] = agreement.kendall_tau;
    out["top1_correct"] = agreement.top1_correct;
    out["adjacent_pairs"] = agreement.adjacent_pairs;
    out["adjacent_correct"] = agreement.adjacent_correct;
    PrintLine(out);
    ++records;
    tau_sum += agreement.kendall_tau;
    top1 += agreement.top1_correct;
    adjacent_pairs += agreement.adjacent_pairs;
    adjacent_correct += agreement.adjacent_correct;
  });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (records == 0) Fail(path, ": no records");
  const RewardStats& stats = l.scorer->stats();
  nlohmann::json summary;
  summary["records"] = records;
  summary["mean_kendall_tau"] = tau_sum / static_cast<double>(records);
  summary["top1_accuracy"] = static_cast<double>(top1) / static_cast<double>(records);
  summary["adjacent_pair_accuracy"] = adjacent_pairs > 0 ? static_cast<double>(adjacent_correct) /
                                                               static_cast<double>(adjacent_pairs)
                                                         : 0.0;
  summary["adjacent_pairs"] = adjacent_pairs;
  summary["seconds"] = seconds;
  summary["tokens_scored"] = stats.tokens;
  summary["tokens_forwarded"] = stats.tokens_forwarded;
  PrintLine({{"summary", summary}});
}

}  // namespace

void RegisterReward(CLI::App& app) {
  {
    auto f = std::make_shared<RewardFlags>();
    auto s = std::make_shared<ScoreFlags>();
    CLI::App* cmd = app.add_subcommand("score", "Score conversations with a reward model");
    f->Add(cmd);
    cmd->add_option("--prompt", s->prompt, "the user's message");
    cmd->add_option("--response", s->response, "the assistant's reply to score");
    cmd->add_option("--messages", s->messages, kMessagesHelp);
    cmd->add_option("--ids", s->ids, kIdsHelp);
    cmd->add_option("-f,--file", s->file,
                    "JSONL: one {\"messages\": [...]} per line -> one {\"reward\"} per line "
                    "('-': stdin)");
    cmd->add_flag("--json", s->json, "print {\"reward\": r, \"tokens\": n}");
    cmd->add_flag("--all-positions", s->all_positions,
                  "also print the head's output at every position (\"rewards\")");
    cmd->footer(
        "Examples:\n"
        "  starling score -m Starling-RM-7B-alpha/ --prompt \"Hello?\" --response \"Hi, how can I "
        "help?\"\n"
        "  starling score -m Starling-RM-7B-alpha/ --messages chat.json --json\n"
        "  starling score -m Starling-RM-7B-alpha/ -f conversations.jsonl > rewards.jsonl\n"
        "  starling score -m Starling-RM-7B-alpha/ --ids \"1 518 25580 29962\"\n"
        "More in docs/REWARD.md.");
    cmd->callback([=] { RunScore(*f, *s); });
  }
  {
    auto f = std::make_shared<RewardFlags>();
    auto file = std::make_shared<std::string>();
    auto separately = std::make_shared<bool>(false);
    CLI::App* cmd = app.add_subcommand(
        "rank",
        "Score every answer of each Nectar record and measure agreement with its ranks "
        "(JSONL out: one line per record, then {\"summary\": ...})");
    f->Add(cmd);
    cmd->add_option("file", *file, "Nectar JSONL ('-': stdin)")->required();
    cmd->add_flag("--no-prefix-reuse", *separately,
                  "score each answer from scratch (to measure what sharing the prompt saves)");
    cmd->footer(
        "Example:\n"
        "  starling rank -m Starling-RM-7B-alpha/ nectar.jsonl | tail -1   # the summary line\n"
        "More in docs/REWARD.md.");
    cmd->callback([=] { RunRank(*f, *file, *separately); });
  }
}

}  // namespace starling::cli
