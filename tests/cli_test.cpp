// The starling executable end to end: real processes, real files, exit codes.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/file.h"
#include "run_starling.h"
#include "test_dir.h"
#include "tokenizer/load.h"

namespace {

const std::string kOpenChat = std::string(STARLING_MODELS_DIR) + "/openchat-3.5-tokenizer";

TEST(Cli, TokenizePrintsIdsAndPieces) {
  const RunStarlingResult r =
      RunStarling("tokenize --tokenizer " + kOpenChat + " 'Hello<|end_of_turn|>'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "1\t<s>\n22557\t\xE2\x96\x81Hello\n32000\t<|end_of_turn|>\n");
}

TEST(Cli, TokenizeJsonAndFlags) {
  RunStarlingResult r =
      RunStarling("tokenize --tokenizer " + kOpenChat + " --json --no-bos --plain '<s>'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "{\"ids\":[523,28713,28767],\"pieces\":[\"\xE2\x96\x81<\",\"s\",\">\"]}\n");
  r = RunStarling("tokenize --tokenizer " + kOpenChat + " --ids-only 'GPT4 Correct User: Hello'");
  EXPECT_EQ(r.out, "1 420 6316 28781 3198 3123 1247 28747 22557\n");
}

TEST(Cli, TokenizeReadsFilesAndStdinByteForByte) {
  const std::string text = "line one\n\tline two  \n";
  const std::string path = WriteTemp("text.txt", text);
  const RunStarlingResult from_file =
      RunStarling("tokenize --ids-only --no-bos --tokenizer " + kOpenChat + " -f " + path);
  const RunStarlingResult from_stdin =
      RunStarling("tokenize --ids-only --no-bos --tokenizer " + kOpenChat + " -f -", text);
  EXPECT_EQ(from_file.exit_code, 0) << from_file.err;
  EXPECT_EQ(from_file.out, from_stdin.out);
  // And back: detokenize restores the bytes exactly, without adding a newline.
  const RunStarlingResult back =
      RunStarling("detokenize --tokenizer " + kOpenChat + " '" + from_file.out + "'");
  EXPECT_EQ(back.out, text);
}

// "1 2 3", as `tokenize --ids-only` prints them.
std::string JoinIds(const std::vector<int32_t>& ids) {
  std::string out;
  for (size_t k = 0; k < ids.size(); ++k) {
    if (k > 0) out += ' ';
    out += std::to_string(ids[k]);
  }
  return out;
}

TEST(Cli, TokenizeStreamsALargeFileWithTheIdsOfTheWhole) {
  // -f reads and encodes a megabyte at a time (memory no longer grows with the file: a 100 MB
  // file once peaked at 3 GB); the ids, in every output format, are those of the whole text.
  std::string text;
  uint32_t state = 7;
  const char* words[] = {"Hello",
                         "world,",
                         "caf\xC3\xA9",
                         "\xF0\x9F\xA6\xA9",
                         "<|end_of_turn|>",
                         "a",
                         "\n",
                         "\t",
                         "  ",
                         "\xE2\x96\x81",
                         "\xFF",
                         "GPT4 Correct User:"};
  while (text.size() < (3u << 20) + 12345) {
    state = state * 1664525u + 1013904223u;
    text += words[(state >> 16) % (sizeof words / sizeof *words)];
    if ((state >> 8) % 3 != 0) text += ' ';
  }
  const std::string path = WriteTemp("large.txt", text);
  const starling::Tokenizer tokenizer = starling::LoadTokenizer(kOpenChat);
  const std::vector<int32_t> whole = tokenizer.Encode(text);
  const std::string expected = JoinIds(whole);
  const RunStarlingResult ids =
      RunStarling("tokenize --ids-only --tokenizer " + kOpenChat + " -f " + path);
  ASSERT_EQ(ids.exit_code, 0) << ids.err;
  EXPECT_TRUE(ids.out == expected + "\n") << "the streamed ids differ from the whole text's";
  const RunStarlingResult json =
      RunStarling("tokenize --json --tokenizer " + kOpenChat + " -f " + path);
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const nlohmann::json parsed = nlohmann::json::parse(json.out);
  EXPECT_TRUE(parsed["ids"].get<std::vector<int32_t>>() == whole);
  EXPECT_EQ(parsed["pieces"].size(), whole.size());
  // Plain text too, and from standard input: the same ids.
  const RunStarlingResult plain =
      RunStarling("tokenize --ids-only --plain --tokenizer " + kOpenChat + " -f -", text);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  const std::vector<int32_t> plain_whole = tokenizer.Encode(text, {.parse_special = false});
  const std::string plain_expected = JoinIds(plain_whole);
  EXPECT_TRUE(plain.out == plain_expected + "\n");
}

TEST(Cli, TokenizeRendersAConversation) {
  const std::string messages = WriteTemp(
      "messages.json", R"([{"role": "user", "content": "Implement quicksort using C++"}])");
  const RunStarlingResult r =
      RunStarling("tokenize --tokenizer " + kOpenChat + " --template openchat-code --messages " +
                  messages + " --generation-prompt --render --ids-only");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "<s>Code User: Implement quicksort using C++<|end_of_turn|>Code Assistant:\n"
            "1 7596 1247 28747 26256 2936 7653 1413 334 1680 32000 7596 21631 28747\n");
}

TEST(Cli, DetokenizeSkipsSpecialTokensOnRequest) {
  RunStarlingResult r = RunStarling("detokenize --tokenizer " + kOpenChat + " 1 22557 32000");
  EXPECT_EQ(r.out, "<s>Hello<|end_of_turn|>");
  r = RunStarling("detokenize --tokenizer " + kOpenChat + " --skip-special '1,22557,32000'");
  EXPECT_EQ(r.out, "Hello");
}

TEST(Cli, ErrorsAreOneClearLineAndNonZero) {
  RunStarlingResult r = RunStarling("tokenize --tokenizer /no/such/dir x");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "starling: error: /no/such/dir: cannot open: No such file or directory\n");
  const std::string broken = WriteTemp("broken.model", std::string("\x0A\xFF\x01garbage", 10));
  r = RunStarling("tokenize --tokenizer " + broken + " x");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(broken + ": field length"), std::string::npos) << r.err;
  r = RunStarling("tokenize --tokenizer " + kOpenChat + " --template nope --messages /dev/null");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unknown chat template 'nope'"), std::string::npos);
  r = RunStarling("detokenize --tokenizer " + kOpenChat + " 12 abc");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "starling: error: 'abc' is not a token id\n");
  const std::string bad_json = WriteTemp("bad.json", "[{\"role\": \"user\"}]");
  r = RunStarling("tokenize --tokenizer " + kOpenChat + " --template openchat --messages " +
                  bad_json);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("message 0: \"content\" must be a string"), std::string::npos) << r.err;
}

TEST(Cli, GenerateWithNoModelTellsLlama2cStory) {
  // The README's main command: the embedded stories260K, greedy, 200 tokens from BOS.
  const RunStarlingResult r = RunStarling("generate -p '' -n 200 --temp 0");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::ifstream f(std::string(STARLING_TEST_DATA_DIR) + "/expected_greedy_n200.txt");
  EXPECT_EQ(r.out, std::string(std::istreambuf_iterator<char>(f), {}));
}

TEST(Cli, KvTypeF16TellsTheSameStoryAndOtherTypesAreRefused) {
  // An F16 KV cache keeps stories260K's greedy story (inference_test checks the logits).
  const RunStarlingResult r = RunStarling("generate -p '' -n 200 --temp 0 --kv-type f16");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::ifstream f(std::string(STARLING_TEST_DATA_DIR) + "/expected_greedy_n200.txt");
  EXPECT_EQ(r.out, std::string(std::istreambuf_iterator<char>(f), {}));
  const RunStarlingResult bad = RunStarling("generate -p '' -n 2 --kv-type bf16");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--kv-type"), std::string::npos) << bad.err;
  // Half the bytes: 0.625 MiB where float32 takes 1.25 MiB.
  const RunStarlingResult info = RunStarling("info -c 1024 --kv-type f16");
  EXPECT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("KV cache 0.62 MiB for 1024 positions (float16)"), std::string::npos)
      << info.out;
}

TEST(Cli, ThreadCountDoesNotChangeTheOutput) {
  const std::string args = "generate -p '' -n 200 --temp 0";
  const RunStarlingResult one = RunStarling(args + " -t 1");
  EXPECT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(RunStarling(args + " -t 2").out, one.out);
  EXPECT_EQ(RunStarling(args + " -t 3").out, one.out);
}

TEST(Cli, GenerateIsReproducibleForASeed) {
  const std::string args = "generate -p 'Once upon a time' -n 40 --temp 1 --seed 7";
  const RunStarlingResult a = RunStarling(args);
  EXPECT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(RunStarling(args).out, a.out);
  EXPECT_NE(RunStarling("generate -p 'Once upon a time' -n 40 --temp 1 --seed 8").out, a.out);
}

TEST(Cli, ChatFromAPipeKeepsTheConversation) {
  const std::string model = std::string(STARLING_TEST_DATA_DIR) + "/tiny-mistral/model-f32.gguf";
  const RunStarlingResult r =
      RunStarling("chat -m " + model + " -n 4 --temp 0", "Hello\nHow are you?\n/reset\nHello\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // Three replies, one per line; the one after /reset repeats the first (same conversation).
  std::vector<std::string> lines;
  std::string line;
  std::istringstream in(r.out);
  while (std::getline(in, line)) lines.push_back(line);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_EQ(lines[0], lines[2]);
  EXPECT_NE(lines[0], lines[1]);
}

TEST(Cli, ChatCommandsMultiLineInputAndCutReplies) {
  const std::string chat = "chat -m " + std::string(STARLING_TEST_DATA_DIR) +
                           "/tiny-mistral/model-f32.gguf --template openchat --temp 0 ";
  // /help answers on stderr and sends nothing; a \-continued message and a """ block are one
  // message each: two replies, each cut by -n and saying so.
  RunStarlingResult r = RunStarling(chat + "-n 4",
                                    "/help\nfirst line\\\nsecond line\n\"\"\"\nblock one\n\nblock "
                                    "two\n\"\"\"\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("/system TEXT"), std::string::npos) << r.err;
  size_t cuts = 0;
  for (size_t at = 0;
       (at = r.err.find("[the reply was cut at -n 4 tokens]", at)) != std::string::npos; ++at) {
    ++cuts;
  }
  EXPECT_EQ(cuts, 2u) << r.err;
  // The \-continued message is the same message as the """ block of the same two lines.
  const RunStarlingResult one =
      RunStarling(chat + "-n 4", "\"\"\"\nfirst line\nsecond line\n\"\"\"\n");
  EXPECT_EQ(one.out.substr(0, one.out.find('\n')), r.out.substr(0, r.out.find('\n')));
  // An unknown command is an error, not a message to the model; // sends a leading /.
  r = RunStarling(chat + "-n 4", "/nope\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unknown command /nope"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
  r = RunStarling(chat + "-n 4", "//nope\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out, "");
}

TEST(Cli, ChatDropsTheOldestTurnsWhenTheContextIsFull) {
  const std::string chat = "chat -m " + std::string(STARLING_TEST_DATA_DIR) +
                           "/tiny-mistral/model-f32.gguf --template openchat --temp 0 -n 8 -c 64 ";
  const RunStarlingResult r = RunStarling(
      chat + "--system 'Be brief.'",
      "one two three four five\nsix seven eight nine ten\neleven twelve thirteen\nfourteen\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("message(s) were dropped, the system message kept]"), std::string::npos)
      << r.err;
  // A single message longer than the context is refused, not cut.
  std::string long_message;
  for (int i = 0; i < 40; ++i) long_message += "one two three ";
  const RunStarlingResult big = RunStarling(chat, long_message + "\n");
  EXPECT_EQ(big.exit_code, 1);
  EXPECT_NE(big.err.find("than the 56 the context leaves for it"), std::string::npos) << big.err;
}

TEST(Cli, ChatChecksTheTemplatesTokensAtStart) {
  // stories260K's vocabulary has no <|end_of_turn|>: an error before any message is read.
  const RunStarlingResult r = RunStarling(
      "chat -m " + std::string(STARLING_MODELS_DIR) + "/stories260K.gguf --template openchat", "");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("needs the special token '<|end_of_turn|>'"), std::string::npos) << r.err;
}

TEST(Cli, InfoReportsConfigTensorsAndMemory) {
  const RunStarlingResult r = RunStarling("info -c 1024");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("vocab 512, hidden 64, intermediate 172, layers 5, heads 8, kv heads 4"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("model.layers.4.mlp.down_proj.weight"), std::string::npos);
  // 2 (K and V) x 5 layers x 1024 positions x 4 KV heads x 8 dims x 4 bytes = 1.25 MiB
  EXPECT_NE(r.out.find("KV cache 1.25 MiB for 1024 positions"), std::string::npos) << r.out;
}

TEST(Cli, ModelErrorsAreClear) {
  RunStarlingResult r = RunStarling("generate -m /no/such/model -p hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "starling: error: /no/such/model: cannot open: No such file or directory\n");
  r = RunStarling("chat -m " + std::string(STARLING_MODELS_DIR) + "/stories260K.gguf", "hi\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("ships no chat template; choose one with --template"), std::string::npos);
  r = RunStarling("generate -p hi --top-p 1.5");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("top_p = 1.5 is out of range"), std::string::npos) << r.err;
}

TEST(Cli, EverySubcommandHasHelpWithExamples) {
  for (const char* sub :
       {"tokenize", "detokenize", "generate", "chat", "perplexity", "info", "bench", "quantize",
        "make-model", "score", "rank", "serve", "plot", "eval", "pull"}) {
    const RunStarlingResult r = RunStarling(std::string(sub) + " --help");
    EXPECT_EQ(r.exit_code, 0) << sub;
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << sub;
    EXPECT_NE(r.out.find("Example"), std::string::npos) << sub << ": no example in --help";
    EXPECT_NE(r.out.find("starling " + std::string(sub) + " "), std::string::npos) << sub;
  }
  const RunStarlingResult none = RunStarling("");
  EXPECT_NE(none.exit_code, 0);
}

const std::string kRewardModel = std::string(STARLING_TEST_DATA_DIR) + "/tiny-rm/rm-a";

TEST(Cli, ScoreReproducesThePyTorchReward) {
  // tests/data/tiny-rm/rm-a/reference.json, conversation 0: reward_last_token -1.4360008.
  const RunStarlingResult r = RunStarling(
      "score -m " + kRewardModel +
      " --json --ids '1 518 25580 29962 15043 29973 2 518 29914 25580 29962 6324 29892 920 508 "
      "306 1371 366 29973 2'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["reward"].get<double>(), -1.4360008037939895, 1e-4 + 1.5e-4);
  EXPECT_EQ(j["tokens"], 20);
}

TEST(Cli, ScoreJsonlInJsonlOut) {
  const std::string path = WriteTemp(
      "conversations.jsonl",
      R"({"messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi!"}]})"
      "\n\n"
      R"({"messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Go away."}]})"
      "\n");
  const RunStarlingResult r = RunStarling("score -m " + kRewardModel + " -f " + path);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream lines(r.out);
  std::string line;
  int count = 0;
  while (std::getline(lines, line)) {
    EXPECT_TRUE(nlohmann::json::parse(line).contains("reward")) << line;
    ++count;
  }
  EXPECT_EQ(count, 2);
  // The same conversation through --prompt/--response gives the same number.
  const RunStarlingResult one =
      RunStarling("score -m " + kRewardModel + " --json --prompt Hello? --response Hi!");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(nlohmann::json::parse(one.out)["reward"],
            nlohmann::json::parse(r.out.substr(0, r.out.find('\n')))["reward"]);
  // A bad line is named by file and line number.
  const std::string bad = WriteTemp("bad.jsonl", "{\"messages\": []}\n{oops\n");
  const RunStarlingResult e = RunStarling("score -m " + kRewardModel + " -f " + bad);
  EXPECT_EQ(e.exit_code, 1);
  EXPECT_NE(e.err.find("bad.jsonl:2"), std::string::npos) << e.err;
  std::remove(path.c_str());
  std::remove(bad.c_str());
}

TEST(Cli, RankSummarizesAgreementAndReusesPrompts) {
  const std::string nectar = std::string(STARLING_TEST_DATA_DIR) + "/nectar/sample.jsonl";
  const RunStarlingResult r = RunStarling("rank -m " + kRewardModel + " " + nectar);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<nlohmann::json> lines;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[1]["scores"].size(), 3u);
  const auto& summary = lines.back()["summary"];
  EXPECT_EQ(summary["records"], 3);
  EXPECT_EQ(summary["adjacent_pairs"], 5);
  EXPECT_LT(summary["tokens_forwarded"].get<int>(), summary["tokens_scored"].get<int>());
  // Scoring each answer from scratch gives the same scores.
  const RunStarlingResult separate =
      RunStarling("rank --no-prefix-reuse -m " + kRewardModel + " " + nectar);
  ASSERT_EQ(separate.exit_code, 0) << separate.err;
  EXPECT_EQ(separate.out.substr(0, separate.out.find("{\"summary\"")),
            r.out.substr(0, r.out.find("{\"summary\"")));
}

TEST(Cli, BadValuesAreErrorsNamingTheFlag) {
  const std::string tiny = std::string(STARLING_TEST_DATA_DIR) + "/tiny-mistral/hf";
  const std::string text = WriteTemp("ppl.txt", "Once upon a time there was a cat.\n");
  // Each was accepted silently (or ended in "internal error: std::bad_alloc").
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"generate -p x --top-k -5", "--top-k: Value -5 not in range 0 to"},
      {"generate -p x -m ''", "--model: must not be empty"},
      {"chat -m ''", "--model: must not be empty"},
      {"serve -m ''", "--model: must not be empty"},
      {"serve --rm ''", "--rm: must not be empty"},
      {"generate -p x -c 1e8", "--ctx"},
      {"generate -p x -c 4096", "--ctx 4096 exceeds the model's 2048 positions"},
      {"perplexity -f " + text + " -c 100000", "--ctx 100000 exceeds the model's 2048 positions"},
      {"info -c -1", "--ctx -1 must be positive"},
      {"serve --parallel 256 -c 1048576", "--ctx 1048576 exceeds the model's 2048 positions"},
      {"generate -m " + tiny + " -p x -c 1048576", "--ctx 1048576 exceeds the model's 8192"},
      {"generate -p x --seed 18446744073709551616", "--seed: must be an integer from 0 to"},
      {"chat --seed 1e3", "--seed: must be an integer from 0 to"},
      {"detokenize --tokenizer " + kOpenChat + " 1,,2", "'1,,2' has an empty token id"},
  };
  for (const auto& [args, message] : cases) {
    const RunStarlingResult r = RunStarling(args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_NE(r.err.find(message), std::string::npos) << args << ": " << r.err;
    EXPECT_EQ(r.err.find("internal error"), std::string::npos) << args << ": " << r.err;
  }
}

// A model with 2^24 positions and a large KV cache per position: 32 layers x 8 KV heads x 64
// dims, 2 x 32 x 8 x 64 x 4 bytes = 128 KiB per position (float32).
std::string MakeLongContextModel(const std::string& dir) {
  const std::string config = dir + "/config.json";
  std::ofstream(config) << R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
    "vocab_size": 32002, "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 32,
    "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 64,
    "max_position_embeddings": 16777216, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 32000})";
  const std::string model = dir + "/big.gguf";
  const RunStarlingResult made =
      RunStarling("make-model " + model + " --config " + config + " --type f32 --vocab " +
                  std::string(STARLING_TEST_DATA_DIR) + "/tiny-mistral/hf");
  EXPECT_EQ(made.exit_code, 0) << made.err;
  return model;
}

TEST(Cli, ContextWhoseKvCacheExceedsMemoryIsRefusedBeforeAllocating) {
  // 2^24 positions need 2 TiB, and 256 slots of 2^20 positions 32 TiB: more than any test
  // machine.
  starling::testing::TempDir dir("bigctx");
  const std::string model = MakeLongContextModel(dir.path());
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"generate -p x -c 16777216", "--ctx 16777216 needs 2048.00 GiB of KV cache for 1"},
           {"serve --parallel 256 -c 1048576", "--ctx 1048576 needs 32768.00 GiB of KV cache"}}) {
    const RunStarlingResult r = RunStarling(args + " -m " + model);
    EXPECT_EQ(r.exit_code, 1) << args;
    EXPECT_NE(r.err.find(message), std::string::npos) << args << ": " << r.err;
  }
}

TEST(Cli, ContextBeyondUlimitIsRefusedBeforeAllocating) {
  // 32768 positions need 4 GiB of KV cache: less than the machine's memory, more than the room
  // under a 3 GB `ulimit -v`. The check compares with the memory the process can still take
  // (MemAvailable, a cgroup's limit, RLIMIT_AS) and names the limit, before allocating. (Not
  // under ASan, whose shadow memory needs more address space than any such limit.)
  starling::testing::TempDir dir("ulimitctx");
  const std::string model = MakeLongContextModel(dir.path());
  const std::string err = dir.path() + "/ulimit.err";
  const int status = std::system(("ulimit -v 3000000; timeout 120 " + kStarling + " generate -m " +
                                  model + " -p x -n 1 -c 32768 -t 1 >/dev/null 2>" + err)
                                     .c_str());
  std::ifstream f(err);
  const std::string message(std::istreambuf_iterator<char>(f), {});
  ASSERT_TRUE(WIFEXITED(status)) << message;
  EXPECT_EQ(WEXITSTATUS(status), 1) << message;
  EXPECT_NE(message.find("--ctx 32768 needs 4.00 GiB of KV cache for 1 sequence(s)"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("available (the room under ulimit -v (RLIMIT_AS))"), std::string::npos)
      << message;
}

// quantize's positional form and per-tensor report; then a file with a tensor type we cannot run
// (one Q4_0 tensor's type id patched to IQ4_NL, whose blocks are the same size): loading it
// names that tensor, and `info` still describes the file, marking it.
TEST(Cli, QuantizeReportsEachTensorAndInfoDescribesTypesWeCannotRun) {
  starling::testing::TempDir dir("quanttypes");
  const std::string q4 = dir.path() + "/q4.gguf";
  const RunStarlingResult q = RunStarling("quantize " + std::string(STARLING_MODELS_DIR) +
                                          "/stories260K.gguf " + q4 + " Q4_0 -t 2");
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_NE(q.err.find("] blk.0.attn_q.weight"), std::string::npos) << q.err;
  EXPECT_NE(q.err.find("-> Q4_0"), std::string::npos) << q.err;
  EXPECT_NE(q.err.find("wrote " + q4 + " (q4_0): 48 tensors"), std::string::npos) << q.err;
  EXPECT_NE(q.err.find("bits per weight"), std::string::npos) << q.err;

  std::string bytes = starling::ReadFile(q4);
  const std::string name = "blk.0.ffn_up.weight";
  const size_t at = bytes.find(name);
  ASSERT_NE(at, std::string::npos);
  // Tensor info: name, u32 dimension count, u64 dims, u32 type.
  uint32_t n_dims = 0;
  std::memcpy(&n_dims, bytes.data() + at + name.size(), 4);
  const size_t type_at = at + name.size() + 4 + 8 * static_cast<size_t>(n_dims);
  uint32_t type = 0;
  std::memcpy(&type, bytes.data() + type_at, 4);
  ASSERT_EQ(type, 2u);  // Q4_0
  type = 20;            // IQ4_NL: 32 elements in 18 bytes, as Q4_0
  std::memcpy(bytes.data() + type_at, &type, 4);
  const std::string patched = dir.path() + "/iq.gguf";
  std::ofstream(patched, std::ios::binary) << bytes;

  const RunStarlingResult gen = RunStarling("generate -m " + patched + " -p hi -n 2");
  EXPECT_EQ(gen.exit_code, 1);
  EXPECT_NE(gen.err.find("1 tensor has a type this build cannot run: 'blk.0.ffn_up.weight' "
                         "(IQ4_NL); supported: F32, F16, BF16, Q8_0, Q4_0"),
            std::string::npos)
      << gen.err;
  const RunStarlingResult info = RunStarling("info -m " + patched);
  EXPECT_EQ(info.exit_code, 1);
  EXPECT_NE(info.out.find("tensors: 48"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("blk.0.ffn_up.weight"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("IQ4_NL"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("<- this build cannot run this type"), std::string::npos) << info.out;
  EXPECT_NE(info.err.find("1 of 48 tensors have types this build cannot run"), std::string::npos)
      << info.err;
}

TEST(Cli, LoadingABigModelShowsProgressOnATerminalOnly) {
  // 512 wide, 4 blocks, a tied 32002-row embedding, float32: 115 MiB of tensors, above the
  // 100 MiB from which loading shows progress.
  starling::testing::TempDir dir("loadprogress");
  const std::string config = dir.path() + "/config.json";
  std::ofstream(config) << R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
    "vocab_size": 32002, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4,
    "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
    "bos_token_id": 1, "eos_token_id": 32000})";
  const std::string model = dir.path() + "/big.gguf";
  const RunStarlingResult made =
      RunStarling("make-model " + model + " --config " + config + " --type f32 --vocab " +
                  std::string(STARLING_TEST_DATA_DIR) + "/tiny-mistral/hf");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const std::string run = kStarling + " generate -m " + model + " -p x -n 1 -t 1";
  // On a terminal (script(1) gives the command a pseudo-terminal): a progress line to 100%.
  const std::string out = dir.path() + "/tty.txt";
  const int status =
      std::system(("timeout 120 script -qec '" + run + "' /dev/null > " + out).c_str());
  std::ifstream f(out);
  const std::string tty(std::istreambuf_iterator<char>(f), {});
  ASSERT_TRUE(WIFEXITED(status)) << tty;
  EXPECT_EQ(WEXITSTATUS(status), 0) << tty;
  EXPECT_NE(tty.find("loading " + model + ": 100% (0.11 of 0.11 GiB"), std::string::npos) << tty;
  // Into a file or a pipe: none.
  const RunStarlingResult piped = RunStarling("generate -m " + model + " -p x -n 1 -t 1");
  EXPECT_EQ(piped.exit_code, 0) << piped.err;
  EXPECT_EQ(piped.err.find("loading "), std::string::npos) << piped.err;
}

TEST(Cli, MakeModelRefusesWhatStarlingWouldRefuseToLoad) {
  // vocab_size 32000 with the 32002-token OpenChat tokenizer: the model used to be written and
  // then refused by every command that loads it.
  starling::testing::TempDir dir("makemodel");
  const std::string config = dir.path() + "/config.json";
  std::ofstream(config) << R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 32000,
    "hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 2, "max_position_embeddings": 64})";
  for (const std::string format : {"gguf", "hf"}) {
    const std::string out = dir.path() + "/m." + format;
    const RunStarlingResult r = RunStarling("make-model " + out + " --config " + config +
                                            " --format " + format + " --vocab " + kOpenChat);
    EXPECT_EQ(r.exit_code, 1) << format;
    EXPECT_NE(r.err.find("make-model: --vocab " + kOpenChat + " with " + config +
                         ": the tokenizer has 32002 tokens but the model's vocabulary is 32000"),
              std::string::npos)
        << r.err;
    EXPECT_FALSE(std::filesystem::exists(out)) << format;
  }
  // A bare tokenizer.model (32000 tokens) fits, and the directory gets it, so it loads.
  const std::string hf = dir.path() + "/bare";
  const RunStarlingResult made =
      RunStarling("make-model " + hf + " --config " + config + " --format hf --type f32 --vocab " +
                  kOpenChat + "/tokenizer.model");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const RunStarlingResult info = RunStarling("info -m " + hf);
  EXPECT_EQ(info.exit_code, 0) << info.err;
}

TEST(Cli, ModelThatIsAFifoIsRefusedNotWaitedOn) {
  starling::testing::TempDir dir("fifo");
  const std::string fifo = dir.path() + "/model.gguf";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // Opening a FIFO for reading used to block until a writer came: forever.
  const RunStarlingResult r = RunStarling("generate -p x -m " + fifo);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(fifo + ": not a regular file"), std::string::npos) << r.err;
}

TEST(Cli, ThreadsThatCannotStartAreAnErrorNotACrash) {
  // 1024 threads' stacks (8 MiB of address space each) cannot fit under a 1 GB limit: the
  // pool's constructor left started threads joinable (std::terminate) or hung.
  const std::string err = WriteTemp("threads_err", "");
  const int status = std::system(("ulimit -v 1000000; timeout 120 " + kStarling +
                                  " generate -p x -n 2 --seed 1 -t 1024 >/dev/null 2>" + err)
                                     .c_str());
  std::ifstream f(err);
  const std::string message(std::istreambuf_iterator<char>(f), {});
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << message;
  EXPECT_NE(message.find("cannot start 1024 compute threads (-t)"), std::string::npos) << message;
}

TEST(Cli, LlamaCppFlagsAreAcceptedWhereTheyMakeSense) {
  const std::string model = std::string(STARLING_TEST_DATA_DIR) + "/tiny-mistral/model-f32.gguf";
  // -s, --ctx-size, -sys and --chat-template are --seed, --ctx, --system and --template.
  const RunStarlingResult ours = RunStarling("generate -m " + model +
                                             " -p Hi -n 6 --seed 3 --ctx 128 --template openchat "
                                             "--system 'Be brief.'");
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  const RunStarlingResult llama = RunStarling("generate -m " + model +
                                              " -p Hi -n 6 -s 3 --ctx-size 128 --chat-template "
                                              "openchat -sys 'Be brief.'");
  ASSERT_EQ(llama.exit_code, 0) << llama.err;
  EXPECT_EQ(llama.out, ours.out);
  // -n -1: until EOS or a full context. stories260K's greedy story runs past 64 tokens, so it
  // fills the context of 64 (the last of 64 generated tokens needs no place in it) and is the
  // 200-token story's beginning.
  const RunStarlingResult full = RunStarling("generate -p '' -n -1 -c 64 --temp 0 -v");
  ASSERT_EQ(full.exit_code, 0) << full.err;
  std::ifstream f(std::string(STARLING_TEST_DATA_DIR) + "/expected_greedy_n200.txt");
  const std::string story(std::istreambuf_iterator<char>(f), {});
  EXPECT_FALSE(full.out.empty());
  EXPECT_EQ(story.substr(0, full.out.size()), full.out);
  EXPECT_NE(full.err.find(" 64 generated"), std::string::npos) << full.err;
  EXPECT_NE(full.err.find("finish: length"), std::string::npos) << full.err;
  // In chat the reply runs to the context's end and says so.
  const RunStarlingResult chat =
      RunStarling("chat -m " + model + " --template openchat --temp 0 -n -1 -c 48", "Hello\n");
  EXPECT_EQ(chat.exit_code, 0) << chat.err;
  EXPECT_NE(chat.err.find("the context (48 tokens, -c) is full]"), std::string::npos) << chat.err;
  // serve's -np is --parallel: its range check answers (no server starts).
  const RunStarlingResult np = RunStarling("serve -np 0");
  EXPECT_NE(np.exit_code, 0) << np.err;
  EXPECT_NE(np.err.find("--parallel: Value 0 not in range 1 to 256"), std::string::npos) << np.err;
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"generate -np 4 -p x", "-np (llama.cpp's --parallel): starling generate has no --parallel"},
      {"generate -p x -n -2", "--n-predict: must be a number of tokens, or -1"},
      {"serve -sys hello", "-sys (llama.cpp's --system): starling serve has no --system"},
  };
  for (const auto& [args, message] : refused) {
    const RunStarlingResult r = RunStarling(args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_NE(r.err.find(message), std::string::npos) << args << ": " << r.err;
  }
}

TEST(Cli, LlamaCppOnlyFlagsAreAnsweredWithWhatToDo) {
  // Each named, with what to do, in every subcommand: never CLI11's reading of -ngl as -n gl.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"-ngl 99", "-ngl: starling.cpp runs on the CPU; there are no GPU layers to offload"},
      {"--n-gpu-layers 99", "--n-gpu-layers: starling.cpp runs on the CPU"},
      {"-fa", "-fa: starling.cpp has one attention kernel"},
      {"--flash-attn=on", "--flash-attn: starling.cpp has one attention kernel"},
      {"-cnv", "-cnv: the conversation is its own subcommand: starling chat -m MODEL"},
      {"-ctk f16", "-ctk: use --kv-type f16 or --kv-type f32"},
      {"-ctv q8_0", "-ctv: use --kv-type f16 or --kv-type f32"},
      {"-tb 4", "-tb: one thread pool serves the prompt and generation: use -t/--threads"},
      {"-hf org/name", "-hf: download with starling pull ORG/NAME"},
      {"--no-mmap", "--no-mmap: weights are always memory-mapped"},
  };
  for (const char* sub : {"generate -p x", "chat", "serve", "perplexity -f /dev/null"}) {
    for (const auto& [flag, message] : cases) {
      const std::string args = std::string(sub) + " " + flag;
      const RunStarlingResult r = RunStarling(args);
      EXPECT_EQ(r.exit_code, 1) << args;
      EXPECT_EQ(r.err.rfind("starling: error: ", 0), 0u) << r.err;
      EXPECT_NE(r.err.find(message), std::string::npos) << args << ": " << r.err;
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << ": " << r.err;
    }
  }
  // A single dash before several letters that starts with a short option taking a value: the
  // prompt "s" or the model "g" was read from -ps or -mg. Now refused, naming the flag.
  RunStarlingResult r = RunStarling("generate -ps 0.5 -p x");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("-ps: not an option of starling generate (long options take two dashes"),
            std::string::npos)
      << r.err;
  // After --, an argument is text, whatever it looks like.
  r = RunStarling("tokenize --tokenizer " + kOpenChat + " --ids-only -- -ngl");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, JoinIds(starling::LoadTokenizer(kOpenChat).Encode("-ngl")) + "\n");
}

TEST(Cli, IdsAndMessagesMeanTheSameInEverySubcommand) {
  // --ids: token ids as given; tokenize shows their pieces, score scores them.
  RunStarlingResult r = RunStarling("tokenize --tokenizer " + kOpenChat + " --ids '1 22557 32000'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "1\t<s>\n22557\t\xE2\x96\x81Hello\n32000\t<|end_of_turn|>\n");
  r = RunStarling("tokenize --tokenizer " + kOpenChat + " --ids 1 22557 --json");
  EXPECT_EQ(r.out, "{\"ids\":[1,22557],\"pieces\":[\"<s>\",\"\xE2\x96\x81Hello\"]}\n");
  r = RunStarling("tokenize --tokenizer " + kOpenChat + " --ids 'Hello world'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("'Hello' is not a token id (--ids takes token ids"), std::string::npos)
      << r.err;
  r = RunStarling("tokenize --tokenizer " + kOpenChat + " --ids 40000");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--ids: 40000 is not a token id of this tokenizer (32002 tokens)"),
            std::string::npos)
      << r.err;
  // --messages: the JSON written out, or a file ('-': stdin), in tokenize and in score alike.
  const std::string json =
      R"([{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi!"}])";
  const std::string file = WriteTemp("same_messages.json", json);
  const std::string tokenize =
      "tokenize --tokenizer " + kOpenChat + " --template openchat --ids-only ";
  const RunStarlingResult inline_t = RunStarling(tokenize + "--messages '" + json + "'");
  ASSERT_EQ(inline_t.exit_code, 0) << inline_t.err;
  EXPECT_EQ(RunStarling(tokenize + "--messages " + file).out, inline_t.out);
  EXPECT_EQ(RunStarling(tokenize + "--messages -", json).out, inline_t.out);
  const std::string score = "score -m " + kRewardModel + " --json ";
  const RunStarlingResult inline_s = RunStarling(score + "--messages '" + json + "'");
  ASSERT_EQ(inline_s.exit_code, 0) << inline_s.err;
  EXPECT_EQ(RunStarling(score + "--messages " + file).out, inline_s.out);
  EXPECT_EQ(RunStarling(score + "--messages -", json).out, inline_s.out);
}

TEST(Cli, MakeModelFindsItsVocabularyFromAnyDirectoryAndShowsProgress) {
  starling::testing::TempDir dir("anywhere");
  // Run from a directory with no models/ in it: the executable's place finds the tokenizer.
  const std::string err = dir.path() + "/err";
  int status = std::system(("cd " + dir.path() + " && " + kStarling +
                            " make-model tiny.gguf --preset tiny --type q8_0 2>" + err)
                               .c_str());
  auto slurp = [](const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0) << slurp(err);
  // Progress on a pipe: a line per 10%, each with the time so far and what is left.
  const std::string progress = slurp(err);
  EXPECT_NE(progress.find("make-model:  50%"), std::string::npos) << progress;
  EXPECT_NE(progress.find("ETA "), std::string::npos) << progress;
  EXPECT_LE(std::count(progress.begin(), progress.end(), '\n'), 11) << progress;
  const RunStarlingResult info = RunStarling("info -m " + dir.path() + "/tiny.gguf");
  EXPECT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("tokenizer: 32002 tokens"), std::string::npos) << info.out;
  // quantize shows the same progress.
  const RunStarlingResult q = RunStarling("quantize " + std::string(STARLING_TEST_DATA_DIR) +
                                          "/tiny-mistral/hf " + dir.path() + "/q.gguf --type q8_0");
  EXPECT_EQ(q.exit_code, 0) << q.err;
  EXPECT_NE(q.err.find("quantize to q8_0: 100%"), std::string::npos) << q.err;
  // A copy of the executable far from models/: an error that says what to pass.
  const std::string copy = dir.path() + "/starling";
  std::filesystem::copy_file(kStarling, copy);
  status = std::system(("cd " + dir.path() + " && ./starling make-model x.gguf 2>" + err).c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(slurp(err).find("make-model: the default vocabulary (models/openchat-3.5-tokenizer) "
                            "is not in "),
            std::string::npos)
      << slurp(err);
  EXPECT_NE(slurp(err).find("; pass --vocab DIR"), std::string::npos) << slurp(err);
}

TEST(Cli, BenchJsonIsValidForAnyModelPath) {
  starling::testing::TempDir dir("benchjson");
  // Quotes, a backslash and a tab in the path: once printed into the JSON as they were.
  const std::string model = dir.path() + "/we\"ird\\pa\tth.gguf";
  std::filesystem::copy_file(std::string(STARLING_MODELS_DIR) + "/stories260K.gguf", model);
  const RunStarlingResult r = RunStarling("bench -m '" + model + "' -p 8 -n 0 -r 1 -t 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["model"], model);
  EXPECT_EQ(j["test"], "pp8");
  EXPECT_GT(j["tokens_per_s_median"].get<double>(), 0);
}

TEST(Cli, PerplexityShowsSecondsPerWindowAndAnEta) {
  std::string text;
  for (int i = 0; i < 40; ++i) text += "Once upon a time there was a little cat who liked milk. ";
  const std::string path = WriteTemp("ppl_progress.txt", text);
  const RunStarlingResult r = RunStarling("perplexity -f " + path + " -c 16");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("perplexity: "), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("s per window"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("ETA "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("perplexity: 100%"), std::string::npos) << r.err;
}

}  // namespace

TEST(Cli, AddTokensAppendsASpecialTokenWithMeanRowsAndSetsEosAndTemplate) {
  const std::string kStories = std::string(STARLING_MODELS_DIR) + "/stories260K.gguf";
  starling::testing::TempDir dir("addtokens");
  const std::string out = dir.path() + "/chat.gguf";
  const RunStarlingResult r =
      RunStarling("add-tokens " + kStories + " " + out +
                  " --token '<|end_of_turn|>' --eos '<|end_of_turn|>' --chat-template openchat");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("512 -> 513 tokens"), std::string::npos) << r.err;
  const RunStarlingResult info = RunStarling("info -m " + out);
  EXPECT_NE(info.out.find("vocab 513,"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("bos 1, eos 512"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("chat template: openchat"), std::string::npos) << info.out;
  // The template renders with the new token: a turn ends with id 512.
  const RunStarlingResult ids = RunStarling(
      "tokenize --tokenizer " + out +
      " --ids-only --template openchat --messages '[{\"role\": \"user\", \"content\": \"Hi\"}]'");
  ASSERT_EQ(ids.exit_code, 0) << ids.err;
  EXPECT_NE(ids.out.find(" 512\n"), std::string::npos) << ids.out;
  // The old rows are unchanged, and the new output row (the mean of the old ones) does not win
  // the argmax: the greedy story is the original model's.
  const std::string story = " -p 'Once upon a time' -n 40 --temp 0";
  const RunStarlingResult before = RunStarling("generate -m " + kStories + story);
  const RunStarlingResult after = RunStarling("generate -m " + out + story);
  ASSERT_EQ(after.exit_code, 0) << after.err;
  EXPECT_EQ(after.out, before.out);
  // Errors name what is wrong; nothing is written.
  const std::string bad = dir.path() + "/bad.gguf";
  const RunStarlingResult twice =
      RunStarling("add-tokens " + kStories + " " + bad + " --token '</s>'");
  EXPECT_EQ(twice.exit_code, 1);
  EXPECT_NE(twice.err.find("'</s>' is already token 2"), std::string::npos) << twice.err;
  const RunStarlingResult eos =
      RunStarling("add-tokens " + kStories + " " + bad + " --token '<x>' --eos '<y>'");
  EXPECT_EQ(eos.exit_code, 1);
  EXPECT_NE(eos.err.find("the EOS token '<y>' is not in the vocabulary"), std::string::npos)
      << eos.err;
  const RunStarlingResult tmpl =
      RunStarling("add-tokens " + kStories + " " + bad + " --token '<x>' --chat-template llama-2");
  EXPECT_EQ(tmpl.exit_code, 1);
  EXPECT_NE(tmpl.err.find("has no Hugging Face chat_template"), std::string::npos) << tmpl.err;
  EXPECT_FALSE(std::filesystem::exists(bad));
}

TEST(Cli, ChatWithoutAModelTalksToTheEmbeddedChatModel) {
  // tiny-chat (models/tiny-chat.gguf, made by scripts/pipeline.sh) carries OpenChat's template;
  // stories260K, which has none, would stop with "ships no chat template". One reply a line.
  const RunStarlingResult r =
      RunStarling("chat -n 16 --temp 0", "What is 2 + 3?\nReverse the list: cat, sun, box.\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 2) << r.out;
  EXPECT_GT(r.out.size(), 4u) << r.out;
  // generate keeps stories260K.
  const RunStarlingResult info = RunStarling("info");
  EXPECT_NE(info.out.find("vocab 512,"), std::string::npos) << info.out;
}
