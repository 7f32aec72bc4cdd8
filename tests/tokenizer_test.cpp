// The tokenizer on its own: the model card's sequences, Hugging Face's added-token rules,
// the three sources of a vocabulary, streaming, and bad input. Exactness against the
// reference implementation is in sentencepiece_oracle_test.cpp.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cstdio>

#include <string>
#include <vector>

#include "core/error.h"
#include "core/file.h"
#include "formats/gguf.h"
#include "text_corpus.h"
#include "tokenizer/gguf_export.h"
#include "tokenizer/load.h"

namespace starling {
namespace {

const std::string kOpenChatDir = std::string(STARLING_MODELS_DIR) + "/openchat-3.5-tokenizer";
const std::string kMistralModel = kOpenChatDir + "/tokenizer.model";
const std::string kLlama2Model =
    std::string(STARLING_TEST_DATA_DIR) + "/tokenizers/llama-2/tokenizer.model";

const Tokenizer& OpenChat() {
  static const Tokenizer tokenizer = LoadTokenizer(kOpenChatDir);
  return tokenizer;
}

// The model card's three prompts and their published ids.
struct CardCase {
  std::string text;
  std::vector<int32_t> ids;
};
std::vector<CardCase> CardCases() {
  return {
      {"GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant:",
       {1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 22557, 32000, 420, 6316, 28781, 3198, 3123,
        21631, 28747}},
      {"GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant: Hi<|end_of_turn|>GPT4 "
       "Correct User: How are you today?<|end_of_turn|>GPT4 Correct Assistant:",
       {1,    420,  6316,  28781, 3198,  3123,  1247, 28747, 22557, 32000, 420,  6316,  28781,
        3198, 3123, 21631, 28747, 15359, 32000, 420,  6316,  28781, 3198,  3123, 1247,  28747,
        1602, 460,  368,   3154,  28804, 32000, 420,  6316,  28781, 3198,  3123, 21631, 28747}},
      {"Code User: Implement quicksort using C++<|end_of_turn|>Code Assistant:",
       {1, 7596, 1247, 28747, 26256, 2936, 7653, 1413, 334, 1680, 32000, 7596, 21631, 28747}},
  };
}

TEST(Tokenizer, ModelCardSequencesFromHuggingFaceDirectory) {
  for (const CardCase& c : CardCases()) {
    EXPECT_EQ(OpenChat().Encode(c.text), c.ids) << c.text;
    // Decoding shows the special tokens and restores the text exactly.
    EXPECT_EQ(OpenChat().Decode(c.ids), "<s>" + c.text);
  }
}

TEST(Tokenizer, ModelCardSequencesFromBareModelPlusAddedTokens) {
  SentencePieceVocab vocab = LoadSentencePieceModel(kMistralModel);
  std::vector<AddedToken> added = {
      {"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"<|end_of_turn|>", 32000}, {"<|pad_0|>", 32001}};
  const Tokenizer tokenizer(std::move(vocab), added, kMistralModel);
  EXPECT_EQ(tokenizer.vocab_size(), 32002);
  for (const CardCase& c : CardCases()) EXPECT_EQ(tokenizer.Encode(c.text), c.ids);
}

TEST(Tokenizer, HuggingFaceDirectoryFacts) {
  const Tokenizer& t = OpenChat();
  EXPECT_EQ(t.vocab_size(), 32002);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 32000);  // tokenizer_config.json: eos_token is <|end_of_turn|>
  EXPECT_EQ(t.FindAddedToken("<|pad_0|>"), 32001);
  EXPECT_EQ(t.Piece(32000), "<|end_of_turn|>");
  EXPECT_TRUE(t.IsSpecial(32000));
  EXPECT_TRUE(t.IsSpecial(1));
  EXPECT_FALSE(t.IsSpecial(420));
}

TEST(Tokenizer, EachChunkAfterASpecialTokenGetsItsOwnDummyPrefix) {
  // "GPT4" right after <|end_of_turn|> is "▁G" (420), not "G" (28777).
  const auto ids = OpenChat().Encode("<|end_of_turn|>GPT4", {.add_bos = false});
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[0], 32000);
  EXPECT_EQ(ids[1], 420);
  EXPECT_EQ(OpenChat().Piece(ids[1]), "\xE2\x96\x81G");
}

TEST(Tokenizer, PlainEncodingNeverProducesSpecialTokens) {
  const std::string text = "<s>Hi<|end_of_turn|></s><|pad_0|>";
  const auto special = OpenChat().Encode(text, {.add_bos = false});
  EXPECT_EQ(special, (std::vector<int32_t>{1, 15359, 32000, 2, 32001}));
  const auto plain = OpenChat().Encode(text, {.add_bos = false, .parse_special = false});
  for (const int32_t id : plain) EXPECT_FALSE(OpenChat().IsSpecial(id)) << id;
  EXPECT_EQ(OpenChat().Decode(plain), text);
}

TEST(Tokenizer, LongestAddedTokenWins) {
  SentencePieceVocab vocab = LoadSentencePieceModel(kMistralModel);
  const Tokenizer t(std::move(vocab), {{"<s>", 1}, {"<|x|>", 32000}, {"<|x|>y", 32001}}, "test");
  EXPECT_EQ(t.Encode("<|x|>y<|x|>", {.add_bos = false}), (std::vector<int32_t>{32001, 32000}));
}

TEST(Tokenizer, AddedTokenStripsWhitespaceLikeHuggingFace) {
  SentencePieceVocab vocab = LoadSentencePieceModel(kMistralModel);
  AddedToken token{"<mask>", 32000, true, /*lstrip=*/true, /*rstrip=*/true};
  const Tokenizer t(std::move(vocab), {token}, "test");
  // Python's str.strip() whitespace, including tabs, newlines and U+3000.
  EXPECT_EQ(t.Encode("a \t<mask> \n\xE3\x80\x80"
                     "b",
                     {.add_bos = false}),
            t.Encode("a<mask>b", {.add_bos = false}));
}

TEST(Tokenizer, DecodeSkippingSpecialTokensMatchesSentencePiece) {
  // Skipped tokens are as if absent: "▁world" keeps its space after "Hello", as in
  // SentencePiece (and Hugging Face's decode with skip_special_tokens=True).
  const auto ids = OpenChat().Encode("Hello<|end_of_turn|>world");
  EXPECT_EQ(OpenChat().Decode(ids, /*skip_special=*/true), "Hello world");
  EXPECT_EQ(OpenChat().Decode(ids), "<s>Hello<|end_of_turn|>world");
}

TEST(Tokenizer, StreamingNeverSplitsACharacter) {
  // U+1F9A9 is not a piece of the Mistral vocabulary: four byte-fallback tokens.
  const auto ids = OpenChat().Encode("\xF0\x9F\xA6\xA9!", {.add_bos = false});
  ASSERT_GE(ids.size(), 5u);
  StreamDecoder stream(OpenChat(), false);
  std::vector<std::string> parts;
  for (const int32_t id : ids) parts.push_back(stream.Push(id));
  parts.push_back(stream.Finish());
  // Nothing until the fourth byte arrives; then the whole character at once.
  std::string joined;
  for (const std::string& p : parts) {
    EXPECT_TRUE(p.empty() || p == "\xF0\x9F\xA6\xA9" || p == "!") << p;
    joined += p;
  }
  EXPECT_EQ(joined, OpenChat().Decode(ids));
}

TEST(Tokenizer, StreamingAnIncompleteCharacterEndsInReplacementCharacters) {
  const int32_t f0 = OpenChat().Encode("\xF0\x9F\xA6\xA9", {.add_bos = false})[1];
  ASSERT_TRUE(OpenChat().IsByte(f0));
  StreamDecoder stream(OpenChat(), false);
  EXPECT_EQ(stream.Push(f0), "");
  EXPECT_EQ(stream.Finish(), "\xEF\xBF\xBD");
}

TEST(Tokenizer, StreamingEqualsFullDecodeOnRandomText) {
  testing::CorpusGenerator generator(99);
  for (int i = 0; i < 300; ++i) {
    const std::string text = generator.Next(30, false);
    const auto ids = OpenChat().Encode(text);
    for (const bool skip : {false, true}) {
      StreamDecoder stream(OpenChat(), skip);
      std::string streamed;
      for (const int32_t id : ids) streamed += stream.Push(id);
      streamed += stream.Finish();
      ASSERT_EQ(streamed, OpenChat().Decode(ids, skip));
    }
  }
}

// Encode(text) == Encode(text[0, cut)) ++ Encode(text[cut, end), continuation), for `t`.
void ExpectCutIsExact(const Tokenizer& t, const std::string& text, size_t cut, bool special) {
  const EncodeOptions whole{.add_bos = true, .parse_special = special};
  std::vector<int32_t> pieces = t.Encode(std::string_view(text).substr(0, cut), whole);
  const std::vector<int32_t> rest =
      t.Encode(std::string_view(text).substr(cut),
               {.add_bos = false, .parse_special = special, .continuation = true});
  pieces.insert(pieces.end(), rest.begin(), rest.end());
  ASSERT_EQ(pieces, t.Encode(text, whole)) << "cut at " << cut << " of: " << text;
}

TEST(Tokenizer, StreamCutsEncodeExactlyLikeTheWhole) {
  // Every cut StreamCut offers on a prefix of a text is exact for the whole text, whatever
  // follows the prefix: with special tokens (rstrip/lstrip ones too), double spaces, tabs,
  // newlines, malformed UTF-8.
  SentencePieceVocab vocab = LoadSentencePieceModel(kMistralModel);
  const Tokenizer strip(std::move(vocab),
                        {{"<|end_of_turn|>", 32000},
                         {"<mask>", 32001, true, /*lstrip=*/true, /*rstrip=*/true},
                         {"a b", 32002}},
                        "test");
  testing::CorpusGenerator generator(2024);
  size_t cuts = 0;
  for (int i = 0; i < 300; ++i) {
    std::string text = generator.Next(40, /*allow_malformed=*/i % 3 == 0);
    if (i % 4 == 1) text += " <|end_of_turn|> x <mask> y  a b z\ta  b";
    if (i % 4 == 2) text += " q\t <mask> w<mask>\t r\xE3\x80\x80 <mask> s\n x";
    for (const Tokenizer* t : {&OpenChat(), &strip}) {
      for (const bool special : {true, false}) {
        for (size_t n = 1; n <= text.size(); n += 1 + n / 8) {
          const size_t cut = t->StreamCut(std::string_view(text).substr(0, n), special);
          if (cut == 0) continue;
          ASSERT_LT(cut, n);
          ++cuts;
          ExpectCutIsExact(*t, text, cut, special);
        }
      }
    }
  }
  EXPECT_GT(cuts, 1000u);  // the property was exercised, not vacuous
  // No cut inside or right after an added token, nor before the text goes on as far as the
  // longest one reaches (here 6 bytes, "<mask>").
  const Tokenizer short_tokens(LoadSentencePieceModel(kMistralModel),
                               {{"<mask>", 32000, true, true, true}, {"a b", 32001}}, "test");
  EXPECT_EQ(short_tokens.StreamCut("x a b c d e f g h", true), 11u);
  EXPECT_EQ(short_tokens.StreamCut("x a b c d e f g h", true, 12), 0u);  // none from 12 on
  EXPECT_EQ(short_tokens.StreamCut("xx a b", true), 0u);
  EXPECT_EQ(short_tokens.StreamCut("xx a b and more", true), 2u);   // not in or right after "a b"
  EXPECT_EQ(short_tokens.StreamCut("xx a b and more", false), 6u);  // plain: no added tokens
  EXPECT_EQ(short_tokens.StreamCut("<mask> andmore", true), 0u);
  EXPECT_EQ(short_tokens.StreamCut("x  y  zzzzzz", true), 4u);            // after a non-space only
  EXPECT_EQ(short_tokens.StreamCut("x y\xE2\x96\x81 zzzzzz", true), 1u);  // not after a U+2581
  // Not after other whitespace either: "q\t <mask>" strips "\t " (lstrip) as one run.
  EXPECT_EQ(short_tokens.StreamCut("q\t <mask> zzzzzz", true), 0u);
  EXPECT_EQ(short_tokens.StreamCut("q\xE3\x80\x80 zzzzzz", true), 0u);  // U+3000
}

TEST(Tokenizer, BadIdsAreErrors) {
  EXPECT_THROW(OpenChat().Decode(std::vector<int32_t>{5, 32002}), Error);
  EXPECT_THROW(OpenChat().Decode(std::vector<int32_t>{-1}), Error);
  EXPECT_THROW(OpenChat().Piece(1 << 30), Error);
}

// --- The same vocabulary from a GGUF file ---

// The vocabulary exported the way llama.cpp's converter stores it in GGUF.
std::string WriteVocabularyAsGguf(const std::string& path) {
  GgufWriter writer;
  writer.AddString("general.architecture", "llama");
  WriteTokenizerToGguf(kOpenChatDir, &writer);
  writer.WriteTo(path);
  return path;
}

TEST(Tokenizer, GgufVocabularyEncodesExactlyLikeTheSentencePieceModel) {
  const std::string path = WriteVocabularyAsGguf(::testing::TempDir() + "/vocab-" +
                                                 std::to_string(::getpid()) + ".gguf");
  const Tokenizer gguf = LoadTokenizer(path);
  EXPECT_EQ(LoadChatTemplateJinja(path), LoadChatTemplateJinja(kOpenChatDir));
  std::remove(path.c_str());
  EXPECT_EQ(gguf.vocab_size(), 32002);
  EXPECT_EQ(gguf.eos_id(), 32000);
  for (const CardCase& c : CardCases()) EXPECT_EQ(gguf.Encode(c.text), c.ids);
  testing::CorpusGenerator generator(5);
  for (int i = 0; i < 500; ++i) {
    const std::string text = generator.Next(30, i % 7 == 0);
    for (const bool special : {true, false}) {
      const EncodeOptions options{.add_bos = true, .parse_special = special};
      ASSERT_EQ(gguf.Encode(text, options), OpenChat().Encode(text, options));
    }
    const auto ids = OpenChat().Encode(text);
    ASSERT_EQ(gguf.Decode(ids), OpenChat().Decode(ids));
  }
}

TEST(Tokenizer, LlamaCppConvertedGgufVocabularyMatchesTheHuggingFaceDirectory) {
  // tiny-mistral-vocab.gguf holds the tokenizer.* metadata that llama.cpp's own converter
  // wrote for an OpenChat-layout checkpoint: an independent second source of this vocabulary
  // (it marks <unk> as CONTROL and has no unknown_token_id, as real conversions do).
  const Tokenizer gguf =
      LoadTokenizer(std::string(STARLING_TEST_DATA_DIR) + "/tiny-mistral-vocab.gguf");
  EXPECT_EQ(gguf.vocab_size(), 32002);
  EXPECT_EQ(gguf.eos_id(), 32000);
  EXPECT_EQ(gguf.unk_id(), 0);
  for (const CardCase& c : CardCases()) EXPECT_EQ(gguf.Encode(c.text), c.ids);
  testing::CorpusGenerator generator(6);
  for (int i = 0; i < 500; ++i) {
    const std::string text = generator.Next(30, i % 7 == 0);
    for (const bool special : {true, false}) {
      const EncodeOptions options{.add_bos = true, .parse_special = special};
      ASSERT_EQ(gguf.Encode(text, options), OpenChat().Encode(text, options)) << text;
    }
  }
}

TEST(Tokenizer, AddBosTokenComesFromTheModelFiles) {
  EXPECT_TRUE(OpenChat().add_bos_token());  // tokenizer_config.json: "add_bos_token": true
  GgufWriter writer;
  writer.AddString("general.architecture", "llama");
  WriteTokenizerToGguf(kOpenChatDir, &writer);
  const std::string bytes = writer.Finish();
  const GgufFile parsed = GgufFile::Parse(bytes, "vocab.gguf");
  EXPECT_TRUE(parsed.GetBool("tokenizer.ggml.add_bos_token"));
  GgufWriter no_bos;
  for (const GgufKeyValue& kv : parsed.metadata()) {
    if (kv.key != "tokenizer.ggml.add_bos_token") no_bos.AddValue(kv.key, kv.value);
  }
  no_bos.AddBool("tokenizer.ggml.add_bos_token", false);
  const std::string path = ::testing::TempDir() + "/no-bos-" + std::to_string(::getpid()) + ".gguf";
  no_bos.WriteTo(path);
  const Tokenizer t = LoadTokenizer(path);
  std::remove(path.c_str());
  EXPECT_FALSE(t.add_bos_token());
  HuggingFaceTokenizerFiles files;
  files.tokenizer_config_json = R"({"add_bos_token": false})";
  EXPECT_FALSE(ParseHuggingFaceTokenizerFiles(files, "dir").add_bos_token);
}

TEST(Tokenizer, Stories260KGgufVocabulary) {
  const Tokenizer t = LoadTokenizer(std::string(STARLING_MODELS_DIR) + "/stories260K.gguf");
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  const auto ids = t.Encode(text);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(t.Decode(ids, true), text);
}

// --- Bad input ---

std::string ErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TokenizerErrors, MissingFile) {
  EXPECT_EQ(ErrorOf([] { LoadTokenizer("/nonexistent/tokenizer.model"); }),
            "/nonexistent/tokenizer.model: cannot open: No such file or directory");
}

TEST(TokenizerErrors, TruncatedModelIsRefusedAtEveryLength) {
  const std::string bytes = ReadFile(kMistralModel);
  // Every prefix up to 4 KB (inside the first pieces) and 400 spread over the whole file.
  std::vector<size_t> lengths;
  for (size_t n = 0; n < 4096; ++n) lengths.push_back(n);
  for (size_t k = 1; k < 400; ++k) lengths.push_back(bytes.size() * k / 400);
  for (const size_t n : lengths) {
    const std::string message =
        ErrorOf([&] { ParseSentencePieceModel(std::string_view(bytes).substr(0, n), "t.model"); });
    ASSERT_EQ(message.rfind("t.model: ", 0), 0u) << "prefix " << n << ": " << message;
  }
}

TEST(TokenizerErrors, CorruptModelsGetClearMessages) {
  EXPECT_EQ(ErrorOf([] { ParseSentencePieceModel("", "m"); }), "m: the vocabulary has no pieces");
  EXPECT_NE(ErrorOf([] {
              ParseSentencePieceModel("\x0A\xFF\xFF\xFF\x0F", "m");
            }).find("runs past the end"),
            std::string::npos);
  EXPECT_NE(ErrorOf([] { ParseSentencePieceModel("\x0F", "m"); }).find("wire type"),
            std::string::npos);
  // A piece with a type outside the enum.
  EXPECT_NE(ErrorOf([] {
              ParseSentencePieceModel(std::string("\x0A\x05\x0A\x01"
                                                  "a\x18\x09",
                                                  7),
                                      "m");
            }).find("unknown type 9"),
            std::string::npos);
  // A Unigram model (trainer_spec.model_type = 1) is refused, not mis-encoded.
  const std::string unigram("\x0A\x07\x0A\x03<u>\x18\x02\x12\x02\x18\x01\x1A\x00", 15);
  EXPECT_NE(ErrorOf([&] { ParseSentencePieceModel(unigram, "m"); }).find("only BPE"),
            std::string::npos);
  // Without its normalizer_spec (a file cut between messages) the model is refused.
  EXPECT_EQ(ErrorOf([&] { ParseSentencePieceModel(unigram.substr(0, 13), "m"); }),
            "m: no normalizer_spec (truncated or not a tokenizer.model?)");
}

TEST(TokenizerErrors, MalformedAddedTokenFiles) {
  // Designated initializers leave the other files empty (absent).
  auto parse = [](HuggingFaceTokenizerFiles files) {
    return ErrorOf([&] { ParseHuggingFaceTokenizerFiles(files, "dir"); });
  };
  EXPECT_NE(parse({.added_tokens_json = "{"}).find("dir/added_tokens.json: not valid JSON"),
            std::string::npos);
  EXPECT_EQ(parse({.added_tokens_json = R"({"<x>": "7"})"}),
            "dir/added_tokens.json: \"<x>\": token id must be an integer");
  EXPECT_EQ(parse({.added_tokens_json = R"({"<x>": -3})"}),
            "dir/added_tokens.json: \"<x>\": token id -3 is out of range");
  EXPECT_EQ(
      parse({.tokenizer_config_json = R"({"added_tokens_decoder": {"abc": {"content": "x"}}})"}),
      "dir/tokenizer_config.json: added_tokens_decoder[\"abc\"]: key must be a token id");
  EXPECT_EQ(parse({.tokenizer_config_json = R"({"added_tokens_decoder": {"5": {"content": 5}}})"}),
            "dir/tokenizer_config.json: added_tokens_decoder[\"5\"]: expected a string or an "
            "object with a string \"content\"");
  EXPECT_NE(
      parse({.added_tokens_json = R"({"<y>": 32000})",
             .tokenizer_config_json = R"({"added_tokens_decoder": {"32000": {"content": "<x>"}}})"})
          .find("id 32000 is '<y>' here but '<x>'"),
      std::string::npos);
  EXPECT_EQ(parse({.tokenizer_json = R"({"added_tokens": [{"content": "<x>"}]})"}),
            "dir/tokenizer.json: added_tokens[0]: needs \"id\"");
  // Found by fuzz_hf_tokenizer_files: a number that overflows double made nlohmann throw
  // out_of_range, which escaped as a non-starling exception.
  EXPECT_NE(parse({.tokenizer_config_json = "{\n  \"<|end_of_turn|>\": 32e2008\n}"})
                .find("dir/tokenizer_config.json: not valid JSON"),
            std::string::npos);
  EXPECT_NE(parse({.added_tokens_json = std::string(100, '[')}).find("nests deeper than"),
            std::string::npos);
  EXPECT_EQ(parse({.tokenizer_config_json = R"({"legacy": "yes"})"}),
            "dir/tokenizer_config.json: \"legacy\" must be true or false");
}

TEST(TokenizerErrors, AddedTokenIdsMustBeContiguous) {
  SentencePieceVocab vocab = LoadSentencePieceModel(kMistralModel);
  EXPECT_EQ(ErrorOf([&] {
              Tokenizer(std::move(vocab), {{"<x>", 32005}}, "t");
            }),
            "t: no token has id 32000 (ids must be contiguous)");
}

TEST(TokenizerErrors, AddedTokenMayNotRenameAPiece) {
  SentencePieceVocab vocab = LoadSentencePieceModel(kMistralModel);
  EXPECT_NE(ErrorOf([&] {
              Tokenizer(std::move(vocab), {{"<x>", 5}}, "t");
            }).find("already gives to '<0x02>'"),
            std::string::npos);
}

}  // namespace
}  // namespace starling
