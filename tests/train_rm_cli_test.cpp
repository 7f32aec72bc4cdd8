// `starling train rm` and `train dpo` end to end: real processes and files. The saved reward
// model is what `rank` and `score` load; prefix sharing changes no loss; resume is bit-exact; a
// language model gets a seeded v_head; bad data names its line; DPO starts at ln 2 and saves a
// language model. (Losses and gradients against PyTorch: train_rm_fixture_test.cpp,
// train_dpo_fixture_test.cpp, train_fixture_test.cpp and train_test.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "run_starling.h"
#include "test_dir.h"
#include "train_log.h"

namespace {

std::vector<nlohmann::json> ReadLog(const std::string& path) {
  return starling::testing::ReadLog(path, {"step", "loss"});
}

const std::string kData = STARLING_TEST_DATA_DIR;
const std::string kRm = kData + "/tiny-rm/rm-a";
const std::string kNectar = kData + "/nectar/sample.jsonl";  // 3 records, K = 3, 3, 2
const std::string kStories = std::string(STARLING_MODELS_DIR) + "/stories260K.gguf";

std::string Train(const std::string& out, const std::string& extra) {
  return "train rm -m " + kRm + " --data " + kNectar + " --out " + out + " --log " + out +
         ".log -q -t 2 " + extra;
}

TEST(TrainRm, TheSavedModelIsStarlingsLayoutAndRankReproducesTheEvalLoss) {
  starling::testing::TempDir dir("rm_rank");
  const std::string out = dir.path() + "/out";
  const auto r = RunStarling(Train(
      out, "--loss kwise --eval-data " + kNectar + " --batch 2 --steps 6 --lr 1e-3 --no-shuffle"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<nlohmann::json> log = ReadLog(out + ".log");
  ASSERT_EQ(log.size(), 6u);
  EXPECT_EQ(log[0]["data_prompts"], 3);
  EXPECT_EQ(log[0]["data_answers"], 8);
  EXPECT_EQ(log[0]["prompts"], 2);  // --batch 2 prompts per step
  const double before = log[0]["eval_loss_before"].get<double>();
  const double after = log.back()["eval_loss"].get<double>();
  EXPECT_LT(after, before);
  for (const char* key :
       {"eval_adjacent_accuracy", "eval_pair_accuracy", "eval_kendall_tau", "eval_top1_accuracy"}) {
    EXPECT_TRUE(log.back().contains(key)) << key;
  }

  // Starling-RM's published names, float32.
  const auto f = starling::SafetensorsFile::Open(out + "/model.safetensors");
  EXPECT_NE(f.Find("v_head.weight"), nullptr);
  EXPECT_NE(f.Find("transformer.embed_tokens.weight"), nullptr);
  EXPECT_NE(f.Find("transformer.layers.1.mlp.down_proj.weight"), nullptr);
  EXPECT_EQ(f.Find("score.weight"), nullptr);
  EXPECT_EQ(f.Find("model.norm.weight"), nullptr);

  // `rank` on the saved model: its scores give the final eval loss again (the K-wise loss
  // worked out here in double from rank's scores). Inference multiplies with its own kernels
  // (not the training sgemm): float32 rounding of ~1e-6 relative in the rewards; 1e-4 absolute
  // on a loss of ~0.3 leaves room and still catches a wrong tensor, name or template.
  const auto ranked = RunStarling("rank -m " + out + " " + kNectar);
  ASSERT_EQ(ranked.exit_code, 0) << ranked.err;
  std::istringstream lines(ranked.out);
  double sum = 0;
  int records = 0;
  for (std::string line; std::getline(lines, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("summary")) continue;
    const auto scores = j["scores"].get<std::vector<double>>();
    const auto ranks = j["ranks"].get<std::vector<double>>();
    std::vector<double> best_first(scores.size());
    for (size_t i = 0; i < scores.size(); ++i) {
      best_first[static_cast<size_t>(ranks[i]) - 1] = scores[i];
    }
    double loss = 0;
    const size_t k = best_first.size();
    for (size_t i = 0; i < k; ++i) {
      double z = 0;
      for (size_t m = i; m < k; ++m) z += std::exp(best_first[m]);
      loss += std::log(z) - best_first[i];
    }
    sum += loss / static_cast<double>(k - 1);
    ++records;
  }
  ASSERT_EQ(records, 3);
  EXPECT_NEAR(sum / records, after, 1e-4);
}

TEST(TrainRm, SharingThePromptChangesNoLoss) {
  starling::testing::TempDir dir("rm_share");
  const std::string a = dir.path() + "/shared", b = dir.path() + "/whole";
  const std::string common =
      "--loss pairwise --zero-sum-penalty 0.01 --batch 2 --steps 3 --lr 1e-3";
  ASSERT_EQ(RunStarling(Train(a, common)).exit_code, 0);
  const auto r = RunStarling(Train(b, common + " --no-prefix-sharing"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto la = ReadLog(a + ".log"), lb = ReadLog(b + ".log");
  ASSERT_EQ(la.size(), 3u);
  ASSERT_EQ(lb.size(), 3u);
  // Shared rows attend in two parts merged by their log-sum-exps: float32 rounding only
  // (~1e-7 relative per value); 1e-5 relative on losses of ~1 over 3 steps of lr 1e-3.
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(la[i]["loss"].get<double>(), lb[i]["loss"].get<double>(),
                1e-5 * lb[i]["loss"].get<double>())
        << "step " << i + 1;
  }
  // The sharing is real: the prompt tokens run once.
  EXPECT_LT(la[0]["tokens_shared"].get<int64_t>(), la[0]["tokens_whole"].get<int64_t>());
}

TEST(TrainRm, ResumingFromACheckpointGivesTheSameLosses) {
  starling::testing::TempDir dir("rm_resume");
  const std::string out = dir.path() + "/out";
  const std::string common = "--loss kwise --batch 1 --steps 4 --lr 1e-3 --save-every 2";
  ASSERT_EQ(RunStarling(Train(out, common)).exit_code, 0);
  const auto first = ReadLog(out + ".log");
  const auto r =
      RunStarling("train rm -m " + kRm + " --data " + kNectar + " --out " + out + " --log " + out +
                  ".resumed.log -q " + common + " --resume " + out + "/checkpoint-2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto resumed = ReadLog(out + ".resumed.log");
  ASSERT_EQ(resumed.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(resumed[i]["step"], first[i + 2]["step"]);
    EXPECT_EQ(resumed[i]["loss"], first[i + 2]["loss"]);  // bit for bit
  }
  // A different loss is a different run.
  const auto refused = RunStarling("train rm -m " + kRm + " --data " + kNectar + " --out " + out +
                                   " -q --loss pairwise --batch 1 --steps 4 --lr 1e-3 "
                                   "--save-every 2 --resume " +
                                   out + "/checkpoint-2");
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("the checkpoint's loss is \"kwise\""), std::string::npos)
      << refused.err;
}

TEST(TrainRm, ALanguageModelGetsASeededVHeadAndTheResultScores) {
  starling::testing::TempDir dir("rm_lm");
  auto run = [&](const std::string& name, int seed) {
    const std::string out = dir.path() + "/" + name;
    const auto r = RunStarling("train rm -m " + kStories + " --data " + kNectar + " --out " + out +
                               " --log " + out +
                               ".log -q --loss kwise --batch 3 --steps 2 "
                               "--lr 1e-3 --seed " +
                               std::to_string(seed));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return ReadLog(out + ".log");
  };
  const auto a = run("a", 1), b = run("b", 1), c = run("c", 2);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a[0]["loss"], b[0]["loss"]);
  EXPECT_NE(a[0]["loss"], c[0]["loss"]);
  EXPECT_NE(a[0]["init"].get<std::string>().find("fresh v_head (seed 1)"), std::string::npos);
  const auto scored = RunStarling("score -m " + dir.path() + "/a --prompt Hi --response Hello");
  EXPECT_EQ(scored.exit_code, 0) << scored.err;
  EXPECT_TRUE(std::isfinite(std::stod(scored.out)));
}

TEST(TrainRm, BadDataNamesTheLineOrIsSkippedAndCounted) {
  starling::testing::TempDir dir("rm_bad");
  const std::string data = dir.path() + "/bad.jsonl";
  std::ifstream in(kNectar);
  std::string good((std::istreambuf_iterator<char>(in)), {});
  std::ofstream(data)
      << good
      << R"({"prompt": "\n\nHuman: x\n\nAssistant: ", "answers": [{"answer": "a", "rank": 1}, {"answer": "b", "rank": 1}]})"
      << "\n";
  const std::string out = dir.path() + "/out";
  const std::string base = "train rm -m " + kRm + " --data " + data + " --out " + out + " --log " +
                           out + ".log -q --loss kwise --steps 1 ";
  const auto r = RunStarling(base);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find(data + ":5: answers[1].rank 1 is given twice"), std::string::npos) << r.err;
  const auto skipped = RunStarling(base + "--skip-bad-lines");
  ASSERT_EQ(skipped.exit_code, 0) << skipped.err;
  EXPECT_EQ(ReadLog(out + ".log")[0]["skipped_bad_lines"], 1);
}

const std::string kRankings = kData + "/train/rm/rankings.jsonl";  // K = 3, 4, 7, 2, 5, 2
const std::string kTinyMistral = kData + "/tiny-mistral/hf";

TEST(TrainDpo, StartsAtLn2CountsPairsAndSavesALanguageModel) {
  starling::testing::TempDir dir("dpo");
  const std::string out = dir.path() + "/out";
  const std::string base = "train dpo -m " + kTinyMistral + " --template openchat --data " +
                           kRankings + " --out " + out + " --log " + out + ".log -q ";
  const auto r = RunStarling(base + "--eval-data " + kRankings +
                             " --beta 0.1 --no-shuffle --batch 2 --steps 4 --lr 1e-3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto log = ReadLog(out + ".log");
  ASSERT_EQ(log.size(), 4u);
  EXPECT_EQ(log[0]["data_pairs"], 17);  // --pairs best: K - 1 per record
  EXPECT_EQ(log[0]["pairs"], 2);
  // The policy is the reference at step 1, computed on the same batches: z = 0 exactly.
  EXPECT_DOUBLE_EQ(log[0]["loss"].get<double>(), std::log(2.0));
  EXPECT_DOUBLE_EQ(log[0]["eval_loss_before"].get<double>(), std::log(2.0));
  EXPECT_LT(log.back()["eval_loss"].get<double>(), std::log(2.0));
  EXPECT_GT(log.back()["eval_reward_accuracy"].get<double>(), 0.5);
  const auto generated = RunStarling("generate -m " + out + " -p Hello -n 4 --temp 0");
  EXPECT_EQ(generated.exit_code, 0) << generated.err;
  // Every ranked pair.
  const std::string out2 = dir.path() + "/all";
  ASSERT_EQ(
      RunStarling("train dpo -m " + kTinyMistral + " --template openchat --data " + kRankings +
                  " --out " + out2 + " --log " + out2 + ".log -q --pairs all --steps 1")
          .exit_code,
      0);
  EXPECT_EQ(ReadLog(out2 + ".log")[0]["data_pairs"], 3 + 6 + 21 + 1 + 10 + 1);
}

TEST(TrainDpo, BadOptionsAndDataAreClearErrors) {
  starling::testing::TempDir dir("dpo_bad");
  const std::string out = dir.path() + "/out";
  const std::string base = "train dpo -m " + kTinyMistral + " --template openchat --out " + out +
                           " -q --steps 1 --data ";
  auto r = RunStarling(base + kRankings + " --beta 0");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--beta must be positive"), std::string::npos) << r.err;
  r = RunStarling("train dpo -m " + kRm + " --template llama-2 --out " + out +
                  " -q --steps 1 --data " + kRankings);
  EXPECT_NE(r.exit_code, 0);  // a reward model is not a policy
  const std::string data = dir.path() + "/bad.jsonl";
  std::ofstream(data) << R"({"prompt": "Hi", "chosen": "a"})"
                      << "\n";
  r = RunStarling(base + data);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find(data + ":1: a pair needs both"), std::string::npos) << r.err;
}

}  // namespace
