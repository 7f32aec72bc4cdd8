#include "formats/sentencepiece_model.h"

#include <cstdio>
#include <unordered_set>

#include "core/error.h"
#include "core/file.h"
#include "formats/protobuf_reader.h"

namespace starling {
namespace {

// Field numbers from sentencepiece_model.proto.
namespace model_field {
constexpr uint32_t kPieces = 1, kTrainerSpec = 2, kNormalizerSpec = 3;
}
namespace piece_field {
constexpr uint32_t kPiece = 1, kScore = 2, kType = 3;
}
namespace trainer_field {
constexpr uint32_t kModelType = 3, kTreatWhitespaceAsSuffix = 24, kByteFallback = 35, kUnkId = 40,
                   kBosId = 41, kEosId = 42, kPadId = 43, kUnkSurface = 44;
}
namespace normalizer_field {
constexpr uint32_t kName = 1, kPrecompiledCharsmap = 2, kAddDummyPrefix = 3,
                   kRemoveExtraWhitespaces = 4, kEscapeWhitespaces = 5;
}

void ParsePiece(ProtoReader reader, SentencePieceVocab* vocab) {
  std::string piece;
  float score = 0.0f;
  uint64_t type = static_cast<uint64_t>(PieceType::kNormal);
  uint32_t field;
  WireType wire;
  while (reader.NextField(&field, &wire)) {
    switch (field) {
      case piece_field::kPiece:
        reader.Expect(wire, WireType::kLengthDelimited, field);
        piece = std::string(reader.ReadBytes());
        break;
      case piece_field::kScore:
        reader.Expect(wire, WireType::kFixed32, field);
        score = reader.ReadFloat();
        break;
      case piece_field::kType:
        reader.Expect(wire, WireType::kVarint, field);
        type = reader.ReadVarint();
        if (type < 1 || type > 6) {
          Fail(reader.context(), ": piece ", vocab->pieces.size(), " has unknown type ", type);
        }
        break;
      default: reader.Skip(wire);
    }
  }
  vocab->pieces.push_back(std::move(piece));
  vocab->scores.push_back(score);
  vocab->types.push_back(static_cast<PieceType>(type));
}

void ParseTrainerSpec(ProtoReader reader, SentencePieceVocab* vocab) {
  uint32_t field;
  WireType wire;
  while (reader.NextField(&field, &wire)) {
    switch (field) {
      case trainer_field::kModelType: {
        reader.Expect(wire, WireType::kVarint, field);
        vocab->algorithm = static_cast<SentencePieceAlgorithm>(reader.ReadInt32());
        break;
      }
      case trainer_field::kTreatWhitespaceAsSuffix:
        reader.Expect(wire, WireType::kVarint, field);
        vocab->treat_whitespace_as_suffix = reader.ReadBool();
        break;
      case trainer_field::kByteFallback:
        reader.Expect(wire, WireType::kVarint, field);
        vocab->byte_fallback = reader.ReadBool();
        break;
      case trainer_field::kUnkId:
      case trainer_field::kBosId:
      case trainer_field::kEosId:
      case trainer_field::kPadId: {
        reader.Expect(wire, WireType::kVarint, field);
        const int32_t id = reader.ReadInt32();
        if (field == trainer_field::kUnkId) vocab->unk_id = id;
        if (field == trainer_field::kBosId) vocab->bos_id = id;
        if (field == trainer_field::kEosId) vocab->eos_id = id;
        if (field == trainer_field::kPadId) vocab->pad_id = id;
        break;
      }
      case trainer_field::kUnkSurface:
        reader.Expect(wire, WireType::kLengthDelimited, field);
        vocab->unk_surface = std::string(reader.ReadBytes());
        break;
      default: reader.Skip(wire);
    }
  }
}

void ParseNormalizerSpec(ProtoReader reader, SentencePieceVocab* vocab) {
  uint32_t field;
  WireType wire;
  while (reader.NextField(&field, &wire)) {
    switch (field) {
      case normalizer_field::kName:
        reader.Expect(wire, WireType::kLengthDelimited, field);
        vocab->normalizer_name = std::string(reader.ReadBytes());
        break;
      case normalizer_field::kPrecompiledCharsmap:
        reader.Expect(wire, WireType::kLengthDelimited, field);
        vocab->has_precompiled_charsmap = !reader.ReadBytes().empty();
        break;
      case normalizer_field::kAddDummyPrefix:
        reader.Expect(wire, WireType::kVarint, field);
        vocab->add_dummy_prefix = reader.ReadBool();
        break;
      case normalizer_field::kRemoveExtraWhitespaces:
        reader.Expect(wire, WireType::kVarint, field);
        vocab->remove_extra_whitespaces = reader.ReadBool();
        break;
      case normalizer_field::kEscapeWhitespaces:
        reader.Expect(wire, WireType::kVarint, field);
        vocab->escape_whitespaces = reader.ReadBool();
        break;
      default: reader.Skip(wire);
    }
  }
}

}  // namespace

void SentencePieceVocab::Validate(const std::string& source) const {
  const size_t n = pieces.size();
  if (n == 0) Fail(source, ": the vocabulary has no pieces");
  if (n > (size_t{1} << 24)) Fail(source, ": vocabulary of ", n, " pieces is implausibly large");
  if (scores.size() != n || types.size() != n) {
    Fail(source, ": ", n, " pieces but ", scores.size(), " scores and ", types.size(), " types");
  }
  if (algorithm != SentencePieceAlgorithm::kBpe) {
    Fail(source, ": SentencePiece model type ", static_cast<int>(algorithm),
         " is not supported (only BPE, type 2, as used by Llama and Mistral)");
  }
  if (has_precompiled_charsmap) {
    Fail(source, ": normalizer '", normalizer_name,
         "' with a precompiled character map is not supported (Llama and Mistral use 'identity')");
  }
  std::unordered_set<std::string_view> seen_normal, seen_reserved;
  int unknown_count = 0;
  bool byte_seen[256] = {};
  for (size_t i = 0; i < n; ++i) {
    const std::string& piece = pieces[i];
    if (piece.empty()) Fail(source, ": piece ", i, " is empty");
    const PieceType type = types[i];
    if (static_cast<int>(type) < 1 || static_cast<int>(type) > 6) {
      Fail(source, ": piece ", i, " has unknown type ", static_cast<int>(type));
    }
    const bool normal =
        type == PieceType::kNormal || type == PieceType::kUserDefined || type == PieceType::kUnused;
    if (!(normal ? seen_normal : seen_reserved).insert(piece).second) {
      Fail(source, ": piece ", i, " '", piece, "' is defined twice");
    }
    if (type == PieceType::kUnknown) ++unknown_count;
    if (type == PieceType::kByte) {
      if (!byte_fallback) {
        Fail(source, ": byte piece '", piece, "' (id ", i, ") but byte_fallback is off");
      }
      unsigned value = 0;
      if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>' ||
          std::sscanf(piece.c_str() + 3, "%2X", &value) != 1) {
        Fail(source, ": byte piece ", i, " '", piece, "' is not of the form <0xXX>");
      }
      byte_seen[value] = true;
    }
  }
  if (unknown_count != 1) {
    Fail(source, ": expected exactly one UNKNOWN piece, found ", unknown_count);
  }
  if (byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      if (!byte_seen[b])
        Fail(source, ": byte_fallback is on but piece <0x", std::hex, b, "> is missing");
    }
  }
  for (const int32_t id : {bos_id, eos_id, pad_id}) {
    if (id >= static_cast<int32_t>(n)) Fail(source, ": special id ", id, " is out of range");
  }
}

SentencePieceVocab ParseSentencePieceModel(std::string_view bytes, const std::string& source) {
  SentencePieceVocab vocab;
  vocab.algorithm = SentencePieceAlgorithm::kUnigram;  // the proto's default
  bool has_trainer_spec = false, has_normalizer_spec = false;
  ProtoReader reader(bytes, source);
  uint32_t field;
  WireType wire;
  while (reader.NextField(&field, &wire)) {
    switch (field) {
      case model_field::kPieces:
        reader.Expect(wire, WireType::kLengthDelimited, field);
        ParsePiece(reader.ReadMessage(Concat("piece ", vocab.pieces.size())), &vocab);
        break;
      case model_field::kTrainerSpec:
        reader.Expect(wire, WireType::kLengthDelimited, field);
        ParseTrainerSpec(reader.ReadMessage("trainer_spec"), &vocab);
        has_trainer_spec = true;
        break;
      case model_field::kNormalizerSpec:
        reader.Expect(wire, WireType::kLengthDelimited, field);
        ParseNormalizerSpec(reader.ReadMessage("normalizer_spec"), &vocab);
        has_normalizer_spec = true;
        break;
      default: reader.Skip(wire);
    }
  }
  // SentencePiece's trainer always writes both specs; without them the defaults would
  // silently change the encoding (e.g. remove_extra_whitespaces), so a file that lacks
  // them is treated as truncated.
  if (vocab.pieces.empty()) Fail(source, ": the vocabulary has no pieces");
  if (!has_trainer_spec) Fail(source, ": no trainer_spec (truncated or not a tokenizer.model?)");
  if (!has_normalizer_spec) {
    Fail(source, ": no normalizer_spec (truncated or not a tokenizer.model?)");
  }
  // SentencePiece derives the unk id from the piece types, not from trainer_spec.
  for (size_t i = 0; i < vocab.types.size(); ++i) {
    if (vocab.types[i] == PieceType::kUnknown) {
      vocab.unk_id = static_cast<int32_t>(i);
      break;
    }
  }
  vocab.Validate(source);
  return vocab;
}

SentencePieceVocab LoadSentencePieceModel(const std::string& path) {
  return ParseSentencePieceModel(ReadFile(path), path);
}

}  // namespace starling
