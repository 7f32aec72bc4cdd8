// Our tokenizer against Google's SentencePiece (the reference implementation, linked from
// Debian's libsentencepiece) on the Mistral and Llama-2 tokenizer.model files: identical
// ids on > 5,000 varied strings each, identical decoding, and decode(encode(s)) == s.
#include <sentencepiece_processor.h>

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/file.h"
#include "core/utf8.h"
#include "text_corpus.h"
#include "tokenizer/load.h"

namespace starling {
namespace {

std::string ModelPath(const std::string& name) {
  return std::string(STARLING_TEST_DATA_DIR) + "/tokenizers/" + name + "/tokenizer.model";
}

// Escapes bytes for failure messages; long texts are cut to keep the log readable.
std::string Printable(const std::string& s) {
  std::string out;
  for (const unsigned char c : s.substr(0, 300)) {
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    }
  }
  if (s.size() > 300) out += "...(" + std::to_string(s.size()) + " bytes)";
  return out;
}

std::string Ids(const std::vector<int>& ids) {
  std::string out;
  for (const int id : ids) out += std::to_string(id) + " ";
  return out;
}

class OracleTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string path = ModelPath(GetParam());
    const auto status = reference_.Load(path);
    ASSERT_TRUE(status.ok()) << status.ToString();
    tokenizer_ = std::make_unique<Tokenizer>(LoadSentencePieceTokenizer(path));
  }

  // Compares one string; returns false (after reporting) on the first difference.
  bool Check(const std::string& text) {
    std::vector<int> expected;
    EXPECT_TRUE(reference_.Encode(text, &expected).ok());
    const std::vector<int32_t> actual =
        tokenizer_->Encode(text, {.add_bos = false, .parse_special = false});
    const std::vector<int> actual_int(actual.begin(), actual.end());
    if (actual_int != expected) {
      ADD_FAILURE() << "encode differs for \"" << Printable(text) << "\"\n expected "
                    << Ids(expected) << "\n actual   " << Ids(actual_int);
      return false;
    }
    std::string expected_text;
    EXPECT_TRUE(reference_.Decode(expected, &expected_text).ok());
    const std::string decoded = tokenizer_->Decode(actual, /*skip_special=*/true);
    if (decoded != expected_text) {
      ADD_FAILURE() << "decode differs for ids " << Ids(expected) << "\n expected \""
                    << Printable(expected_text) << "\"\n actual   \"" << Printable(decoded) << "\"";
      return false;
    }
    // Round trip: exact for well-formed UTF-8 without U+2581 (see SentencePieceRoundTrip).
    const std::string want = testing::SentencePieceRoundTrip(text);
    if (decoded != want) {
      ADD_FAILURE() << "round trip differs for \"" << Printable(text) << "\": got \""
                    << Printable(decoded) << "\"";
      return false;
    }
    // Streaming: every piece is whole UTF-8 and the pieces add up to the full decode.
    StreamDecoder stream(*tokenizer_, /*skip_special=*/true);
    std::string streamed;
    for (const int32_t id : actual) {
      const std::string part = stream.Push(id);
      if (!IsWellFormedUtf8(part)) {
        ADD_FAILURE() << "stream emitted a partial character for \"" << Printable(text) << "\"";
        return false;
      }
      streamed += part;
    }
    streamed += stream.Finish();
    if (streamed != decoded) {
      ADD_FAILURE() << "streamed decode differs for \"" << Printable(text) << "\"";
      return false;
    }
    return true;
  }

  sentencepiece::SentencePieceProcessor reference_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_P(OracleTest, HandwrittenSamples) {
  for (const std::string& text : testing::HandwrittenSamples()) {
    if (!Check(text)) break;
  }
}

TEST_P(OracleTest, MalformedUtf8GetsReplacementCharacters) {
  for (const std::string& text : testing::MalformedSamples()) {
    if (!Check(text)) break;
  }
}

TEST_P(OracleTest, RandomCorpus) {
  testing::CorpusGenerator generator(/*seed=*/20231128);
  int checked = 0;
  for (int i = 0; i < 6000; ++i) {
    const std::string text = generator.Next(/*max_units=*/40, /*allow_malformed=*/i % 10 == 0);
    if (!Check(text)) break;
    ++checked;
  }
  EXPECT_EQ(checked, 6000);
}

TEST_P(OracleTest, LongDocument) {
  // One long text: merges run over a whole document, not just short strings.
  testing::CorpusGenerator generator(/*seed=*/7);
  std::string document;
  while (document.size() < 200000) document += generator.Next(60, false) + "\n";
  Check(document);
}

TEST_P(OracleTest, WordSplittingIsEnabledForThisVocabulary) {
  EXPECT_TRUE(tokenizer_->splits_words());
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, OracleTest, ::testing::Values("mistral-7b", "llama-2"));

// Reads a protobuf varint at bytes[*pos], advancing *pos.
uint64_t ReadVarint(const std::string& bytes, size_t* pos) {
  uint64_t value = 0;
  for (int shift = 0; *pos < bytes.size() && shift < 64; shift += 7) {
    const auto byte = static_cast<uint8_t>(bytes[(*pos)++]);
    value |= uint64_t{byte & 0x7Fu} << shift;
    if ((byte & 0x80) == 0) return value;
  }
  ADD_FAILURE() << "bad varint";
  return 0;
}

// The model with normalizer_spec.add_dummy_prefix (ModelProto field 3, NormalizerSpec field 3)
// set to false in place: what Hugging Face's non-legacy LlamaTokenizer loads into SentencePiece.
std::string WithoutDummyPrefix(std::string bytes) {
  for (size_t pos = 0; pos < bytes.size();) {
    const uint64_t tag = ReadVarint(bytes, &pos);
    const uint64_t wire = tag & 7;
    if (wire == 0) {
      ReadVarint(bytes, &pos);
    } else if (wire == 2) {
      const uint64_t length = ReadVarint(bytes, &pos);
      if (tag >> 3 == 3) {  // normalizer_spec
        for (size_t p = pos; p < pos + length;) {
          const uint64_t inner = ReadVarint(bytes, &p);
          if (inner == (3 << 3 | 0)) {  // add_dummy_prefix, a varint
            EXPECT_EQ(bytes[p], 1);
            bytes[p] = 0;
            return bytes;
          }
          if ((inner & 7) == 0) {
            ReadVarint(bytes, &p);
          } else if ((inner & 7) == 2) {
            p += ReadVarint(bytes, &p);
          } else if ((inner & 7) == 5) {
            p += 4;
          } else {
            p += 8;
          }
        }
      }
      pos += length;
    } else {
      pos += wire == 5 ? 4 : 8;
    }
  }
  ADD_FAILURE() << "normalizer_spec.add_dummy_prefix not found";
  return bytes;
}

// Non-legacy mode (tokenizer_config.json "legacy": false): text after an added token is
// encoded without the dummy prefix, exactly as SentencePiece does with add_dummy_prefix off;
// the first run keeps it.
TEST(NonLegacyTokenizer, RunsAfterAddedTokensMatchSentencePieceWithoutDummyPrefix) {
  const std::string path = ModelPath("llama-2");
  sentencepiece::SentencePieceProcessor no_dummy;
  ASSERT_TRUE(no_dummy.LoadFromSerializedProto(WithoutDummyPrefix(ReadFile(path))).ok());
  sentencepiece::SentencePieceProcessor with_dummy;
  ASSERT_TRUE(with_dummy.Load(path).ok());
  Tokenizer tokenizer = LoadSentencePieceTokenizer(path);
  tokenizer.set_legacy(false);
  auto encode = [](sentencepiece::SentencePieceProcessor& sp, const std::string& text) {
    std::vector<int> ids;
    EXPECT_TRUE(sp.Encode(text, &ids).ok());
    return std::vector<int32_t>(ids.begin(), ids.end());
  };
  testing::CorpusGenerator generator(/*seed=*/5);
  for (int i = 0; i < 1000; ++i) {
    const std::string text = i < 3
                                 ? std::vector<std::string>{" [/INST] Hi", "[INST] Hello ", "x"}[i]
                                 : generator.Next(20, i % 10 == 0);
    std::vector<int32_t> after;
    tokenizer.EncodeTextAfterAddedToken(text, &after);
    ASSERT_EQ(after, encode(no_dummy, text)) << Printable(text);
    // A whole prompt: "A<s>B</s>C" -> BOS, A with the dummy prefix, <s>, B and C without.
    const std::vector<int32_t> want_a = encode(with_dummy, text);
    const std::vector<int32_t> want_b = encode(no_dummy, text);
    std::vector<int32_t> want = {1};
    want.insert(want.end(), want_a.begin(), want_a.end());
    want.push_back(1);
    want.insert(want.end(), want_b.begin(), want_b.end());
    want.push_back(2);
    want.insert(want.end(), want_b.begin(), want_b.end());
    if (text.find("<s>") != std::string::npos || text.find("</s>") != std::string::npos ||
        text.find("<unk>") != std::string::npos) {
      continue;  // the split would differ
    }
    ASSERT_EQ(tokenizer.Encode(text + "<s>" + text + "</s>" + text), want) << Printable(text);
  }
  // In legacy mode every run has its dummy prefix.
  tokenizer.set_legacy(true);
  std::vector<int32_t> legacy;
  tokenizer.EncodeTextAfterAddedToken("Hi", &legacy);
  EXPECT_EQ(legacy, encode(with_dummy, "Hi"));
  EXPECT_NE(legacy, encode(no_dummy, "Hi"));
}

}  // namespace
}  // namespace starling
