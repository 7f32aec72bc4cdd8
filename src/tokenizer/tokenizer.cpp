#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <unordered_set>

#include "core/error.h"
#include "core/utf8.h"

namespace starling {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581, SentencePiece's space

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}
bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Python's str.isspace() for one code point: what Hugging Face's lstrip/rstrip remove.
bool IsPythonSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

std::string_view StripLeadingSpace(std::string_view s) {
  while (!s.empty()) {
    size_t length = 0;
    const char32_t c = DecodeUtf8(s, &length);
    if (!IsPythonSpace(c)) break;
    s.remove_prefix(length);
  }
  return s;
}

std::string_view StripTrailingSpace(std::string_view s) {
  while (!s.empty()) {
    // Find the start of the last character.
    size_t start = s.size() - 1;
    while (start > 0 && s.size() - start < 4 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) {
      --start;
    }
    size_t length = 0;
    const char32_t c = DecodeUtf8(s.substr(start), &length);
    if (start + length != s.size() || !IsPythonSpace(c)) break;
    s.remove_suffix(length);
  }
  return s;
}

}  // namespace

// One BPE symbol: a span of the normalized text, in a doubly linked list.
struct Tokenizer::Symbol {
  uint32_t start;
  uint32_t length;  // 0 once merged into its left neighbour
  int32_t prev;
  int32_t next;
  bool freeze;  // user-defined symbols never merge
};

// A possible merge of two adjacent symbols. Ordered as SentencePiece's agenda: highest
// score first, then leftmost.
struct Candidate {
  float score;
  int32_t left;
  int32_t right;
  uint32_t length;
};

static bool LowerPriority(const Candidate& a, const Candidate& b) {
  return a.score < b.score || (a.score == b.score && a.left > b.left);
}

// Buffers reused across the words of one Encode call.
struct Tokenizer::Scratch {
  std::string normalized;
  std::vector<Symbol> symbols;
  std::vector<Candidate> agenda;
  // For UNUSED pieces: the two parts they were last formed from (SentencePiece's rev_merge).
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
  bool previous_unknown = false;
};

Tokenizer::Tokenizer(SentencePieceVocab vocab, std::vector<AddedToken> added_tokens,
                     std::string source)
    : pieces_(std::move(vocab.pieces)),
      scores_(std::move(vocab.scores)),
      types_(std::move(vocab.types)),
      added_(std::move(added_tokens)),
      add_dummy_prefix_(vocab.add_dummy_prefix),
      remove_extra_whitespaces_(vocab.remove_extra_whitespaces),
      escape_whitespaces_(vocab.escape_whitespaces),
      treat_whitespace_as_suffix_(vocab.treat_whitespace_as_suffix),
      byte_fallback_(vocab.byte_fallback),
      unk_surface_(std::move(vocab.unk_surface)),
      bos_id_(vocab.bos_id),
      eos_id_(vocab.eos_id),
      unk_id_(vocab.unk_id),
      source_(std::move(source)) {
  // Added tokens past the SentencePiece vocabulary extend it (OpenChat's 32000, 32001).
  int32_t size = static_cast<int32_t>(pieces_.size());
  for (const AddedToken& token : added_) {
    if (token.id < 0 || token.id >= (1 << 24)) {
      Fail(source_, ": added token '", token.content, "' has invalid id ", token.id);
    }
    if (token.content.empty()) Fail(source_, ": added token ", token.id, " has empty content");
    size = std::max(size, token.id + 1);
  }
  const size_t base_size = pieces_.size();
  pieces_.resize(size);
  scores_.resize(size, 0.0f);
  types_.resize(size, PieceType::kUserDefined);
  special_.assign(size, 0);
  std::vector<uint8_t> defined(size, 0);
  std::fill(defined.begin(), defined.begin() + static_cast<ptrdiff_t>(base_size), 1);
  added_flag_.assign(size, 0);
  for (const AddedToken& token : added_) {
    if (static_cast<size_t>(token.id) < base_size && pieces_[token.id] != token.content) {
      Fail(source_, ": added token '", token.content, "' has id ", token.id,
           ", which the vocabulary already gives to '", pieces_[token.id], "'");
    }
    added_flag_[token.id] = 1;
    if (static_cast<size_t>(token.id) >= base_size) {
      if (defined[token.id] && pieces_[token.id] != token.content) {
        Fail(source_, ": id ", token.id, " is given to both '", pieces_[token.id], "' and '",
             token.content, "'");
      }
      pieces_[token.id] = token.content;
      types_[token.id] = token.special ? PieceType::kControl : PieceType::kUserDefined;
      defined[token.id] = 1;
    }
    if (token.special) special_[token.id] = 1;
  }
  for (int32_t id = 0; id < size; ++id) {
    if (!defined[id]) Fail(source_, ": no token has id ", id, " (ids must be contiguous)");
  }
  for (const int32_t id : {bos_id_, eos_id_}) {
    if (id < -1 || id >= size) Fail(source_, ": BOS/EOS id ", id, " is out of range");
  }

  for (size_t id = 0; id < base_size; ++id) {
    const PieceType type = types_[id];
    const bool normal =
        type == PieceType::kNormal || type == PieceType::kUserDefined || type == PieceType::kUnused;
    (normal ? normal_ids_ : reserved_ids_).emplace(pieces_[id], static_cast<int32_t>(id));
    if (type == PieceType::kUserDefined) user_defined_.push_back(pieces_[id]);
    if (type == PieceType::kUnused) has_unused_ = true;
  }
  std::sort(user_defined_.begin(), user_defined_.end(),
            [](std::string_view a, std::string_view b) { return a.size() > b.size(); });
  byte_ids_.fill(unk_id_);
  if (byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      byte_ids_[b] = PieceToId(name);
    }
  }

  for (size_t i = 0; i < added_.size(); ++i) {
    const AddedToken& token = added_[i];
    if (!added_ids_.emplace(token.content, token.id).second) {
      Fail(source_, ": added token '", token.content, "' is defined twice");
    }
    added_by_first_byte_[static_cast<uint8_t>(token.content[0])].push_back(static_cast<int32_t>(i));
  }
  for (auto& list : added_by_first_byte_) {
    std::stable_sort(list.begin(), list.end(), [this](int32_t a, int32_t b) {
      return added_[a].content.size() > added_[b].content.size();
    });
  }

  // Encoding word by word is exact when no merge can cross the start of a word, i.e. when
  // no mergeable piece holds U+2581 right after another character, and when SentencePiece's
  // whole-text bookkeeping for UNUSED pieces cannot matter.
  split_words_ = escape_whitespaces_ && !treat_whitespace_as_suffix_ && !has_unused_;
  for (const auto& [piece, id] : normal_ids_) {
    if (!split_words_) break;
    for (size_t pos = piece.find(kSpaceSymbol, 1); pos != std::string_view::npos;
         pos = piece.find(kSpaceSymbol, pos + 1)) {
      if (pos < kSpaceSymbol.size() ||
          piece.substr(pos - kSpaceSymbol.size(), kSpaceSymbol.size()) != kSpaceSymbol) {
        split_words_ = false;
        break;
      }
    }
  }
}

const std::string& Tokenizer::Piece(int32_t id) const {
  if (!InRange(id)) Fail("token id ", id, " is out of range [0, ", vocab_size(), ")");
  return pieces_[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return InRange(id) && special_[id] != 0;
}

std::optional<int32_t> Tokenizer::FindAddedToken(std::string_view content) const {
  const auto it = added_ids_.find(content);
  if (it == added_ids_.end()) return std::nullopt;
  return it->second;
}

int32_t Tokenizer::PieceToId(std::string_view piece) const {
  if (const auto it = reserved_ids_.find(piece); it != reserved_ids_.end()) return it->second;
  if (const auto it = normal_ids_.find(piece); it != normal_ids_.end()) return it->second;
  return unk_id_;
}

size_t Tokenizer::MatchUserDefined(std::string_view text) const {
  for (std::string_view symbol : user_defined_) {  // longest first
    if (StartsWith(text, symbol)) return symbol.size();
  }
  return 0;
}

// SentencePiece's Normalizer::Normalize for the identity normalization.
void Tokenizer::Normalize(std::string_view text, bool dummy_prefix, std::string* out) const {
  out->clear();
  if (text.empty()) return;
  const std::string_view space = escape_whitespaces_ ? kSpaceSymbol : std::string_view(" ");
  if (remove_extra_whitespaces_) {
    while (!text.empty() && text[0] == ' ') text.remove_prefix(1);
    if (text.empty()) return;
  }
  out->reserve(text.size() * 3 / 2 + 4);
  if (!treat_whitespace_as_suffix_ && dummy_prefix) out->append(space);
  bool previous_space = remove_extra_whitespaces_;
  while (!text.empty()) {
    std::string_view unit;
    size_t consumed = MatchUserDefined(text);
    if (consumed > 0) {
      unit = text.substr(0, consumed);
    } else if (IsValidUtf8Prefix(text, &consumed)) {
      unit = text.substr(0, consumed);
    } else {
      unit = kReplacementUtf8;  // a malformed byte: U+FFFD, consuming one byte
    }
    if (previous_space) {
      while (!unit.empty() && unit[0] == ' ') unit.remove_prefix(1);
    }
    if (!unit.empty()) {
      for (const char c : unit) {
        if (c == ' ' && escape_whitespaces_) {
          out->append(kSpaceSymbol);
        } else {
          out->push_back(c);
        }
      }
      previous_space = unit.back() == ' ';
    }
    text.remove_prefix(consumed);
    if (!remove_extra_whitespaces_) previous_space = false;
  }
  if (remove_extra_whitespaces_) {
    while (EndsWith(*out, space)) out->resize(out->size() - space.size());
  }
  if (treat_whitespace_as_suffix_ && dummy_prefix) out->append(space);
}

// BPE over symbols first..last (inclusive, linked in order): SentencePiece's agenda loop.
void Tokenizer::MergeSegment(const std::string& normalized, Scratch* scratch, int32_t first,
                             int32_t last) const {
  std::vector<Symbol>& symbols = scratch->symbols;
  std::vector<Candidate>& agenda = scratch->agenda;
  agenda.clear();
  if (has_unused_) scratch->rev_merge.clear();
  auto piece_of = [&](int32_t i) {
    return std::string_view(normalized).substr(symbols[i].start, symbols[i].length);
  };
  auto maybe_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0 || symbols[left].freeze || symbols[right].freeze) return;
    const std::string_view piece(normalized.data() + symbols[left].start,
                                 symbols[left].length + symbols[right].length);
    const auto it = normal_ids_.find(piece);
    if (it == normal_ids_.end()) return;
    agenda.push_back({scores_[it->second], left, right, static_cast<uint32_t>(piece.size())});
    std::push_heap(agenda.begin(), agenda.end(), LowerPriority);
    if (has_unused_ && types_[it->second] == PieceType::kUnused) {
      scratch->rev_merge[piece] = {piece_of(left), piece_of(right)};
    }
  };
  symbols[first].prev = -1;  // the segment is merged on its own
  symbols[last].next = -1;
  for (int32_t i = first; i < last; ++i) maybe_add(i, i + 1);
  while (!agenda.empty()) {
    std::pop_heap(agenda.begin(), agenda.end(), LowerPriority);
    const Candidate top = agenda.back();
    agenda.pop_back();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    // Stale: one side was merged away or grew since this candidate was queued.
    if (left.length == 0 || right.length == 0 || left.length + right.length != top.length) {
      continue;
    }
    left.length += right.length;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.length = 0;
    maybe_add(left.prev, top.left);
    maybe_add(top.left, left.next);
  }
}

// Maps one final piece to ids: UNUSED pieces are split back, unknown pieces become bytes
// (byte fallback) or merge with a preceding unknown piece.
void Tokenizer::EmitPiece(std::string_view piece, Scratch* scratch,
                          std::vector<int32_t>* ids) const {
  const int32_t id = PieceToId(piece);
  if (has_unused_ && types_[id] == PieceType::kUnused) {
    const auto it = scratch->rev_merge.find(piece);
    if (it != scratch->rev_merge.end()) {
      const auto parts = it->second;
      EmitPiece(parts.first, scratch, ids);
      EmitPiece(parts.second, scratch, ids);
      return;
    }
  }
  const bool unknown = types_[id] == PieceType::kUnknown;
  if (unknown && byte_fallback_) {
    for (const char c : piece) ids->push_back(byte_ids_[static_cast<uint8_t>(c)]);
  } else if (!(unknown && scratch->previous_unknown)) {
    ids->push_back(id);
  }
  scratch->previous_unknown = unknown;
}

void Tokenizer::EncodeText(std::string_view text, std::vector<int32_t>* ids) const {
  Encode(text, add_dummy_prefix_, ids);
}

void Tokenizer::EncodeTextAfterAddedToken(std::string_view text, std::vector<int32_t>* ids) const {
  Encode(text, legacy_ && add_dummy_prefix_, ids);
}

void Tokenizer::Encode(std::string_view text, bool dummy_prefix, std::vector<int32_t>* ids) const {
  Scratch scratch;
  Normalize(text, dummy_prefix, &scratch.normalized);
  const std::string& normalized = scratch.normalized;
  if (normalized.empty()) return;

  // Split into characters (user-defined symbols stay whole).
  std::vector<Symbol>& symbols = scratch.symbols;
  symbols.reserve(normalized.size());
  for (size_t pos = 0; pos < normalized.size();) {
    const std::string_view rest = std::string_view(normalized).substr(pos);
    size_t length = MatchUserDefined(rest);
    const bool freeze = length > 0;
    if (!freeze) {
      length = std::min(rest.size(), Utf8LeadLength(static_cast<uint8_t>(rest[0])));
    }
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back(
        {static_cast<uint32_t>(pos), static_cast<uint32_t>(length), index - 1, index + 1, freeze});
    pos += length;
  }
  symbols.back().next = -1;
  const auto count = static_cast<int32_t>(symbols.size());

  auto starts_word = [&](int32_t i) {
    const Symbol& s = symbols[i];
    const Symbol& p = symbols[i - 1];
    return StartsWith(std::string_view(normalized).substr(s.start, s.length), kSpaceSymbol) &&
           !EndsWith(std::string_view(normalized).substr(p.start, p.length), kSpaceSymbol);
  };
  int32_t first = 0;
  for (int32_t i = 1; i <= count; ++i) {
    if (i < count && !(split_words_ && starts_word(i))) continue;
    MergeSegment(normalized, &scratch, first, i - 1);
    for (int32_t s = first; s >= 0; s = symbols[s].next) {
      EmitPiece(std::string_view(normalized).substr(symbols[s].start, symbols[s].length), &scratch,
                ids);
    }
    first = i;
  }
}

void Tokenizer::SplitOnAddedTokens(std::string_view text, std::vector<std::string_view>* chunks,
                                   std::vector<int32_t>* chunk_token) const {
  size_t text_start = 0;
  bool strip_next = false;
  for (size_t pos = 0; pos < text.size();) {
    const auto& candidates = added_by_first_byte_[static_cast<uint8_t>(text[pos])];
    const AddedToken* match = nullptr;
    for (const int32_t index : candidates) {  // longest first
      if (StartsWith(text.substr(pos), added_[index].content)) {
        match = &added_[index];
        break;
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    std::string_view before = text.substr(text_start, pos - text_start);
    if (strip_next) before = StripLeadingSpace(before);
    if (match->lstrip) before = StripTrailingSpace(before);
    chunks->push_back(before);
    chunk_token->push_back(-1);
    chunks->push_back(match->content);
    chunk_token->push_back(match->id);
    pos += match->content.size();
    text_start = pos;
    strip_next = match->rstrip;
  }
  std::string_view rest = text.substr(text_start);
  if (strip_next) rest = StripLeadingSpace(rest);
  chunks->push_back(rest);
  chunk_token->push_back(-1);
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (options.add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  if (!options.parse_special || added_.empty()) {
    Encode(text, add_dummy_prefix_ && !options.continuation, &ids);
    return ids;
  }
  std::vector<std::string_view> chunks;
  std::vector<int32_t> chunk_token;
  SplitOnAddedTokens(text, &chunks, &chunk_token);
  // Non-legacy Hugging Face prepends U+2581 to the whole text and encodes every run without a
  // dummy prefix, then drops a lone leading U+2581 before a special token: the first run is
  // encoded as EncodeText does (an empty one adds nothing), the others as they are.
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (chunk_token[i] >= 0) {
      ids.push_back(chunk_token[i]);
    } else if (i == 0) {
      Encode(chunks[i], add_dummy_prefix_ && !options.continuation, &ids);
    } else {
      EncodeTextAfterAddedToken(chunks[i], &ids);
    }
  }
  return ids;
}

size_t Tokenizer::StreamCut(std::string_view text, bool parse_special, size_t min_cut) const {
  // Encoding is word by word (split_words_) and normalization is per character unless extra
  // whitespace is removed; a user-defined piece with a space in it could span any cut.
  if (!split_words_ || remove_extra_whitespaces_) return 0;
  for (const std::string_view symbol : user_defined_) {
    if (symbol.find(' ') != std::string_view::npos ||
        symbol.find(kSpaceSymbol) != std::string_view::npos) {
      return 0;
    }
  }
  // An occurrence [s, s + n) of `content` touches p when s < p <= s + n: it spans p or ends
  // there (text right after an added token is encoded with its own prefix rule).
  auto touches = [&](std::string_view content, size_t p) {
    const size_t n = content.size();
    if (n == 0) return false;
    const size_t from = p > n ? p - n : 0;
    const size_t to = std::min(text.size(), p + n - 1);
    const size_t at = text.substr(from, to - from).find(content);
    return at != std::string_view::npos && from + at < p;
  };
  // A cut needs the text after it as far as the longest token reaches: an occurrence that
  // spans p may not have been read in full yet.
  size_t reach = 1;
  for (const AddedToken& token : added_) reach = std::max(reach, token.content.size());
  for (const std::string_view symbol : user_defined_) reach = std::max(reach, symbol.size());
  if (text.size() < reach) return 0;
  for (size_t p = text.size() - reach + 1; p-- > std::max<size_t>(min_cut, 1);) {
    // A word starts at a U+2581 (a space) that does not follow another one (literal or not);
    // and the text before the cut must not end in whitespace, which an lstrip token after
    // the cut (or an rstrip one before it) would strip along with the space.
    if (text[p] != ' ' || EndsWith(text.substr(0, p), kSpaceSymbol) ||
        StripTrailingSpace(text.substr(0, p)).size() != p) {
      continue;
    }
    bool clear = true;
    if (parse_special) {
      for (const AddedToken& token : added_) clear = clear && !touches(token.content, p);
    }
    for (const std::string_view symbol : user_defined_) clear = clear && !touches(symbol, p);
    if (clear) return p;
  }
  return 0;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  StreamDecoder decoder(*this, skip_special);
  std::string out;
  for (const int32_t id : ids) out += decoder.Push(id);
  out += decoder.Finish();
  return out;
}

// --- StreamDecoder: SentencePieceProcessor::Decode, one token at a time ---

std::string StreamDecoder::FlushBytes() {
  std::string out = SanitizeUtf8(pending_bytes_);
  pending_bytes_.clear();
  if (!out.empty()) segment_has_text_ = true;
  return out;
}

std::string StreamDecoder::Push(int32_t id) {
  const Tokenizer& t = *tokenizer_;
  const std::string& piece = t.Piece(id);  // throws on a bad id
  if (t.added_flag_[id]) {
    if (skip_special_ && t.special_[id]) return {};
    std::string out = FlushBytes();
    out += piece;
    // Hugging Face decodes the text after an added token as a new SentencePiece sequence.
    expect_bos_space_ = true;
    bos_space_seen_ = false;
    segment_has_text_ = false;
    return out;
  }
  const PieceType type = t.types_[id];
  if (type == PieceType::kByte) {
    unsigned value = 0;
    std::sscanf(piece.c_str() + 3, "%2X", &value);  // validated at load: "<0xXX>"
    pending_bytes_.push_back(static_cast<char>(value));
    // Emit every character that is complete; hold back a partial one.
    const size_t keep = IncompleteUtf8Tail(pending_bytes_);
    std::string ready =
        SanitizeUtf8(std::string_view(pending_bytes_).substr(0, pending_bytes_.size() - keep));
    pending_bytes_.erase(0, pending_bytes_.size() - keep);
    if (!ready.empty()) segment_has_text_ = true;
    return ready;
  }
  std::string out = FlushBytes();
  if (bos_space_seen_ || segment_has_text_) expect_bos_space_ = false;
  std::string_view text = piece;
  bool stripped = false;
  if (type == PieceType::kControl) {
    text = {};
  } else if (type == PieceType::kUnknown) {
    text = t.unk_surface_;
  } else if (expect_bos_space_ && (t.add_dummy_prefix_ || t.remove_extra_whitespaces_)) {
    stripped = StartsWith(text, kSpaceSymbol);
    if (stripped) text.remove_prefix(kSpaceSymbol.size());
    if (t.remove_extra_whitespaces_) stripped = false;
  }
  bos_space_seen_ = stripped;
  size_t start = out.size();
  for (size_t pos = 0; pos < text.size();) {
    if (text.compare(pos, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      out.push_back(' ');
      pos += kSpaceSymbol.size();
    } else {
      out.push_back(text[pos++]);
    }
  }
  if (out.size() > start) segment_has_text_ = true;
  return out;
}

std::string StreamDecoder::Finish() {
  return FlushBytes();
}

void StreamDecoder::Reset() {
  pending_bytes_.clear();
  expect_bos_space_ = true;
  bos_space_seen_ = false;
  segment_has_text_ = false;
}

}  // namespace starling
