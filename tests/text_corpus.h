// A varied, reproducible text corpus for tokenizer tests and benchmarks: prose, code,
// many scripts, emoji and other 4-byte characters, combining marks, control characters,
// whitespace runs, digits, and (on request) malformed UTF-8.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/utf8.h"

namespace starling::testing {

inline void AppendCodePoint(char32_t c, std::string* out) {
  AppendUtf8(c, out);
}

// What decode(encode(text)) gives back, by SentencePiece's rules: the encoding loses two
// things, in SentencePiece as here: a malformed byte is encoded as U+FFFD (one per byte),
// and a literal U+2581 is encoded exactly like a space (it is SentencePiece's escaped
// space), so it decodes as ' '.
inline std::string SentencePieceRoundTrip(std::string_view text) {
  const std::string sanitized = SanitizeUtf8(text);
  std::string out;
  for (size_t i = 0; i < sanitized.size(); ++i) {
    if (sanitized.compare(i, 3, "\xE2\x96\x81") == 0) {
      out.push_back(' ');
      i += 2;
    } else {
      out.push_back(sanitized[i]);
    }
  }
  return out;
}

// Hand-picked strings that exercise the edge cases one by one.
inline std::vector<std::string> HandwrittenSamples() {
  return {
      "",
      " ",
      "  ",
      "   leading spaces",
      "trailing spaces   ",
      "\t",
      "\n",
      "\r\n",
      "\n\n\n",
      " \t \n ",
      "Hello",
      "Hello world",
      "Hello, world!",
      "GPT4 Correct User: Hello",
      "GPT4 Correct Assistant:",
      "Implement quicksort using C++",
      "How are you today?",
      "The quick brown fox jumps over the lazy dog.",
      "def f(x):\n    return x * 2\n",
      "int main() {\n\treturn 0;\n}\n",
      "for (size_t i = 0; i < n; ++i) { a[i] += b[i]; }",
      "#include <vector>\nstd::vector<int> v{1, 2, 3};",
      "SELECT * FROM users WHERE id = 42;",
      "{\"role\": \"user\", \"content\": \"hi\"}",
      "https://example.com/path?q=1&r=2#frag",
      "1234567890",
      "3.14159265358979",
      "1,000,000.00 $",
      "2026-11-26T04:56:58Z",
      "你好，世界",
      "日本語のテキストです。",
      "한국어 텍스트",
      "Привет, мир!",
      "Γειά σου Κόσμε",
      "مرحبا بالعالم",
      "שלום עולם",
      "नमस्ते दुनिया",
      "สวัสดีชาวโลก",
      "😀",
      "👍🏽",
      "👨‍👩‍👧‍👦",
      "🇩🇪🇫🇷",
      "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕸𝖆𝖙𝖍",
      "𠀀𠀁𪚥",
      "e\xCC\x81",
      "a\xCC\x80\xCC\x81\xCC\x82",
      "Z\xCD\x91\xCD\x92\xCD\x93",
      std::string("\0", 1),
      std::string("a\0b", 3),
      "\x01\x02\x1F\x7F",
      "\xC2\x80\xC2\x9F",
      "\xE2\x96\x81",
      "\xE2\x96\x81\xE2\x96\x81hello",
      "\xEF\xBF\xBD",
      "<s>",
      "</s>",
      "<unk>",
      "<|end_of_turn|>",
      "<0x41>",
      "[INST] Hello? [/INST]",
      "mixed 中文 and English and 日本語 and emoji 🎉!",
      "    indented\n        more\n",
      "a  b   c    d     e",
      "\u00A0non-breaking\u00A0space",
      "\u3000ideographic space",
      "\u200Bzero\u200Bwidth",
      "\uFEFFbom",
  };
}

// Malformed UTF-8: stray continuation bytes, truncated sequences, overlongs, surrogates,
// code points above U+10FFFF, and 0xFE/0xFF.
inline std::vector<std::string> MalformedSamples() {
  return {
      "\x80",
      "\xBF",
      "\xC0\xAF",
      "\xC3",
      "\xE2\x82",
      "\xF0\x9F\x98",
      "\xED\xA0\x80",
      "\xF4\x90\x80\x80",
      "\xFE",
      "\xFF",
      "ab\xFF"
      "cd",
      "\xE2\x28\xA1",
      "\xF8\x88\x80\x80\x80",
      "hello \xC3\x28 world",
      "\xE0\x80\xAF",
      "\xC3\xA9\xC3",
  };
}

class CorpusGenerator {
 public:
  explicit CorpusGenerator(uint32_t seed) : rng_(seed) {}

  // One random string of about `units` pieces drawn from many kinds of text.
  std::string Next(int max_units, bool allow_malformed) {
    std::string out;
    const int units = Uniform(0, max_units);
    for (int u = 0; u < units; ++u) AppendUnit(&out, allow_malformed);
    return out;
  }

 private:
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  char32_t InRange(char32_t lo, char32_t hi) {
    return static_cast<char32_t>(std::uniform_int_distribution<uint32_t>(lo, hi)(rng_));
  }

  void AppendUnit(std::string* out, bool allow_malformed) {
    static const char* const kWords[] = {"the",
                                         "of",
                                         "and",
                                         "a",
                                         "to",
                                         "in",
                                         "is",
                                         "you",
                                         "that",
                                         "it",
                                         "he",
                                         "was",
                                         "for",
                                         "on",
                                         "are",
                                         "as",
                                         "with",
                                         "his",
                                         "they",
                                         "I",
                                         "at",
                                         "be",
                                         "this",
                                         "have",
                                         "from",
                                         "Hello",
                                         "World",
                                         "GPT4",
                                         "Correct",
                                         "User",
                                         "Assistant",
                                         "quicksort",
                                         "tokenizer",
                                         "internationalization",
                                         "supercalifragilistic",
                                         "don't",
                                         "can't",
                                         "it's",
                                         "O'Neil",
                                         "reward",
                                         "model",
                                         "Starling",
                                         "Mistral",
                                         "Llama",
                                         "return",
                                         "const",
                                         "std::vector",
                                         "printf",
                                         "0x1F",
                                         "__init__",
                                         "self",
                                         "lambda",
                                         "=>",
                                         "!=",
                                         "<=",
                                         "++",
                                         "//",
                                         "/*",
                                         "*/",
                                         "{",
                                         "}",
                                         "(",
                                         ")",
                                         "[",
                                         "]",
                                         ";",
                                         ":",
                                         ",",
                                         ".",
                                         "!",
                                         "?",
                                         "\"",
                                         "'",
                                         "`",
                                         "-",
                                         "--",
                                         "...",
                                         "#",
                                         "@",
                                         "$",
                                         "%",
                                         "^",
                                         "&",
                                         "*",
                                         "_",
                                         "=",
                                         "+",
                                         "|",
                                         "\\",
                                         "~"};
    const int kind = Uniform(0, 22);
    switch (kind) {
      case 0:
      case 1:
      case 2:
      case 3:
      case 4:
      case 5: out->append(kWords[Uniform(0, sizeof(kWords) / sizeof(kWords[0]) - 1)]); break;
      case 6:
      case 7:
      case 8: {
        static const char* const kSpaces[] = {" ",  " ",    " ",   "  ",   "   ",  "    ",    "\t",
                                              "\n", "\n\n", " \n", "\t\t", "\r\n", "        "};
        out->append(kSpaces[Uniform(0, sizeof(kSpaces) / sizeof(kSpaces[0]) - 1)]);
        break;
      }
      case 9: {
        const int digits = Uniform(1, 12);
        for (int i = 0; i < digits; ++i) out->push_back(static_cast<char>('0' + Uniform(0, 9)));
        break;
      }
      case 10:
        for (int i = Uniform(1, 6); i > 0; --i) AppendCodePoint(InRange(0x4E00, 0x9FFF), out);
        break;
      case 11:
        for (int i = Uniform(1, 6); i > 0; --i) AppendCodePoint(InRange(0x3041, 0x30FF), out);
        break;
      case 12:
        for (int i = Uniform(1, 4); i > 0; --i) AppendCodePoint(InRange(0xAC00, 0xD7A3), out);
        break;
      case 13:
        for (int i = Uniform(1, 8); i > 0; --i) AppendCodePoint(InRange(0x0410, 0x044F), out);
        break;
      case 14:
        for (int i = Uniform(1, 3); i > 0; --i) AppendCodePoint(InRange(0x1F300, 0x1FAFF), out);
        break;
      case 15: AppendCodePoint(InRange(0x0300, 0x036F), out); break;  // combining mark
      case 16: AppendCodePoint(InRange(0x00, 0x1F), out); break;      // control character
      case 17: {                                                      // any BMP scalar value
        char32_t c = InRange(0x80, 0xFFFD);
        if (c >= 0xD800 && c <= 0xDFFF) c -= 0x800;
        AppendCodePoint(c, out);
        break;
      }
      case 18: AppendCodePoint(InRange(0x10000, 0x10FFFF), out); break;  // astral, mostly rare
      case 19:
        for (int i = Uniform(1, 8); i > 0; --i) AppendCodePoint(InRange(0x0600, 0x06FF), out);
        break;
      case 20:
        for (int i = Uniform(1, 8); i > 0; --i) AppendCodePoint(InRange(0x0900, 0x097F), out);
        break;
      case 21: out->append("\xE2\x96\x81"); break;  // a literal U+2581
      case 22:
        if (allow_malformed) {
          out->push_back(static_cast<char>(InRange(0x80, 0xFF)));
        } else {
          out->append("\xEF\xBF\xBD");
        }
        break;
    }
  }

  std::mt19937 rng_;
};

}  // namespace starling::testing
