// `starling eval`'s pieces: the task checks and true rewards against the Python reference's
// answers (tests/data/tasks/golden.jsonl, written by tools/chat_tasks.py golden), the Wilson
// interval against published values; and the command end to end: exact accuracy on answers
// the model is known to give, win rates that are symmetric and exactly 1/2 against itself,
// clear errors for bad files.
#include <gtest/gtest.h>

#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "eval/eval.h"
#include "eval/task_check.h"
#include "reward_server.h"
#include "run_starling.h"
#include "test_dir.h"

namespace starling {
namespace {

const std::string kData = STARLING_TEST_DATA_DIR;
const std::string kStories = std::string(STARLING_MODELS_DIR) + "/stories260K.gguf";

TEST(TaskCheck, AgreesWithThePythonReferenceOnEveryGoldenCase) {
  std::ifstream in(kData + "/tasks/golden.jsonl");
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("response")) continue;  // a judge case (ranks): the judge is Python's only
    const TaskRecord r = ParseTaskRecord(j["record"].dump(), "golden");
    const std::string response = j["response"].get<std::string>();
    EXPECT_EQ(CheckAnswer(response, r), j["check"].get<bool>())
        << r.check << " answer '" << r.answer << "' response '" << response << "'";
    EXPECT_NEAR(TrueReward(response, r), j["true_reward"].get<double>(), 1e-12)
        << r.check << " answer '" << r.answer << "' response '" << response << "'";
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

TEST(TaskCheck, BadRecordsAreNamed) {
  for (const char* bad : {"{", R"({"messages": [{"role": "user", "content": "Q"}]})",
                          R"({"messages": [{"role": "user", "content": "Q"}], "task": "t",
                              "difficulty": "easy", "answer": "1", "check": "fuzzy"})"}) {
    try {
      ParseTaskRecord(bad, "eval.jsonl:3");
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("eval.jsonl:3"), std::string::npos) << e.what();
    }
  }
}

// Wilson score intervals at 95% (z = 1.96), e.g. Newcombe (1998), Table I: 81/263 ->
// (0.2553, 0.3662); and the edges.
TEST(Eval, WilsonInterval) {
  auto [lo, hi] = WilsonInterval(81, 263);
  EXPECT_NEAR(lo, 0.2553, 5e-4);
  EXPECT_NEAR(hi, 0.3662, 5e-4);
  std::tie(lo, hi) = WilsonInterval(0, 10);
  EXPECT_EQ(lo, 0.0);
  EXPECT_NEAR(hi, 0.2775, 5e-4);
  std::tie(lo, hi) = WilsonInterval(10, 10);
  EXPECT_NEAR(lo, 0.7225, 5e-4);
  EXPECT_EQ(hi, 1.0);
}

// Exact accuracy end to end: the answers of the first two records are the model's own greedy
// answers (so both are right), the third's is not.
TEST(Eval, ExactScoresTheModelsGreedyAnswers) {
  testing::TempDir dir("eval_exact");
  auto greedy = [](const std::string& prompt) {
    const auto r = RunStarling("generate -m " + kStories + " --template raw -p '" + prompt +
                               "' -n 8 --temp 0 -t 1");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
  };
  const std::string a = greedy("Once upon a time"), b = greedy("Tom had a dog");
  ASSERT_FALSE(a.empty());
  auto record = [](const std::string& prompt, const std::string& answer, const char* task) {
    return nlohmann::json{{"messages", {{{"role", "user"}, {"content", prompt}}}},
                          {"task", task},
                          {"difficulty", "easy"},
                          {"answer", answer},
                          {"check", "text"}}
        .dump();
  };
  const std::string data = dir.path() + "/tasks.jsonl";
  // The text check strips surrounding whitespace and one trailing period.
  auto norm = [](std::string s) {
    s.erase(0, s.find_first_not_of(" \t\n\r\f\v"));
    s.erase(s.find_last_not_of(" \t\n\r\f\v") + 1);
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  };
  std::ofstream(data) << record("Once upon a time", norm(a), "story") << "\n"
                      << record("Tom had a dog", norm(b), "story") << "\n"
                      << record("Tom had a dog", "something else", "other") << "\n";
  const auto r = RunStarling("eval --task exact -m " + kStories + " --template raw --data " + data +
                             " -n 8 -t 1 --out " + dir.path() + "/out.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream f(dir.path() + "/out.json");
  const nlohmann::json out = nlohmann::json::parse(f);
  EXPECT_EQ(out["overall"]["n"], 3);
  EXPECT_EQ(out["overall"]["correct"], 2);
  for (const auto& g : out["groups"]) {
    EXPECT_EQ(g["accuracy"].get<double>(), g["task"] == "story" ? 1.0 : 0.0) << g.dump();
  }
  EXPECT_NE(r.out.find("| story | easy | 2 | 1.000"), std::string::npos) << r.out;
}

// Against itself every prompt is a tie: exactly 1/2. A against B and B against A add up to 1.
TEST(Eval, WinRatesAreHalfAgainstItselfAndSymmetric) {
  testing::TempDir dir("eval_winrate");
  const std::string prompts = dir.path() + "/prompts.jsonl";
  std::ofstream(prompts) << R"({"prompt": "Once upon a time"})"
                         << "\n"
                         << R"({"prompt": "The cat"})"
                         << "\n"
                         << R"({"messages": [{"role": "user", "content": "Lily went"}]})"
                         << "\n";
  const std::string rm = kData + "/tiny-rm/rm-a";
  const std::string mistral = kData + "/tiny-mistral/hf";
  auto run = [&](const std::string& a, const std::string& ta, const std::string& b,
                 const std::string& tb, const std::string& out) {
    const auto r = RunStarling("eval --task winrate -m " + a + " --template " + ta + " --model-b " +
                               b + " --template-b " + tb + " --data " + prompts + " --rm " + rm +
                               " -n 6 -t 1 --out " + out);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::ifstream f(out);
    return nlohmann::json::parse(f);
  };
  const auto self = run(kStories, "raw", kStories, "raw", dir.path() + "/self.json");
  EXPECT_EQ(self["win_rate"].get<double>(), 0.5);
  EXPECT_EQ(self["ties"], 3);
  const auto ab = run(kStories, "raw", mistral, "openchat", dir.path() + "/ab.json");
  const auto ba = run(mistral, "openchat", kStories, "raw", dir.path() + "/ba.json");
  EXPECT_DOUBLE_EQ(ab["win_rate"].get<double>() + ba["win_rate"].get<double>(), 1.0);
  EXPECT_EQ(ab["length_mean"], ba["length_mean_b"]);
  EXPECT_EQ(ab["reward_mean"], ba["reward_mean_b"]);
}

// Each turn is answered in the conversation so far and judged with everything up to it: a judge
// that scores a conversation by its number of messages gives 2 on turn 1 and 4 on turn 2; the
// second turn's conversation carries the first turn's answer.
TEST(Eval, MultiTurnJudgesEachTurnInItsConversation) {
  std::vector<nlohmann::json> seen;
  std::mutex mutex;
  RewardServer judge([&](const httplib::Request& q, httplib::Response& r) {
    const nlohmann::json body = nlohmann::json::parse(q.body);
    nlohmann::json data = nlohmann::json::array();
    for (size_t i = 0; i < body["conversations"].size(); ++i) {
      data.push_back({{"index", i}, {"reward", body["conversations"][i].size()}});
    }
    {
      std::lock_guard lock(mutex);
      seen.push_back(body);
    }
    r.set_content(nlohmann::json{{"data", data}}.dump(), "application/json");
  });
  testing::TempDir dir("eval_multiturn");
  const std::string data = dir.path() + "/mt.jsonl";
  std::ofstream(data)
      << R"({"question_id": 81, "category": "writing", "turns": ["Once upon a time", "Then"]})"
      << "\n"
      << R"({"question_id": 82, "category": "story", "turns": ["Tom had a dog", "And"]})"
      << "\n";
  const auto r =
      RunStarling("eval --task multiturn -m " + kStories + " --template raw --data " + data +
                  " --rm-url " + judge.url() + " -n 6 -t 1 --out " + dir.path() + "/mt.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream f(dir.path() + "/mt.json");
  const nlohmann::json out = nlohmann::json::parse(f);
  ASSERT_EQ(out["turns"].size(), 2u);
  EXPECT_EQ(out["turns"][0]["categories"]["all"]["reward_mean"], 2.0);
  EXPECT_EQ(out["turns"][1]["categories"]["all"]["reward_mean"], 4.0);
  EXPECT_EQ(out["turns"][1]["categories"]["writing"]["n"], 1);
  ASSERT_EQ(seen.size(), 2u);  // one request per turn
  const nlohmann::json& second = seen[1]["conversations"][0];
  EXPECT_EQ(second[0]["content"], "Once upon a time");
  EXPECT_EQ(second[1]["content"], seen[0]["conversations"][0][1]["content"]);
  EXPECT_EQ(second[2]["content"], "Then");
}

TEST(Eval, MultipleChoiceRunsAndBadFilesAreNamed) {
  testing::TempDir dir("eval_mc");
  const std::string data = dir.path() + "/mc.jsonl";
  std::ofstream(data) << R"({"question": "What does the cat say?", "choices": ["Meow", "Moo"],)"
                      << R"( "answer": "A", "subject": "animals"})"
                      << "\n"
                      << R"({"question": "Two plus two?", "choices": ["3", "4", "5"], "answer": 1})"
                      << "\n";
  auto r = RunStarling("eval --task mc -m " + kStories + " --data " + data + " -t 1 --out " +
                       dir.path() + "/mc.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream f(dir.path() + "/mc.json");
  const nlohmann::json out = nlohmann::json::parse(f);
  EXPECT_EQ(out["n"], 2);
  EXPECT_EQ(out["subjects"]["animals"]["n"], 1);
  const std::string bad = dir.path() + "/bad.jsonl";
  std::ofstream(bad) << R"({"question": "Q", "choices": ["a", "b"], "answer": "C"})"
                     << "\n";
  r = RunStarling("eval --task mc -m " + kStories + " --data " + bad);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bad.jsonl:1"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace starling
