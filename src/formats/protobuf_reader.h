// A minimal, bounds-checked reader of the protobuf wire format: enough to walk the
// messages of a SentencePiece `tokenizer.model` without generated code or libprotobuf.
// Every length and varint is checked against the bytes that remain.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "core/error.h"

namespace starling {

enum class WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

class ProtoReader {
 public:
  // `context` names the file and message for error messages; `base_offset` is where
  // `bytes` starts inside the file, so errors report absolute offsets.
  ProtoReader(std::string_view bytes, std::string context, size_t base_offset = 0)
      : bytes_(bytes), context_(std::move(context)), base_(base_offset) {}

  bool AtEnd() const { return pos_ >= bytes_.size(); }
  size_t offset() const { return base_ + pos_; }

  // Reads the next field's key. Returns false at the end of the message.
  bool NextField(uint32_t* field, WireType* type) {
    if (AtEnd()) return false;
    const uint64_t key = ReadVarint();
    const uint32_t wire = static_cast<uint32_t>(key & 7);
    if (wire != 0 && wire != 1 && wire != 2 && wire != 5) {
      Fail(context_, ": unsupported protobuf wire type ", wire, " at offset ", offset());
    }
    if ((key >> 3) == 0 || (key >> 3) > 0x1FFFFFFF) {
      Fail(context_, ": invalid protobuf field number at offset ", offset());
    }
    *field = static_cast<uint32_t>(key >> 3);
    *type = static_cast<WireType>(wire);
    return true;
  }

  uint64_t ReadVarint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (AtEnd()) Fail(context_, ": truncated varint at offset ", offset());
      const auto byte = static_cast<uint8_t>(bytes_[pos_++]);
      value |= uint64_t{byte & 0x7Fu} << shift;
      if ((byte & 0x80) == 0) return value;
    }
    Fail(context_, ": varint longer than 10 bytes at offset ", offset());
  }

  uint32_t ReadFixed32() {
    Need(4, "fixed32");
    uint32_t value;
    std::memcpy(&value, bytes_.data() + pos_, 4);  // little-endian hosts only (x86, ARM)
    pos_ += 4;
    return value;
  }

  float ReadFloat() {
    const uint32_t bits = ReadFixed32();
    float value;
    std::memcpy(&value, &bits, 4);
    return value;
  }

  // A length-delimited payload: strings, bytes and sub-messages.
  std::string_view ReadBytes() {
    const uint64_t length = ReadVarint();
    if (length > bytes_.size() - pos_) {
      Fail(context_, ": field length ", length, " at offset ", offset(), " runs past the end (",
           bytes_.size() - pos_, " bytes left)");
    }
    const std::string_view out = bytes_.substr(pos_, length);
    pos_ += length;
    return out;
  }

  // Sub-reader over a nested message.
  ProtoReader ReadMessage(const std::string& name) {
    const std::string_view payload = ReadBytes();
    return ProtoReader(payload, context_ + ": " + name, offset() - payload.size());
  }

  bool ReadBool() { return ReadVarint() != 0; }
  int32_t ReadInt32() { return static_cast<int32_t>(ReadVarint()); }

  void Skip(WireType type) {
    switch (type) {
      case WireType::kVarint: ReadVarint(); break;
      case WireType::kFixed64:
        Need(8, "fixed64");
        pos_ += 8;
        break;
      case WireType::kLengthDelimited: ReadBytes(); break;
      case WireType::kFixed32:
        Need(4, "fixed32");
        pos_ += 4;
        break;
    }
  }

  // Checks that a field has the wire type its schema requires.
  void Expect(WireType actual, WireType expected, uint32_t field) const {
    if (actual != expected) {
      Fail(context_, ": field ", field, " has wire type ", static_cast<uint32_t>(actual),
           ", expected ", static_cast<uint32_t>(expected), " (before offset ", offset(), ")");
    }
  }

  const std::string& context() const { return context_; }

 private:
  void Need(size_t n, const char* what) {
    if (bytes_.size() - pos_ < n) Fail(context_, ": truncated ", what, " at offset ", offset());
  }

  std::string_view bytes_;
  std::string context_;
  size_t base_ = 0;
  size_t pos_ = 0;
};

}  // namespace starling
