// SentencePiece `tokenizer.model` (a serialized ModelProto) as plain data.
// Only the fields a BPE encoder and decoder need are kept; the rest is skipped.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace starling {

// Piece types, numbered as in sentencepiece_model.proto and GGUF's tokenizer.ggml.token_type.
enum class PieceType : uint8_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

enum class SentencePieceAlgorithm : int32_t { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

// A SentencePiece vocabulary with its normalizer settings: the one input of our tokenizer,
// whether it came from `tokenizer.model` or from GGUF metadata.
struct SentencePieceVocab {
  std::vector<std::string> pieces;  // [V] piece text, with U+2581 for spaces
  std::vector<float> scores;        // [V] merge priority: higher merges first
  std::vector<PieceType> types;     // [V]
  SentencePieceAlgorithm algorithm = SentencePieceAlgorithm::kBpe;

  // trainer_spec
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  int32_t unk_id = 0;
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  int32_t pad_id = -1;
  std::string unk_surface = " \xE2\x81\x87 ";  // what <unk> decodes to: " ⁇ "

  // normalizer_spec (defaults as in the proto)
  std::string normalizer_name;
  bool has_precompiled_charsmap = false;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;

  // Checks the invariants SentencePiece itself checks at load (non-empty unique pieces,
  // exactly one <unk>, 256 byte pieces when byte_fallback is on, ids in range), and that
  // the model is one we can encode exactly (BPE, identity normalization).
  // `source` names the file for error messages.
  void Validate(const std::string& source) const;
};

// Parses the bytes of a `tokenizer.model`. Throws starling::Error naming `source`, the
// field and the byte offset on malformed input.
SentencePieceVocab ParseSentencePieceModel(std::string_view bytes, const std::string& source);

SentencePieceVocab LoadSentencePieceModel(const std::string& path);

}  // namespace starling
