// The reward model against PyTorch's reference rewards (tests/data/tiny-rm, computed in float64
// from the stored weights), from the published .bin layout and after conversion to
// safetensors; the read-outs; prefix reuse; Nectar parsing and the ranking metrics.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "core/error.h"
#include "core/file.h"
#include "error_message.h"
#include "formats/safetensors.h"
#include "formats/torch_checkpoint.h"
#include "model/reward_load.h"
#include "reward/nectar.h"
#include "reward/reward.h"
#include "test_dir.h"
#include "tokenizer/load.h"

namespace starling {
namespace {

const std::string kData = std::string(STARLING_TEST_DATA_DIR) + "/tiny-rm";

struct Reference {
  std::vector<int32_t> ids;
  double reward = 0;
  std::vector<double> per_position;
};

std::vector<Reference> LoadReference(const std::string& dir) {
  const nlohmann::json j = nlohmann::json::parse(ReadFile(dir + "/reference.json"));
  std::vector<Reference> out;
  for (const auto& c : j["conversations"]) {
    out.push_back({c["token_ids"].get<std::vector<int32_t>>(), c["reward_last_token"].get<double>(),
                   c["reward_per_position"].get<std::vector<double>>()});
  }
  return out;
}

// The fixture's README: an fp32 engine is within 1e-4 + 1e-4 |reward| of the float64
// reference (2 layers of hidden 64: float32 rounding is ~1e-6 relative per operation).
double Tolerance(double reward) {
  return 1e-4 + 1e-4 * std::fabs(reward);
}

void ExpectMatchesReference(const Model& model, const Tokenizer& tokenizer,
                            const std::string& dir) {
  const std::vector<Reference> refs = LoadReference(dir);
  ASSERT_EQ(refs.size(), 7u);
  RewardScorer scorer(model, tokenizer, 512);
  for (size_t i = 0; i < refs.size(); ++i) {
    const float got = scorer.Score(refs[i].ids);
    EXPECT_NEAR(got, refs[i].reward, Tolerance(refs[i].reward)) << dir << " conversation " << i;
    const std::vector<float> all = scorer.ScoreAllPositions(refs[i].ids);
    ASSERT_EQ(all.size(), refs[i].per_position.size());
    for (size_t p = 0; p < all.size(); ++p) {
      EXPECT_NEAR(all[p], refs[i].per_position[p], Tolerance(refs[i].per_position[p]))
          << dir << " conversation " << i << " position " << p;
    }
  }
}

TEST(RewardModel, PublishedBinLayoutMatchesPyTorchFloat32) {
  const LoadedRewardModel rm =
      LoadRewardModelAndTokenizer({.files = {.directory = kData + "/rm-a"}});
  EXPECT_EQ(rm.model->config().head, ModelHead::kReward);
  EXPECT_EQ(rm.model->head().rows, 1);
  ExpectMatchesReference(*rm.model, *rm.tokenizer, kData + "/rm-a");
}

TEST(RewardModel, PublishedBinLayoutMatchesPyTorchBFloat16) {
  const LoadedRewardModel rm =
      LoadRewardModelAndTokenizer({.files = {.directory = kData + "/rm-b"}});
  EXPECT_EQ(rm.model->head().format, WeightFormat::kBF16);
  ExpectMatchesReference(*rm.model, *rm.tokenizer, kData + "/rm-b");
}

// The .bin's tensors written to safetensors, under the given names.
void WriteSafetensors(const std::string& bin, const std::string& out,
                      const std::function<std::string(const std::string&)>& rename) {
  const TorchCheckpoint checkpoint = TorchCheckpoint::Open(bin);
  SafetensorsWriter writer;
  for (const TorchTensor& t : checkpoint.tensors()) {
    const std::string name = rename(t.name);
    if (!name.empty()) writer.AddTensor(name, t.dtype, t.shape, t.bytes());
  }
  writer.WriteTo(out);
}

TEST(RewardModel, SafetensorsConversionsMatchToo) {
  const std::string source = kData + "/rm-b";
  const Tokenizer tokenizer = LoadTokenizer(source + "/tokenizer.model");
  // 1. The same names as the .bin (transformer.*, v_head.weight).
  {
    const testing::TempDir dir("rm_same_names");
    std::filesystem::copy_file(source + "/config.json", dir.File("config.json"));
    WriteSafetensors(source + "/pytorch_model.bin", dir.File("model.safetensors"),
                     [](const std::string& n) { return n; });
    const Model model = LoadRewardModel({.directory = dir.path()});
    ExpectMatchesReference(model, tokenizer, source);
  }
  // 2. Hugging Face's LlamaForSequenceClassification layout: model.* and score.weight.
  {
    const testing::TempDir dir("rm_seq_cls");
    std::string config = ReadFile(source + "/config.json");
    config.replace(config.find("LlamaForCausalLM"), 16, "LlamaForSequenceClassification");
    WriteFileAtomically(dir.File("config.json"), [&](const ByteSink& sink) { sink(config); });
    WriteSafetensors(source + "/pytorch_model.bin", dir.File("model.safetensors"),
                     [](const std::string& n) {
                       if (n == "v_head.weight") return std::string("score.weight");
                       return "model." + n.substr(std::string("transformer.").size());
                     });
    const Model model = LoadRewardModel({.directory = dir.path()});
    ExpectMatchesReference(model, tokenizer, source);
  }
}

TEST(RewardModel, TensorNamesMapToCanonicalOnes) {
  EXPECT_EQ(CanonicalRewardTensorName("transformer.layers.0.mlp.up_proj.weight", true),
            "model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(CanonicalRewardTensorName("model.model.norm.weight", true), std::nullopt);
  EXPECT_EQ(CanonicalRewardTensorName("model.model.norm.weight", false), "model.norm.weight");
  EXPECT_EQ(CanonicalRewardTensorName("model.lm_head.weight", true), std::nullopt);
  EXPECT_EQ(CanonicalRewardTensorName("lm_head.weight", false), std::nullopt);
  EXPECT_EQ(CanonicalRewardTensorName("v_head.weight", true), "score.weight");
  EXPECT_EQ(CanonicalRewardTensorName("score.weight", false), "score.weight");
  EXPECT_EQ(CanonicalRewardTensorName("model.embed_tokens.weight", false),
            "model.embed_tokens.weight");
}

TEST(RewardModel, BadCheckpointsAreRefusedClearly) {
  const std::string source = kData + "/rm-b";
  {  // no v_head
    const testing::TempDir dir("rm_no_head");
    std::filesystem::copy_file(source + "/config.json", dir.File("config.json"));
    WriteSafetensors(source + "/pytorch_model.bin", dir.File("model.safetensors"),
                     [](const std::string& n) { return n == "v_head.weight" ? "" : n; });
    EXPECT_NE(testing::ErrorMessage([&] {
                LoadRewardModel({.directory = dir.path()});
              }).find("reward head"),
              std::string::npos);
  }
  {  // a shape that does not match config.json
    const testing::TempDir dir("rm_bad_shape");
    std::string config = ReadFile(source + "/config.json");
    config.replace(config.find("\"intermediate_size\": 172"), 24, "\"intermediate_size\": 170");
    WriteFileAtomically(dir.File("config.json"), [&](const ByteSink& sink) { sink(config); });
    std::filesystem::copy_file(source + "/pytorch_model.bin", dir.File("pytorch_model.bin"));
    const std::string error =
        testing::ErrorMessage([&] { LoadRewardModel({.directory = dir.path()}); });
    EXPECT_NE(error.find("mlp.gate_proj.weight' has shape [172, 64], expected [170, 64]"),
              std::string::npos)
        << error;
  }
  {  // no checkpoint at all
    const testing::TempDir dir("rm_empty");
    std::filesystem::copy_file(source + "/config.json", dir.File("config.json"));
    EXPECT_NE(testing::ErrorMessage([&] {
                LoadRewardModel({.directory = dir.path()});
              }).find("no reward checkpoint"),
              std::string::npos);
  }
  {  // a truncated .bin
    const testing::TempDir dir("rm_truncated");
    std::filesystem::copy_file(source + "/config.json", dir.File("config.json"));
    const std::string bin = ReadFile(source + "/pytorch_model.bin");
    WriteFileAtomically(dir.File("pytorch_model.bin"), [&](const ByteSink& sink) {
      sink(std::string_view(bin).substr(0, 100000));
    });
    EXPECT_THROW(LoadRewardModel({.directory = dir.path()}), Error);
  }
}

TEST(RewardScorer, SharedPrefixesAreReusedWithIdenticalResults) {
  const LoadedRewardModel rm =
      LoadRewardModelAndTokenizer({.files = {.directory = kData + "/rm-a"}});
  const ChatTemplate& llama2 = ChatTemplate::ByName("llama-2");
  const std::vector<ChatMessage> prompt = {{"user", "Write a haiku about the sea, please."}};
  std::vector<std::vector<int32_t>> sequences;
  for (const char* answer : {"Waves fold into foam", "No.", "The sea is wide and blue and deep"}) {
    std::vector<ChatMessage> messages = prompt;
    messages.push_back({"assistant", answer});
    sequences.push_back(RewardConversationIds(*rm.tokenizer, llama2, messages, true));
  }
  RewardScorer shared(*rm.model, *rm.tokenizer, 256);
  std::vector<float> with_reuse;
  for (const auto& ids : sequences) with_reuse.push_back(shared.Score(ids));
  for (size_t i = 0; i < sequences.size(); ++i) {
    RewardScorer fresh(*rm.model, *rm.tokenizer, 256);
    EXPECT_EQ(fresh.Score(sequences[i]), with_reuse[i]) << "answer " << i;
  }
  EXPECT_LT(shared.stats().tokens_forwarded, shared.stats().tokens);
  EXPECT_EQ(shared.stats().sequences, 3);
  // The same sequence twice: the last token is run again, same result.
  EXPECT_EQ(shared.Score(sequences[2]), with_reuse[2]);
}

TEST(RewardScorer, CardReadoutFollowsTheCardsIndexing) {
  const LoadedRewardModel rm =
      LoadRewardModelAndTokenizer({.files = {.directory = kData + "/rm-a"}});
  const Model& model = *rm.model;
  const Tokenizer& tok = *rm.tokenizer;
  ASSERT_TRUE(tok.add_bos_token());
  ASSERT_EQ(tok.bos_id(), 1);
  ASSERT_EQ(tok.unk_id(), 0);
  const std::vector<int32_t> ids = LoadReference(kData + "/rm-a")[0].ids;  // starts with BOS
  constexpr int32_t kMax = 64;
  RewardScorer scorer(model, tok, 128);
  auto probe = [&](std::span<const int32_t> cached, int64_t position) {
    Session session(model, 128);
    std::vector<float> all(cached.size());
    session.Forward(cached, all, true);
    float out = 0;
    session.Probe(tok.unk_id(), position, std::span(&out, 1));
    return out;
  };
  // PAD_ID is BOS (the card's tokenizer call adds it): found at 0, so index -1 = kMax - 1, a pad.
  EXPECT_EQ(scorer.Score(ids, RewardReadout::kCard, kMax), probe(ids, kMax - 1));
  EXPECT_NE(scorer.Score(ids, RewardReadout::kCard, kMax), scorer.Score(ids));
  // No BOS anywhere: c_ind = max_length, the same padded position.
  const std::vector<int32_t> no_bos(ids.begin() + 1, ids.end());
  EXPECT_EQ(scorer.Score(no_bos, RewardReadout::kCard, kMax), probe(no_bos, kMax - 1));
  // A BOS at position 3: the reward of position 2, a real token.
  std::vector<int32_t> later = no_bos;
  later[3] = 1;
  EXPECT_EQ(scorer.Score(later, RewardReadout::kCard, kMax), scorer.ScoreAllPositions(later)[2]);
  // Exactly max_length tokens starting with BOS: index -1 is the last real token.
  const std::vector<int32_t> full(ids.begin(), ids.begin() + 16);
  EXPECT_EQ(scorer.Score(full, RewardReadout::kCard, 16), scorer.Score(full));
  // Longer than max_length: truncated from the left (the first token, BOS, goes).
  std::vector<int32_t> window(ids.end() - 16, ids.end());
  EXPECT_EQ(scorer.Score(ids, RewardReadout::kCard, 16),
            scorer.Score(window, RewardReadout::kCard, 16));
}

TEST(Nectar, PromptTurnsBecomeMessages) {
  const NectarRecord r = ParseNectarRecord(
      R"({"prompt": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: ",
          "answers": [{"answer": "4", "model": "gpt-4", "rank": 1},
                      {"answer": "5", "model": "x", "rank": 2}],
          "turns": 2, "num_responses": 2, "source": ["test"], "good_natured": true})",
      "test:1");
  ASSERT_EQ(r.prompt.size(), 3u);
  EXPECT_EQ(r.prompt[0].role, "user");
  EXPECT_EQ(r.prompt[0].content, "Hi there");
  EXPECT_EQ(r.prompt[1].role, "assistant");
  EXPECT_EQ(r.prompt[1].content, "Hello!");
  EXPECT_EQ(r.prompt[2].content, "What is 2+2?");
  ASSERT_EQ(r.answers.size(), 2u);
  EXPECT_EQ(r.answers[1].answer, "5");
  EXPECT_EQ(r.answers[1].rank, 2);
  // "Human:" inside a turn is text, not a marker.
  EXPECT_EQ(ParseHumanAssistantPrompt("Human: say Human: ok\n\nAssistant:", "t")[0].content,
            "say Human: ok");
}

TEST(Nectar, BadRecordsNameTheProblem) {
  EXPECT_NE(testing::ErrorMessage([] {
              ParseNectarRecord(R"({"prompt": "Hi", "answers": [{"answer": "a", "rank": 1}]})",
                                "f:3");
            }).find("f:3: prompt must start with \"Human:\""),
            std::string::npos);
  EXPECT_NE(testing::ErrorMessage([] {
              ParseNectarRecord(R"({"prompt": "Human: x", "answers": []})", "f:4");
            }).find("\"answers\" must be a non-empty list"),
            std::string::npos);
  EXPECT_NE(testing::ErrorMessage([] {
              ParseNectarRecord(R"({"prompt": "Human: x", "answers": [{"answer": 1, "rank": 1}]})",
                                "f");
            }).find("answers[0].answer must be a string"),
            std::string::npos);
  EXPECT_THROW(ParseNectarRecord("{not json", "f"), Error);
  EXPECT_THROW(ParseHumanAssistantPrompt("Human: a\n\nHuman: b", "f"), Error);
  EXPECT_THROW(ParseHumanAssistantPrompt("Human: a\n\nAssistant: done", "f"), Error);
}

TEST(Nectar, RankingMetricsOnHandWorkedCases) {
  // Perfect agreement: ranks 1..4, scores decreasing.
  RankAgreement a = CompareRanking({1, 2, 3, 4}, {4, 3, 2, 1});
  EXPECT_DOUBLE_EQ(a.kendall_tau, 1.0);
  EXPECT_TRUE(a.top1_correct);
  EXPECT_EQ(a.adjacent_pairs, 3);
  EXPECT_EQ(a.adjacent_correct, 3);
  // Reversed.
  a = CompareRanking({1, 2, 3, 4}, {1, 2, 3, 4});
  EXPECT_DOUBLE_EQ(a.kendall_tau, -1.0);
  EXPECT_FALSE(a.top1_correct);
  EXPECT_EQ(a.adjacent_correct, 0);
  // One swap of the middle pair: 6 pairs, 5 concordant, 1 discordant: tau = 4/6.
  a = CompareRanking({1, 2, 3, 4}, {4, 2, 3, 1});
  EXPECT_DOUBLE_EQ(a.kendall_tau, 4.0 / 6.0);
  EXPECT_TRUE(a.top1_correct);
  EXPECT_EQ(a.adjacent_correct, 2);
  // Ties in the ranks (tau-b): ranks {1, 2, 2}, scores {3, 2, 1}: C = 2, D = 0, pairs 3, rank
  // ties 1, score ties 0: tau = 2 / sqrt(2 * 3). Adjacent pairs: (1 vs each 2) = 2, both right.
  a = CompareRanking({1, 2, 2}, {3, 2, 1});
  EXPECT_DOUBLE_EQ(a.kendall_tau, 2.0 / std::sqrt(6.0));
  EXPECT_EQ(a.adjacent_pairs, 2);
  EXPECT_EQ(a.adjacent_correct, 2);
  // A tie for the top score is not a correct top-1.
  EXPECT_FALSE(CompareRanking({1, 2}, {5, 5}).top1_correct);
  EXPECT_EQ(CompareRanking({1, 2}, {5, 5}).kendall_tau, 0.0);
}

}  // namespace
}  // namespace starling
