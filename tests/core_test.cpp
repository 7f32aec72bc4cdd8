// UTF-8 helpers and the protobuf wire reader.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "core/memory.h"
#include "core/utf8.h"
#include "formats/protobuf_reader.h"

namespace starling {
namespace {

// Huge-page buffers: zero-filled, 2 MiB aligned, writable to the last byte (sizes around the
// huge-page and page boundaries), and moved without copying.
TEST(HugePageBuffer, ZeroFilledAlignedAndMovable) {
  for (size_t size : {size_t{1}, size_t{4095}, size_t{4097}, (size_t{2} << 20) - 1,
                      (size_t{2} << 20) + 1, size_t{5} << 20}) {
    HugePageBuffer buffer(size);
    ASSERT_EQ(buffer.size(), size);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.data()) % (size_t{2} << 20), 0u);
    size_t nonzero = 0;
    for (size_t i = 0; i < size; ++i) nonzero += buffer.data()[i] != 0;
    EXPECT_EQ(nonzero, 0u) << size;
    buffer.data()[size - 1] = 7;
    const uint8_t* data = buffer.data();
    HugePageBuffer moved(std::move(buffer));
    EXPECT_EQ(moved.data(), data);
    EXPECT_EQ(moved.data()[size - 1], 7);
    EXPECT_EQ(buffer.size(), 0u);  // NOLINT(bugprone-use-after-move): moved-from is empty
  }
  EXPECT_EQ(HugePageBuffer().data(), nullptr);
}

TEST(Utf8, DecodesWellFormedCharacters) {
  size_t n = 0;
  EXPECT_EQ(DecodeUtf8("A", &n), U'A');
  EXPECT_EQ(n, 1u);
  EXPECT_EQ(DecodeUtf8("\xC3\xA9", &n), U'\u00E9');
  EXPECT_EQ(n, 2u);
  EXPECT_EQ(DecodeUtf8("\xE2\x96\x81", &n), U'\u2581');
  EXPECT_EQ(n, 3u);
  EXPECT_EQ(DecodeUtf8("\xF0\x9F\x98\x80", &n), U'\U0001F600');
  EXPECT_EQ(n, 4u);
}

TEST(Utf8, MalformedBytesAreReplacedOneByOne) {
  // Overlong, surrogate, above U+10FFFF, stray trail byte, truncated sequence, bad lead.
  for (const char* bad :
       {"\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\x80", "\xE2\x82", "\xFF"}) {
    size_t n = 0;
    EXPECT_FALSE(IsValidUtf8Prefix(bad, &n)) << bad;
    EXPECT_EQ(n, 1u);
  }
  EXPECT_EQ(SanitizeUtf8("a\xE2\x82z"), "a\xEF\xBF\xBD\xEF\xBF\xBDz");
  size_t n = 0;
  EXPECT_TRUE(IsValidUtf8Prefix("\xEF\xBF\xBD", &n));  // U+FFFD itself is well formed
}

TEST(Utf8, IncompleteTail) {
  EXPECT_EQ(IncompleteUtf8Tail(""), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("abc"), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("a\xF0"), 1u);
  EXPECT_EQ(IncompleteUtf8Tail("a\xF0\x9F"), 2u);
  EXPECT_EQ(IncompleteUtf8Tail("a\xF0\x9F\x98"), 3u);
  EXPECT_EQ(IncompleteUtf8Tail("a\xF0\x9F\x98\x80"), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("\xC3"), 1u);
  EXPECT_EQ(IncompleteUtf8Tail("\xC3\xA9"), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("\x80\x80\x80"), 0u);  // stray trail bytes: nothing to wait for
}

TEST(ProtoReader, ReadsFieldsAndChecksBounds) {
  // field 1 varint 150; field 2 bytes "hi"; field 3 fixed32 1.0f
  const std::string msg("\x08\x96\x01\x12\x02hi\x1D\x00\x00\x80\x3F", 12);
  ProtoReader r(msg, "msg");
  uint32_t field;
  WireType type;
  ASSERT_TRUE(r.NextField(&field, &type));
  EXPECT_EQ(field, 1u);
  EXPECT_EQ(r.ReadVarint(), 150u);
  ASSERT_TRUE(r.NextField(&field, &type));
  EXPECT_EQ(r.ReadBytes(), "hi");
  ASSERT_TRUE(r.NextField(&field, &type));
  EXPECT_EQ(type, WireType::kFixed32);
  EXPECT_EQ(r.ReadFloat(), 1.0f);
  EXPECT_FALSE(r.NextField(&field, &type));

  for (const size_t n : {1, 2, 4, 5, 6, 8, 9, 10, 11}) {  // cuts inside a field (3, 7 are whole)
    ProtoReader t(std::string_view(msg).substr(0, n), "cut");
    EXPECT_THROW(
        {
          while (t.NextField(&field, &type)) t.Skip(type);
        },
        Error)
        << "prefix " << n;
  }
  const std::string eleven_continuation_bytes(11, '\xFF');
  ProtoReader endless(eleven_continuation_bytes, "varint");
  EXPECT_THROW(endless.ReadVarint(), Error);
}

}  // namespace
}  // namespace starling
