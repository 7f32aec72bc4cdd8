#include "eval/eval.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/file.h"
#include "eval/task_check.h"
#include "generate/generate.h"
#include "generate/loaded_model.h"
#include "reward/ranking_data.h"

namespace starling {
namespace {

// Non-blank lines of a JSON Lines file with their 1-based numbers.
std::vector<std::pair<int64_t, std::string>> Lines(const std::string& path, int64_t limit) {
  std::istringstream in(ReadFile(path));
  std::vector<std::pair<int64_t, std::string>> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    out.emplace_back(n, line);
    if (limit > 0 && static_cast<int64_t>(out.size()) >= limit) break;
  }
  if (out.empty()) Fail(path, ": no record in the file");
  return out;
}

nlohmann::json ParseLine(const std::string& line, const std::string& where) {
  try {
    return nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    Fail(where, ": not JSON (", e.what(), ")");
  }
}

GenerationOptions Options(const EvalOptions& o, const LoadedModel& m, const ChatTemplate* t) {
  GenerationOptions g;
  g.max_new_tokens = o.max_new_tokens;
  g.sampling.temperature = o.temperature;
  g.sampling.top_k = 0;
  g.sampling.top_p = 1.0f;
  g.sampling.min_p = 0.0f;
  g.stop_token_ids = m.StopTokens(t);
  return g;
}

// Responses of `m` to `prompts` rendered with `t` and the generation prompt.
std::vector<GenerationResult> Answer(const EvalOptions& o, const LoadedModel& m,
                                     const ChatTemplate& t,
                                     const std::vector<std::vector<ChatMessage>>& prompts) {
  std::vector<std::vector<int32_t>> ids;
  std::vector<uint64_t> seeds;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ids.push_back(t.Render(*m.tokenizer, prompts[i], /*add_generation_prompt=*/true).ids);
    seeds.push_back(o.seed + i);
  }
  return GenerateBatch(*m.model, *m.tokenizer, ids, seeds, Options(o, m, &t), o.batch);
}

std::string Fixed(double x, int digits = 3) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

nlohmann::json Exact(const EvalOptions& o) {
  const LoadedModel m = LoadModel(o.model);
  const ChatTemplate& t = m.ChooseTemplate(o.chat_template);
  std::vector<TaskRecord> records;
  std::vector<std::vector<ChatMessage>> prompts;
  const std::vector<std::pair<int64_t, std::string>> lines = Lines(o.data, o.limit);
  for (const auto& [n, line] : lines) {
    records.push_back(ParseTaskRecord(line, Concat(o.data, ":", n)));
    records.back().line = n;
    prompts.push_back(records.back().messages);
  }
  const std::vector<GenerationResult> answers = Answer(o, m, t, prompts);
  struct Group {
    int64_t n = 0, correct = 0;
    double reward = 0;
  };
  std::map<std::pair<std::string, std::string>, Group> groups;
  Group all;
  nlohmann::json samples = nlohmann::json::array();
  if (!o.responses.empty()) {
    std::string text;
    size_t i = 0;
    for (const auto& [n, line] : lines) {
      const TaskRecord& r = records[i];
      const bool scored = r.check != "none";
      nlohmann::json j = {
          {"line", n},
          {"record", nlohmann::json::parse(line)},
          {"response", answers[i].text},
          {"correct", scored ? nlohmann::json(CheckAnswer(answers[i].text, r)) : nlohmann::json()},
          {"true_reward", TrueReward(answers[i].text, r)}};
      text += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      text += '\n';
      ++i;
    }
    WriteFileAtomically(o.responses, [&](const ByteSink& sink) { sink(text); });
  }
  for (size_t i = 0; i < records.size(); ++i) {
    const TaskRecord& r = records[i];
    if (r.check == "none") continue;  // not scored
    const bool ok = CheckAnswer(answers[i].text, r);
    const double reward = TrueReward(answers[i].text, r);
    for (Group* g : {&groups[{r.task, r.difficulty}], &all}) {
      ++g->n;
      g->correct += ok;
      g->reward += reward;
    }
    if (samples.size() < 8) {
      samples.push_back({{"prompt", r.messages.back().content},
                         {"response", answers[i].text},
                         {"answer", r.answer},
                         {"correct", ok}});
    }
  }
  if (all.n == 0) Fail(o.data, ": no record with a checkable answer (all are \"none\")");
  auto row = [](const Group& g) {
    const auto [lo, hi] = WilsonInterval(g.correct, g.n);
    return nlohmann::json{{"n", g.n},
                          {"correct", g.correct},
                          {"accuracy", static_cast<double>(g.correct) / static_cast<double>(g.n)},
                          {"accuracy_ci95", {lo, hi}},
                          {"true_reward_mean", g.reward / static_cast<double>(g.n)}};
  };
  nlohmann::json out = {{"task", "exact"},     {"model", o.model},
                        {"data", o.data},      {"template", std::string(t.name())},
                        {"overall", row(all)}, {"groups", nlohmann::json::array()},
                        {"samples", samples}};
  std::printf("| task | difficulty | n | accuracy (95%% CI) | mean true reward |\n");
  std::printf("|---|---|---|---|---|\n");
  auto print = [&](const std::string& task, const std::string& difficulty,
                   const nlohmann::json& j) {
    std::printf("| %s | %s | %lld | %s (%s-%s) | %s |\n", task.c_str(), difficulty.c_str(),
                static_cast<long long>(j["n"].get<int64_t>()), Fixed(j["accuracy"]).c_str(),
                Fixed(j["accuracy_ci95"][0]).c_str(), Fixed(j["accuracy_ci95"][1]).c_str(),
                Fixed(j["true_reward_mean"]).c_str());
  };
  for (const auto& [key, g] : groups) {
    nlohmann::json j = row(g);
    print(key.first, key.second, j);
    j["task"] = key.first;
    j["difficulty"] = key.second;
    out["groups"].push_back(j);
  }
  print("all", "", out["overall"]);
  return out;
}

// log p(continuation | context) summed over the continuation's tokens, the way
// lm-evaluation-harness splits them: the ids of context + continuation after the context's ids.
double LogLikelihood(Session& session, const Tokenizer& tok, const std::string& context,
                     const std::string& continuation, std::vector<float>* logits) {
  const std::vector<int32_t> ctx = tok.Encode(context, {.add_bos = tok.add_bos_token()});
  std::vector<int32_t> whole = tok.Encode(context + continuation, {.add_bos = tok.add_bos_token()});
  size_t split = ctx.size();
  if (whole.size() <= split || !std::equal(ctx.begin(), ctx.end(), whole.begin())) {
    whole = ctx;  // the tokenization merged across the boundary: encode the parts apart
    const std::vector<int32_t> cont = tok.Encode(continuation, {.add_bos = false});
    whole.insert(whole.end(), cont.begin(), cont.end());
  }
  const int32_t vocab = session.model().config().vocab_size;
  if (static_cast<int64_t>(whole.size()) > session.context_length()) {
    Fail("a question of ", whole.size(), " tokens does not fit the context (",
         session.context_length(), ")");
  }
  session.Truncate(0);
  logits->resize(whole.size() * static_cast<size_t>(vocab));
  session.Forward(whole, *logits, /*all_logits=*/true);
  double sum = 0;
  for (size_t i = split; i < whole.size(); ++i) {
    const float* row = &(*logits)[(i - 1) * static_cast<size_t>(vocab)];
    const float top = *std::max_element(row, row + vocab);
    double z = 0;
    for (int32_t v = 0; v < vocab; ++v) z += std::exp(static_cast<double>(row[v]) - top);
    sum += row[whole[i]] - top - std::log(z);
  }
  return sum;
}

nlohmann::json MultipleChoice(const EvalOptions& o) {
  const LoadedModel m = LoadModel(o.model);
  const Tokenizer& tok = *m.tokenizer;
  Session session(*m.model, std::min<int32_t>(m.model->config().max_position_embeddings, 4096));
  std::vector<float> logits;
  int64_t n = 0, correct = 0;
  std::map<std::string, std::pair<int64_t, int64_t>> subjects;
  for (const auto& [number, line] : Lines(o.data, o.limit)) {
    const std::string where = Concat(o.data, ":", number);
    const nlohmann::json j = ParseLine(line, where);
    if (!j.is_object() || !j.contains("question") || !j["question"].is_string() ||
        !j.contains("choices") || !j["choices"].is_array() || j["choices"].size() < 2 ||
        j["choices"].size() > 26 || !j.contains("answer")) {
      Fail(where,
           ": a question needs \"question\" (string), \"choices\" (2 to 26 strings) and "
           "\"answer\" (a letter or an index)");
    }
    const size_t k = j["choices"].size();
    int64_t answer = -1;
    if (j["answer"].is_number_integer()) {
      answer = j["answer"].get<int64_t>();
    } else if (j["answer"].is_string() && j["answer"].get<std::string>().size() == 1) {
      answer = j["answer"].get<std::string>()[0] - 'A';
    }
    if (answer < 0 || answer >= static_cast<int64_t>(k)) {
      Fail(where, ": \"answer\" must name one of the ", k, " choices");
    }
    const std::string subject = j.value("subject", std::string());
    // lm-evaluation-harness's MMLU prompt (zero-shot).
    std::string context = "The following are multiple choice questions (with answers)";
    if (!subject.empty()) {
      context += " about ";
      context += subject;
    }
    context += ".\n\n";
    context += j["question"].get<std::string>();
    for (size_t c = 0; c < k; ++c) {
      if (!j["choices"][c].is_string()) Fail(where, ": choice ", c, " is not a string");
      context += '\n';
      context += static_cast<char>('A' + c);
      context += ". ";
      context += j["choices"][c].get<std::string>();
    }
    context += "\nAnswer:";
    int64_t best = 0;
    double best_ll = -INFINITY;
    for (size_t c = 0; c < k; ++c) {
      std::string letter = " ";
      letter += static_cast<char>('A' + c);
      const double ll = LogLikelihood(session, tok, context, letter, &logits);
      if (ll > best_ll) {
        best_ll = ll;
        best = static_cast<int64_t>(c);
      }
    }
    ++n;
    correct += best == answer;
    auto& s = subjects[subject.empty() ? "all" : subject];
    ++s.first;
    s.second += best == answer;
  }
  const auto [lo, hi] = WilsonInterval(correct, n);
  nlohmann::json out = {{"task", "mc"},
                        {"model", o.model},
                        {"data", o.data},
                        {"n", n},
                        {"accuracy", static_cast<double>(correct) / static_cast<double>(n)},
                        {"accuracy_ci95", {lo, hi}},
                        {"subjects", nlohmann::json::object()}};
  std::printf("| subject | n | accuracy |\n|---|---|---|\n");
  for (const auto& [name, s] : subjects) {
    const double acc = static_cast<double>(s.second) / static_cast<double>(s.first);
    out["subjects"][name] = {{"n", s.first}, {"accuracy", acc}};
    std::printf("| %s | %lld | %s |\n", name.c_str(), static_cast<long long>(s.first),
                Fixed(acc).c_str());
  }
  std::printf("| all | %lld | %s (%s-%s) |\n", static_cast<long long>(n),
              Fixed(out["accuracy"]).c_str(), Fixed(lo).c_str(), Fixed(hi).c_str());
  return out;
}

nlohmann::json WinRate(const EvalOptions& o) {
  if (o.model_b.empty()) Fail("--task winrate needs --model-b");
  std::vector<std::vector<ChatMessage>> prompts;
  for (const auto& [n, line] : Lines(o.data, o.limit)) {
    prompts.push_back(ParsePromptLine(line, Concat(o.data, ":", n)));
  }
  std::unique_ptr<RewardSource> judge = OpenRewardSource(o.reward);
  std::vector<double> scores[2];
  double tokens[2] = {0, 0};
  std::vector<std::string> texts[2];
  for (int side = 0; side < 2; ++side) {
    const LoadedModel m = LoadModel(side == 0 ? o.model : o.model_b);
    const std::string& name = side == 0                   ? o.chat_template
                              : o.chat_template_b.empty() ? o.chat_template
                                                          : o.chat_template_b;
    const ChatTemplate& t = m.ChooseTemplate(name);
    const std::vector<GenerationResult> answers = Answer(o, m, t, prompts);
    std::vector<std::vector<ChatMessage>> conversations;
    for (size_t i = 0; i < prompts.size(); ++i) {
      conversations.push_back(prompts[i]);
      conversations.back().push_back({"assistant", answers[i].text});
      tokens[side] += static_cast<double>(answers[i].tokens.size());
      texts[side].push_back(answers[i].text);
    }
    scores[side] = judge->Score(conversations);
  }
  const auto n = static_cast<double>(prompts.size());
  double wins = 0, sum_sq = 0;
  int64_t won = 0, tied = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const double w = scores[0][i] > scores[1][i] ? 1.0 : scores[0][i] == scores[1][i] ? 0.5 : 0.0;
    won += w == 1.0;
    tied += w == 0.5;
    wins += w;
    sum_sq += w * w;
  }
  const double rate = wins / n;
  const double var = prompts.size() > 1 ? (sum_sq - n * rate * rate) / (n - 1) : 0.0;
  const double half = 1.96 * std::sqrt(std::max(0.0, var) / n);
  nlohmann::json out = {{"task", "winrate"},
                        {"model", o.model},
                        {"model_b", o.model_b},
                        {"data", o.data},
                        {"n", prompts.size()},
                        {"wins", won},
                        {"ties", tied},
                        {"win_rate", rate},
                        {"win_rate_ci95", {std::max(0.0, rate - half), std::min(1.0, rate + half)}},
                        {"reward_mean", scores[0].empty() ? 0.0 : [&] {
                           double s = 0;
                           for (const double x : scores[0]) s += x;
                           return s / n;
                         }()},
                        {"reward_mean_b", [&] {
                           double s = 0;
                           for (const double x : scores[1]) s += x;
                           return s / n;
                         }()},
                        {"length_mean", tokens[0] / n},
                        {"length_mean_b", tokens[1] / n}};
  // The paired difference of mean rewards (A - B) with a 95% normal interval over prompts.
  double diff = 0, diff_sq = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const double d = scores[0][i] - scores[1][i];
    diff += d;
    diff_sq += d * d;
  }
  const double diff_mean = diff / n;
  const double diff_var =
      prompts.size() > 1 ? (diff_sq - n * diff_mean * diff_mean) / (n - 1) : 0.0;
  const double diff_half = 1.96 * std::sqrt(std::max(0.0, diff_var) / n);
  out["reward_diff_mean"] = diff_mean;
  out["reward_diff_ci95"] = {diff_mean - diff_half, diff_mean + diff_half};
  std::printf("| model | win rate (95%% CI) | mean reward | mean length (tokens) |\n");
  std::printf("|---|---|---|---|\n");
  std::printf("| A: %s | %s (%s-%s) | %s | %s |\n", o.model.c_str(), Fixed(rate).c_str(),
              Fixed(std::max(0.0, rate - half)).c_str(), Fixed(std::min(1.0, rate + half)).c_str(),
              Fixed(out["reward_mean"]).c_str(), Fixed(tokens[0] / n, 1).c_str());
  std::printf("| B: %s | | %s | %s |\n", o.model_b.c_str(), Fixed(out["reward_mean_b"]).c_str(),
              Fixed(tokens[1] / n, 1).c_str());
  return out;
}

// MT-Bench's question format: {"question_id", "category", "turns": [first, second, ...]}. Each
// turn is answered in the conversation so far, and the conversation up to that answer is
// scored by the judge.
nlohmann::json MultiTurn(const EvalOptions& o) {
  struct Question {
    std::string id, category;
    std::vector<std::string> turns;
  };
  std::vector<Question> questions;
  size_t max_turns = 0;
  for (const auto& [number, line] : Lines(o.data, o.limit)) {
    const std::string where = Concat(o.data, ":", number);
    const nlohmann::json j = ParseLine(line, where);
    if (!j.is_object() || !j.contains("turns") || !j["turns"].is_array() || j["turns"].empty()) {
      Fail(where, ": a question needs \"turns\": a list of user messages");
    }
    Question q;
    q.id = j.contains("question_id") ? j["question_id"].dump() : std::to_string(number);
    q.category = j.value("category", std::string("all"));
    for (const auto& t : j["turns"]) {
      if (!t.is_string()) Fail(where, ": every turn must be a string");
      q.turns.push_back(t.get<std::string>());
    }
    max_turns = std::max(max_turns, q.turns.size());
    questions.push_back(std::move(q));
  }
  const LoadedModel m = LoadModel(o.model);
  const ChatTemplate& t = m.ChooseTemplate(o.chat_template);
  std::unique_ptr<RewardSource> judge = OpenRewardSource(o.reward);
  std::vector<std::vector<ChatMessage>> conversations(questions.size());
  // [turn] -> sums per category and overall
  std::vector<std::map<std::string, std::pair<int64_t, double>>> per_turn(max_turns);
  nlohmann::json samples = nlohmann::json::array();
  for (size_t turn = 0; turn < max_turns; ++turn) {
    std::vector<size_t> asked;
    std::vector<std::vector<ChatMessage>> prompts;
    for (size_t i = 0; i < questions.size(); ++i) {
      if (turn >= questions[i].turns.size()) continue;
      conversations[i].push_back({"user", questions[i].turns[turn]});
      asked.push_back(i);
      prompts.push_back(conversations[i]);
    }
    const std::vector<GenerationResult> answers = Answer(o, m, t, prompts);
    std::vector<std::vector<ChatMessage>> judged;
    for (size_t k = 0; k < asked.size(); ++k) {
      conversations[asked[k]].push_back({"assistant", answers[k].text});
      judged.push_back(conversations[asked[k]]);
    }
    const std::vector<double> rewards = judge->Score(judged);
    for (size_t k = 0; k < asked.size(); ++k) {
      for (const std::string& key : {questions[asked[k]].category, std::string("all")}) {
        auto& cell = per_turn[turn][key];
        ++cell.first;
        cell.second += rewards[k];
      }
      if (samples.size() < 6) {
        samples.push_back({{"question_id", questions[asked[k]].id},
                           {"turn", turn + 1},
                           {"response", answers[k].text},
                           {"reward", rewards[k]}});
      }
    }
  }
  nlohmann::json out = {{"task", "multiturn"},
                        {"model", o.model},
                        {"data", o.data},
                        {"questions", questions.size()},
                        {"turns", nlohmann::json::array()},
                        {"samples", samples}};
  std::printf("| turn | category | n | mean reward |\n|---|---|---|---|\n");
  for (size_t turn = 0; turn < max_turns; ++turn) {
    nlohmann::json row = {{"turn", turn + 1}, {"categories", nlohmann::json::object()}};
    for (const auto& [category, cell] : per_turn[turn]) {
      const double mean = cell.second / static_cast<double>(cell.first);
      row["categories"][category] = {{"n", cell.first}, {"reward_mean", mean}};
      std::printf("| %zu | %s | %lld | %s |\n", turn + 1, category.c_str(),
                  static_cast<long long>(cell.first), Fixed(mean).c_str());
    }
    out["turns"].push_back(row);
  }
  return out;
}

}  // namespace

std::pair<double, double> WilsonInterval(int64_t k, int64_t n) {
  if (n <= 0) return {0.0, 1.0};
  const double z = 1.96, p = static_cast<double>(k) / static_cast<double>(n);
  const double nn = static_cast<double>(n);
  const double center = (p + z * z / (2 * nn)) / (1 + z * z / nn);
  const double half = z * std::sqrt(p * (1 - p) / nn + z * z / (4 * nn * nn)) / (1 + z * z / nn);
  return {std::max(0.0, center - half), std::min(1.0, center + half)};
}

nlohmann::json RunEval(const EvalOptions& o) {
  if (o.model.empty()) Fail("-m MODEL is required");
  if (o.data.empty()) Fail("--data FILE is required");
  if (o.batch < 1) Fail("--batch must be at least 1");
  if (o.max_new_tokens < 1) Fail("--max-new-tokens must be at least 1");
  nlohmann::json out;
  if (o.task == "exact") {
    out = Exact(o);
  } else if (o.task == "mc") {
    out = MultipleChoice(o);
  } else if (o.task == "winrate") {
    out = WinRate(o);
  } else if (o.task == "multiturn") {
    out = MultiTurn(o);
  } else {
    Fail("unknown --task '", o.task, "' (exact, mc, winrate or multiturn)");
  }
  if (!o.out.empty()) {
    const std::string text = out.dump(1) + "\n";
    WriteFileAtomically(o.out, [&](const ByteSink& sink) { sink(text); });
  }
  return out;
}

}  // namespace starling
