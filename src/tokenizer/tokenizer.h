// The SentencePiece-BPE tokenizer of Llama and Mistral models, bit-exact with Google's
// SentencePiece, plus the added-token handling of Hugging Face's LlamaTokenizer: text is split
// on added tokens and each piece between them is encoded on its own. In legacy mode (the
// default, and what Llama-2's tokenizer.json does) every piece gets its own dummy-prefix
// space; with legacy = false (tokenizer_config.json "legacy": false, the slow LlamaTokenizer)
// only the first piece does, the pieces after an added token are encoded as they are.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "formats/sentencepiece_model.h"

namespace starling {

// A token that Hugging Face adds on top of the SentencePiece vocabulary (or marks as
// special within it): `<s>`, `</s>`, `<unk>`, OpenChat's `<|end_of_turn|>`, ...
struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = true;  // skipped by Decode(..., skip_special=true)
  bool lstrip = false;  // strips whitespace from the text before it
  bool rstrip = false;  // strips whitespace from the text after it
};

struct EncodeOptions {
  bool add_bos = true;
  // true: split on added tokens as Hugging Face does; false: all text is plain text, so a
  // user who types "<|end_of_turn|>" gets the ids of those characters.
  bool parse_special = true;
  // The text continues the text of an earlier call, cut where StreamCut said: its first run
  // gets no dummy prefix, so the pieces' ids add up to the ids of the whole.
  bool continuation = false;
};

class Tokenizer {
 public:
  // `source` names where the vocabulary came from, for error messages.
  Tokenizer(SentencePieceVocab vocab, std::vector<AddedToken> added_tokens, std::string source);
  Tokenizer(Tokenizer&&) = default;
  Tokenizer& operator=(Tokenizer&&) = default;
  Tokenizer(const Tokenizer&) = delete;  // the lookup tables point into pieces_
  Tokenizer& operator=(const Tokenizer&) = delete;

  std::vector<int32_t> Encode(std::string_view text, const EncodeOptions& options = {}) const;
  // Where a long text may be cut so that it can be encoded in pieces (the first as usual, the
  // rest with `continuation`) with exactly the ids of the whole: the largest p in
  // [min_cut, text.size()) such that text[p] is a space after neither whitespace nor a U+2581
  // (SentencePiece's space symbol, which a literal one in the text also is), no added token
  // (with parse_special) or user-defined piece touches p, and text goes on past p for as long
  // as the longest of those (whatever follows `text` cannot change the verdict); 0 when there
  // is none, or when this vocabulary cannot be encoded word by word. Lets `tokenize -f` stream
  // a file of any size.
  size_t StreamCut(std::string_view text, bool parse_special, size_t min_cut = 1) const;

  // Exactly SentencePiece's Encode of one piece of text: normalization (dummy prefix,
  // whitespace escaping, U+FFFD for each malformed byte), BPE merges by score, byte
  // fallback. Appends to `ids`; never adds BOS and never recognises added tokens.
  void EncodeText(std::string_view text, std::vector<int32_t>* ids) const;
  // A run of text that comes right after an added token: EncodeText in legacy mode, without
  // the dummy prefix otherwise (Hugging Face's non-legacy LlamaTokenizer).
  void EncodeTextAfterAddedToken(std::string_view text, std::vector<int32_t>* ids) const;

  // Decodes ids to UTF-8. Byte-fallback runs are reassembled; a malformed byte becomes
  // U+FFFD as in SentencePiece. With skip_special, special tokens are dropped as if absent
  // (the rest decodes exactly as SentencePiece decodes it); without, they appear as their
  // text and the text after each one is decoded as a fresh piece (its leading dummy-prefix
  // space removed), so Decode(Encode(s)) == s for text that contains added tokens.
  std::string Decode(std::span<const int32_t> ids, bool skip_special = false) const;

  int32_t vocab_size() const { return static_cast<int32_t>(pieces_.size()); }
  // The vocabulary entry of `id` (U+2581 for spaces; added tokens' content). Throws on a
  // bad id.
  const std::string& Piece(int32_t id) const;
  bool IsSpecial(int32_t id) const;
  bool IsByte(int32_t id) const { return InRange(id) && types_[id] == PieceType::kByte; }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  // Whether the model expects BOS before a raw prompt (HF tokenizer_config.json
  // "add_bos_token", GGUF tokenizer.ggml.add_bos_token; true when unspecified).
  bool add_bos_token() const { return add_bos_token_; }
  void set_add_bos_token(bool add) { add_bos_token_ = add; }
  // Hugging Face's "legacy" (see the top of this file); true unless set.
  bool legacy() const { return legacy_; }
  void set_legacy(bool legacy) { legacy_ = legacy; }
  // Id of an added token by its exact content.
  std::optional<int32_t> FindAddedToken(std::string_view content) const;
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  const std::string& source() const { return source_; }
  // Whether words (runs starting at a U+2581 after another character) can be encoded one
  // at a time; true for every Llama/Mistral vocabulary, see the constructor.
  bool splits_words() const { return split_words_; }

 private:
  friend class StreamDecoder;
  struct Symbol;
  struct Scratch;

  bool InRange(int32_t id) const { return id >= 0 && id < vocab_size(); }
  void Normalize(std::string_view text, bool dummy_prefix, std::string* out) const;
  void Encode(std::string_view text, bool dummy_prefix, std::vector<int32_t>* ids) const;
  size_t MatchUserDefined(std::string_view text) const;
  void MergeSegment(const std::string& normalized, Scratch* scratch, int32_t first,
                    int32_t last) const;
  void EmitPiece(std::string_view piece, Scratch* scratch, std::vector<int32_t>* ids) const;
  int32_t PieceToId(std::string_view piece) const;
  // Splits `text` into (plain text, added token) runs, honouring lstrip/rstrip.
  void SplitOnAddedTokens(std::string_view text, std::vector<std::string_view>* chunks,
                          std::vector<int32_t>* chunk_token) const;

  std::vector<std::string> pieces_;  // [V]
  std::vector<float> scores_;        // [V]
  std::vector<PieceType> types_;     // [V]
  std::vector<uint8_t> added_flag_;  // [V] 1 for added tokens: decoded verbatim
  std::vector<uint8_t> special_;     // [V] 1 for special added tokens
  // Merge candidates: NORMAL, USER_DEFINED and UNUSED pieces; others (control, unknown,
  // byte) are found only by exact lookup, first. As in SentencePiece.
  std::unordered_map<std::string_view, int32_t> normal_ids_;
  std::unordered_map<std::string_view, int32_t> reserved_ids_;
  std::vector<std::string_view> user_defined_;  // longest first
  std::array<int32_t, 256> byte_ids_{};
  std::vector<AddedToken> added_;
  std::unordered_map<std::string_view, int32_t> added_ids_;
  std::array<std::vector<int32_t>, 256> added_by_first_byte_;  // indices into added_, longest first

  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = false;
  bool escape_whitespaces_ = true;
  bool treat_whitespace_as_suffix_ = false;
  bool byte_fallback_ = false;
  bool has_unused_ = false;
  bool split_words_ = false;
  std::string unk_surface_;
  int32_t bos_id_ = -1, eos_id_ = -1, unk_id_ = 0;
  bool add_bos_token_ = true;
  bool legacy_ = true;
  std::string source_;
};

// Incremental decoding for streaming: Push returns the text that is final after each
// token; UTF-8 characters split over byte-fallback tokens are held back until complete.
// The concatenation of all Push results and Finish equals Tokenizer::Decode of the ids.
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
      : tokenizer_(&tokenizer), skip_special_(skip_special) {}
  std::string Push(int32_t id);
  // Flushes held-back bytes (an incomplete character becomes U+FFFD per byte).
  std::string Finish();
  void Reset();

 private:
  std::string FlushBytes();

  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_bytes_;     // byte-fallback bytes not yet emitted
  bool expect_bos_space_ = true;  // SentencePiece's is_bos_ws
  bool bos_space_seen_ = false;
  bool segment_has_text_ = false;
};

}  // namespace starling
