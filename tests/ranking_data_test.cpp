// Reward-model training data (src/reward/ranking_data.h): Nectar records ordered by rank, pairs
// in TRL's and OpenRLHF's shapes, every bad record named by file:line, truncation from the left,
// and the batch layout that shares a prompt's tokens (src/train/reward_train.h).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "core/error.h"
#include "error_message.h"
#include "reward/ranking_data.h"
#include "reward/reward.h"
#include "tokenizer/load.h"
#include "train/reward_train.h"

namespace starling {
namespace {

const std::string kTokenizer =
    std::string(STARLING_TEST_DATA_DIR) + "/tokenizers/llama-2/tokenizer.model";

TEST(RankingRecord, NectarAnswersAreOrderedByRankNotPosition) {
  const RankingRecord r = ParseRankingRecord(
      R"({"prompt": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: ",
          "answers": [{"answer": "third", "rank": 3.0}, {"answer": "first", "rank": 1},
                      {"answer": "second", "rank": 2.0}]})",
      "f:1");
  ASSERT_EQ(r.prompt.size(), 3u);
  EXPECT_EQ(r.prompt.back().content, "Joke?");
  EXPECT_EQ(r.answers, (std::vector<std::string>{"first", "second", "third"}));
}

TEST(RankingRecord, PairsInEveryShape) {
  // TRL's standard format: plain strings.
  RankingRecord r =
      ParseRankingRecord(R"({"prompt": "Why?", "chosen": "Because.", "rejected": "No."})", "f:1");
  ASSERT_EQ(r.prompt.size(), 1u);
  EXPECT_EQ(r.prompt[0].role, "user");
  EXPECT_EQ(r.answers, (std::vector<std::string>{"Because.", "No."}));
  // TRL's conversational format: message lists.
  r = ParseRankingRecord(
      R"({"prompt": [{"role": "user", "content": "Why?"}],
          "chosen": [{"role": "assistant", "content": "Because."}],
          "rejected": [{"role": "assistant", "content": "No."}]})",
      "f:2");
  EXPECT_EQ(r.prompt.size(), 1u);
  EXPECT_EQ(r.answers[1], "No.");
  // OpenRLHF's: whole conversations, no prompt key.
  r = ParseRankingRecord(
      R"({"chosen": [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "A"}],
          "rejected": [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "B"}]})",
      "f:3");
  EXPECT_EQ(r.prompt.size(), 1u);
  EXPECT_EQ(r.prompt[0].content, "Why?");
  EXPECT_EQ(r.answers, (std::vector<std::string>{"A", "B"}));
  // A Human/Assistant prompt string splits into turns.
  r = ParseRankingRecord(
      R"({"prompt": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: ", "chosen": "x", "rejected": "y"})",
      "f:4");
  EXPECT_EQ(r.prompt.size(), 3u);
}

TEST(RankingRecord, BadRecordsNameTheLineAndTheProblem) {
  struct Case {
    const char* json;
    const char* expected;
  };
  const Case cases[] = {
      {R"({"prompt": "\n\nHuman: x\n\nAssistant: ", "answers": [{"answer": "a", "rank": 1}]})",
       "at least 2 answers"},
      {R"({"prompt": "\n\nHuman: x\n\nAssistant: ", "answers": [{"answer": "a", "rank": 1}, {"answer": "b", "rank": 1.0}]})",
       "answers[1].rank 1 is given twice"},
      {R"({"prompt": "\n\nHuman: x\n\nAssistant: ", "answers": [{"answer": "a", "rank": 1.5}, {"answer": "b", "rank": 2}]})",
       "answers[0].rank is 1.5, not an integer"},
      {R"({"prompt": "\n\nHuman: x\n\nAssistant: ", "answers": [{"answer": "a"}, {"answer": "b", "rank": 2}]})",
       "answers[0].rank must be a number"},
      {R"({"prompt": "\n\nHuman: x\n\nAssistant: ", "answers": [{"answer": "a", "rank": "1"}, {"answer": "b", "rank": 2}]})",
       "answers[0].rank must be a number"},
      {R"({"prompt": "\n\nHuman: x\n\nAssistant: ", "answers": [{"answer": " ", "rank": 1}, {"answer": "b", "rank": 2}]})",
       "answers[0].answer is empty"},
      {R"({"prompt": "no turns here", "answers": [{"answer": "a", "rank": 1}, {"answer": "b", "rank": 2}]})",
       "prompt must start with \"Human:\""},
      {R"({"prompt": "Why?", "chosen": "a"})", "needs both \"chosen\" and \"rejected\""},
      {R"({"prompt": "Why?", "chosen": "", "rejected": "b"})", "chosen is empty"},
      {R"({"prompt": "", "chosen": "a", "rejected": "b"})", "\"prompt\" is empty"},
      {R"({"chosen": [{"role": "user", "content": "1"}, {"role": "assistant", "content": "a"}],
           "rejected": [{"role": "user", "content": "2"}, {"role": "assistant", "content": "b"}]})",
       "continue different conversations"},
      {R"({"chosen": "a", "rejected": "b"})", "no prompt"},
      {R"({"prompt": "Why?", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"})",
       "the last message must be the assistant's"},
      {R"({"text": "hello"})", "expected \"answers\" (Nectar) or \"chosen\" and \"rejected\""},
      {R"([1, 2])", "expected a JSON object"},
  };
  for (const Case& c : cases) {
    testing::ExpectErrorNaming(testing::ErrorMessage([&] { ParseRankingRecord(c.json, "f:7"); }),
                               "f:7", {c.expected});
  }
}

TEST(RankingData, RendersAsScoreDoesTruncatesLeftAndSkipsBadLines) {
  const Tokenizer tokenizer = LoadTokenizer(kTokenizer);
  const ChatTemplate& llama2 = ChatTemplate::ByName("llama-2");
  const std::string text =
      R"({"prompt": "Why is the sky blue?", "chosen": "Rayleigh scattering.", "rejected": "Paint."})"
      "\n\n"
      R"({"prompt": "x", "chosen": "a"})"
      "\n"
      R"({"prompt": "\n\nHuman: Hi\n\nAssistant: ", "answers": [{"answer": "Hello! How are you today?", "rank": 2}, {"answer": "Hey", "rank": 1}]})"
      "\n";
  RankingDataOptions options;
  options.add_bos = true;
  // The bad line 3 stops the load, naming it.
  testing::ExpectErrorNaming(
      testing::ErrorMessage(
          [&] { ParseRankingData(text, "d.jsonl", tokenizer, llama2, options, nullptr); }),
      "d.jsonl:3", {"needs both", "--skip-bad-lines"});
  options.skip_bad_lines = true;
  RankingDataStats stats;
  std::vector<RankingExample> got =
      ParseRankingData(text, "d.jsonl", tokenizer, llama2, options, &stats);
  EXPECT_EQ(stats.bad_lines, 1);
  EXPECT_EQ(stats.records, 2);
  EXPECT_EQ(stats.answers, 4);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].line, 1);
  EXPECT_EQ(got[1].line, 4);
  // Exactly the ids `starling score` feeds the model for the same conversation.
  EXPECT_EQ(got[0].sequences[0],
            RewardConversationIds(
                tokenizer, llama2,
                {{"user", "Why is the sky blue?"}, {"assistant", "Rayleigh scattering."}}, true));
  EXPECT_EQ(got[1].sequences[0],
            RewardConversationIds(tokenizer, llama2, {{"user", "Hi"}, {"assistant", "Hey"}}, true));
  // Left truncation keeps each sequence's last ctx tokens, counted.
  options.ctx = 8;
  const std::vector<RankingExample> cut =
      ParseRankingData(text, "d.jsonl", tokenizer, llama2, options, &stats);
  EXPECT_EQ(stats.truncated, 4);
  for (size_t i = 0; i < 2; ++i) {
    const auto& whole = got[0].sequences[i];
    EXPECT_EQ(cut[0].sequences[i], std::vector<int32_t>(whole.end() - 8, whole.end()));
  }
}

TEST(RankingBatch, PromptsShareTheirCommonPrefixAndEveryAnswerKeepsATokenToScore) {
  const std::vector<std::vector<int32_t>> a = {{1, 5, 6, 7, 8}, {1, 5, 6, 9}, {1, 5, 6, 7}};
  const std::vector<std::vector<int32_t>> b = {{2, 3}, {4, 3}};     // nothing in common
  const std::vector<std::vector<int32_t>> c = {{1, 2}, {1, 2, 3}};  // one is the other's prefix
  RankingBatch batch = MakeRankingBatch({&a, &b, &c}, true);
  EXPECT_EQ(batch.lengths, (std::vector<int64_t>{3, 2, 1, 1, 2, 2, 1, 1, 2}));
  EXPECT_EQ(batch.prefixes, (std::vector<int64_t>{-1, 0, 0, 0, -1, -1, -1, 6, 6}));
  EXPECT_EQ(batch.inputs, (std::vector<int32_t>{1, 5, 6, 7, 8, 9, 7, 2, 3, 4, 3, 1, 2, 2, 3}));
  EXPECT_EQ(batch.score_rows, (std::vector<int64_t>{4, 5, 6, 8, 10, 12, 14}));
  EXPECT_EQ(batch.answers, (std::vector<int64_t>{3, 2, 2}));
  batch = MakeRankingBatch({&a}, false);
  EXPECT_EQ(batch.lengths, (std::vector<int64_t>{5, 4, 4}));
  EXPECT_EQ(batch.prefixes, (std::vector<int64_t>{-1, -1, -1}));
  EXPECT_EQ(batch.score_rows, (std::vector<int64_t>{4, 8, 12}));
}

}  // namespace
}  // namespace starling
