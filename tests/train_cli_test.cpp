// `starling train pretrain` and `bench-train` end to end: real processes and files.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "run_starling.h"
#include "test_dir.h"

namespace {

const std::string kStories = std::string(STARLING_MODELS_DIR) + "/stories260K.gguf";
const std::string kData = std::string(STARLING_TEST_DATA_DIR) + "/tiny-mistral/reference/text.txt";

std::vector<nlohmann::json> ReadLog(const std::string& path) {
  std::ifstream f(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(f, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

TEST(TrainCli, PretrainLowersTheLossAndWritesALoadableModel) {
  starling::testing::TempDir dir("pretrain");
  const std::string log = dir.path() + "/log.jsonl", out = dir.path() + "/out";
  const auto r = RunStarling("train pretrain -m " + kStories + " --data " + kData + " --out " +
                             out + " --ctx 32 --batch 4 --steps 12 --lr 2e-3 --no-shuffle --log " +
                             log + " -t 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = ReadLog(log);
  ASSERT_EQ(lines.size(), 12u);
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["step"], i + 1);
    for (const char* key : {"loss", "lr", "grad_norm", "tokens_per_s"}) {
      EXPECT_TRUE(lines[i][key].is_number()) << key;
    }
  }
  // Twelve steps over the same few windows (memorisation): the loss must fall by half at
  // least (measured: 3.9 -> about 1.3 here).
  EXPECT_LT(lines.back()["loss"].get<double>(), 0.5 * lines.front()["loss"].get<double>());
  // The directory is a model generate loads (config, safetensors, the GGUF's tokenizer).
  const auto g = RunStarling("generate -m " + out + " -p 'The' -n 8 --temp 0");
  EXPECT_EQ(g.exit_code, 0) << g.err;
  EXPECT_FALSE(g.out.empty());
}

TEST(TrainCli, ASavedUntrainedModelIsTheSameModel) {
  // lr 0: the weights come back as they went in, through the float32 parameters and the
  // Hugging Face layout (the GGUF's interleaved Q/K rows put back), so the saved model
  // must generate llama2.c's greedy story exactly.
  starling::testing::TempDir dir("lr0");
  const std::string out = dir.path() + "/out";
  const auto r = RunStarling("train pretrain -m " + kStories + " --data " + kData + " --out " +
                             out + " --ctx 16 --batch 1 --steps 1 --lr 0 -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto g = RunStarling("generate -m " + out + " -p '' -n 200 --temp 0");
  ASSERT_EQ(g.exit_code, 0) << g.err;
  EXPECT_EQ(g.out, ReadAll(std::string(STARLING_TEST_DATA_DIR) + "/expected_greedy_n200.txt"));
}

TEST(TrainCli, GradientsDoNotDependOnTheThreadCount) {
  starling::testing::TempDir dir("threads");
  std::vector<std::vector<nlohmann::json>> logs;
  for (int threads : {1, 2, 3}) {
    const std::string log = dir.path() + "/log" + std::to_string(threads);
    const auto r = RunStarling("train pretrain -m " + kStories + " --data " + kData + " --out " +
                               dir.path() + "/out --ctx 48 --batch 3 --steps 4 --lr 1e-3 --seed 5 " +
                               "--grad-clip 1 --log " + log + " -q -t " + std::to_string(threads));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    logs.push_back(ReadLog(log));
  }
  for (size_t i = 0; i < logs[0].size(); ++i) {
    for (size_t t = 1; t < logs.size(); ++t) {
      // Bit for bit: JSON keeps every digit of the doubles.
      EXPECT_EQ(logs[t][i]["loss"], logs[0][i]["loss"]) << "step " << i + 1;
      EXPECT_EQ(logs[t][i]["grad_norm"], logs[0][i]["grad_norm"]) << "step " << i + 1;
    }
  }
}

TEST(TrainCli, TopBlocksOfAQuantizedModelTrainWhileTheRestStaysQuantized) {
  starling::testing::TempDir dir("quantized");
  const std::string q8 = dir.path() + "/s260-q8_0.gguf", log = dir.path() + "/log.jsonl";
  ASSERT_EQ(RunStarling("quantize " + kStories + " " + q8 + " --type q8_0").exit_code, 0);
  const auto r = RunStarling("train pretrain -m " + q8 + " --unfreeze-layers 2 --data " + kData +
                             " --out " + dir.path() + "/out --ctx 32 --batch 4 --steps 12 --lr 3e-3" +
                             " --no-shuffle --log " + log + " -t 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Blocks 3 and 4 and the final norm train; the tied Q8_0 embedding/head and blocks 0-2 stay
  // as stored (the head read through a float32 copy for the backward).
  EXPECT_NE(r.err.find("blocks 3..4 trained"), std::string::npos) << r.err;
  const auto lines = ReadLog(log);
  ASSERT_EQ(lines.size(), 12u);
  EXPECT_LT(lines.back()["loss"].get<double>(), 0.8 * lines.front()["loss"].get<double>());
  EXPECT_EQ(RunStarling("generate -m " + dir.path() + "/out -p 'The' -n 4 --temp 0").exit_code, 0);
}

TEST(TrainCli, BadInputGetsAClearError) {
  starling::testing::TempDir dir("bad");
  const std::string empty = dir.path() + "/empty.txt", tiny = dir.path() + "/tiny.txt";
  std::ofstream(empty).flush();
  std::ofstream(tiny) << "Hi";
  const std::string base = "train pretrain -m " + kStories + " --out " + dir.path() + "/out ";
  struct Case {
    std::string args, message;
  } cases[] = {
      {"--data " + empty, "the data file is empty"},
      {"--data " + tiny + " --ctx 64", "too few for one training window of --ctx 64"},
      {"--data " + kData + " --ctx 100000", "larger than the model's context"},
      {"--data " + kData + " --unfreeze-layers 6", "outside [0, 5]"},
      {"--data " + kData + " --ctx 16 --steps 3 --lr 1e30", "stopping before the update"},
      {"--data " + dir.path() + "/missing.txt", "missing.txt"},
  };
  for (const Case& c : cases) {
    const auto r = RunStarling(base + c.args + " -q");
    EXPECT_EQ(r.exit_code, 1) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir.path() + "/out/model.safetensors")) << c.args;
  }
}

TEST(TrainCli, BenchTrainReportsSpeedAndMemory) {
  const auto r = RunStarling("bench-train --preset stories260K -b 1 -c 32 -r 1 --json -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["tokens_per_s_median"].get<double>(), 0);
  EXPECT_GT(j["gemm_peak_gflops"].get<double>(), 0);
  EXPECT_GT(j["memory_mib"]["activations"].get<double>(), 0);
}

}  // namespace
