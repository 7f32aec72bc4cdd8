// Encode and decode arbitrary bytes with the OpenChat tokenizer and check the invariants:
// decode(encode(s)) gives s back (malformed bytes as U+FFFD, U+2581 as a space), streaming
// equals full decoding, and decoding any ids yields well-formed UTF-8.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/utf8.h"
#include "text_corpus.h"
#include "tokenizer/load.h"

namespace {

const starling::Tokenizer& Get() {
  static const starling::Tokenizer tokenizer =
      starling::LoadTokenizer(std::string(STARLING_MODELS_DIR) + "/openchat-3.5-tokenizer");
  return tokenizer;
}

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

std::string StreamDecode(const std::vector<int32_t>& ids, bool skip) {
  starling::StreamDecoder stream(Get(), skip);
  std::string out;
  for (const int32_t id : ids) {
    const std::string part = stream.Push(id);
    Check(starling::IsWellFormedUtf8(part), "a streamed piece is well-formed UTF-8");
    out += part;
  }
  return out + stream.Finish();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const starling::Tokenizer& t = Get();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const bool special : {false, true}) {
    const std::vector<int32_t> ids = t.Encode(text, {.add_bos = false, .parse_special = special});
    const std::string decoded = t.Decode(ids);
    Check(decoded == starling::testing::SentencePieceRoundTrip(text), "decode(encode(s)) == s");
    Check(StreamDecode(ids, false) == decoded, "streamed decode == full decode");
  }
  // The bytes as token ids.
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < size; i += 2) {
    ids.push_back(static_cast<int32_t>((data[i] | (data[i + 1] << 8)) % t.vocab_size()));
  }
  for (const bool skip : {false, true}) {
    const std::string decoded = t.Decode(ids, skip);
    Check(starling::IsWellFormedUtf8(decoded), "decoded ids are well-formed UTF-8");
    Check(StreamDecode(ids, skip) == decoded, "streamed ids == full decode");
  }
  return 0;
}
