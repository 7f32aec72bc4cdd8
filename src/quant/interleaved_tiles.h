// The register tiles of the interleaved layouts (quant.h: every block format x8), written
// once and compiled once per instruction set. Internal to the quant library: each includer
// defines, before including,
//   STARLING_TILE_TARGET   the function attribute of its instruction set
//   STARLING_TILE_VNNI     1 for the VNNI integer steps (vpdpbusd), 0 for AVX2's maddubs/madd
//   STARLING_TILE_NAME(f)  the exported name of kernel f at this level (f##_Avx2, ...)
//   STARLING_TILE_ZMM      (optional) 1 for the 512-bit Q4_0/Q8_0 block sums (AVX-512 VNNI)
// and, with VNNI, STARLING_TILE_DPBUSD(acc, u8, s8): the 256-bit vpdpbusd of the level
// (_mm256_dpbusd_epi32 with AVX-512 VL, _mm256_dpbusd_avx_epi32 with AVX-VNNI; one
// instruction, two encodings). quant_interleaved_avx2.cpp, _avxvnni.cpp and _avx512vnni.cpp
// do. Everything here has internal linkage, so the copies never meet.
//
// Every tile computes exact int32 sums per block, whatever its instruction set, and then the
// scalar twin's float operations in its order: all levels return the twins' bits (tested).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "quant/interleaved.h"
#include "quant/quant.h"

#if !defined(STARLING_TILE_TARGET) || !defined(STARLING_TILE_VNNI) || !defined(STARLING_TILE_NAME)
#error "define STARLING_TILE_TARGET, STARLING_TILE_VNNI and STARLING_TILE_NAME first"
#endif
#ifndef STARLING_TILE_ZMM
#define STARLING_TILE_ZMM 0
#endif

// The tiles' float steps are explicit intrinsics (mul, fma, fnmadd); no contraction may fuse
// others.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define STARLING_AVX2 STARLING_TILE_TARGET

// GCC 12's 512-bit intrinsics start from _mm512_undefined_*(), which -Wmaybe-uninitialized
// reports inside them.
#if STARLING_TILE_ZMM && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace starling {
namespace {

using interleaved::GroupCount;
using interleaved::kGroupRows;
using interleaved::Source;

// ---- Q4_0 and Q8_0 (32-value blocks, Q8_0 activations; Q4_1, Q5_0, Q5_1 below)

// One group (8 rows) against kTokens activation rows: out[t] = the 8 rows' sums for token t.
// The block loop is the same for both formats; BlockSums differs.
//
#if STARLING_TILE_ZMM
// 512 bits (AVX-512 VNNI): one zmm holds two chunks' words, rearranged once per block so that
// row r owns lanes 2r and 2r + 1 (chunk j's word, then chunk j + 1's); the activation's words j
// and j + 1 (eight contiguous bytes) broadcast as one qword then meet them in one vpdpbusd, 64
// products. Per block and token the two lanes of each row are added (exact int32) into the
// 8-lane sums the float steps take.
STARLING_AVX2 inline __m512i PairChunks(const void* chunks) {
  const __m512i rows_then_words =
      _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  return _mm512_permutexvar_epi32(rows_then_words, _mm512_loadu_si512(chunks));
}

STARLING_AVX2 inline __m512i BroadcastWordPair(const int8_t* qs) {
  int64_t words;
  std::memcpy(&words, qs, 8);
  return _mm512_set1_epi64(words);
}

// Row r's sum in lane r: lanes 2r + 2r + 1 (the high dword of each qword is dropped).
STARLING_AVX2 inline __m256i AddLanePairs(__m512i v) {
  return _mm512_cvtepi64_epi32(_mm512_add_epi32(v, _mm512_srli_epi64(v, 32)));
}

// Q4_0, per block and token: 4 vpdpbusd (16-lane) into wide[t] (row r's sum in lanes 2r and
// 2r + 1; the offset term not yet added).
template <int kTokens>
STARLING_AVX2 inline void BlockWide(const BlockQ4_0x8& x, const BlockQ8_0* const* y, int64_t b,
                                    __m512i* wide) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (int t = 0; t < kTokens; ++t) wide[t] = _mm512_setzero_si512();
#pragma GCC unroll 1
  for (int j = 0; j < 4; j += 2) {
    const __m512i packed = PairChunks(x.qs + 32 * j);
    const __m512i lo = _mm512_and_si512(packed, low4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
    for (int t = 0; t < kTokens; ++t) {
      // activation values 4j..4j+7 (low nibbles) and 16+4j..16+4j+7 (high)
      wide[t] = _mm512_dpbusd_epi32(wide[t], lo, BroadcastWordPair(y[t][b].qs + 4 * j));
      wide[t] = _mm512_dpbusd_epi32(wide[t], hi, BroadcastWordPair(y[t][b].qs + 16 + 4 * j));
    }
  }
}
// A block's offset term is the activation block's offset << OffsetShift (Q4_0: 0; Q8_0: 4,
// i.e. 16 offset, see below).
constexpr int OffsetShift(const BlockQ4_0x8&) {
  return 0;
}

// Q8_0, per block and token: 4 vpdpbusd of the biased weights (as the 256-bit version below)
// into wide[t]; its offset term is 16 offset.
template <int kTokens>
STARLING_AVX2 inline void BlockWide(const BlockQ8_0x8& x, const BlockQ8_0* const* y, int64_t b,
                                    __m512i* wide) {
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int t = 0; t < kTokens; ++t) wide[t] = _mm512_setzero_si512();
#pragma GCC unroll 1
  for (int j = 0; j < 8; j += 2) {
    const __m512i w_biased = _mm512_xor_si512(PairChunks(x.qs + 32 * j), bias);
    for (int t = 0; t < kTokens; ++t) {
      wide[t] = _mm512_dpbusd_epi32(wide[t], w_biased, BroadcastWordPair(y[t][b].qs + 4 * j));
    }
  }
}
constexpr int OffsetShift(const BlockQ8_0x8&) {
  return 4;
}

// Per block and token: BlockWide, one pair sum, one offset add.
template <int kTokens, typename Block>
STARLING_AVX2 inline void BlockSums(const Block& x, const BlockQ8_0* const* y, int64_t b,
                                    const Q8_0BlockTerms* const* y_terms, __m256i* sumi) {
  __m512i wide[kTokens];
  BlockWide<kTokens>(x, y, b, wide);
  for (int t = 0; t < kTokens; ++t) {
    sumi[t] = _mm256_add_epi32(AddLanePairs(wide[t]),
                               _mm256_set1_epi32(y_terms[t][b].offset << OffsetShift(x)));
  }
}

// Lanes 8-15 (AVX-512 F's 256-bit extract, through a double cast; no DQ needed).
STARLING_AVX2 inline __m256 HighHalf(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

// Blocks b and b + 1 against kTokens tokens, added into acc[t] in block order with the same
// float steps as Tile's (so the same bits): both blocks' pair sums in one 16-lane vector (two
// permutes and an add instead of two AddLanePairs), their offsets, conversion and scales
// (d da) 16 lanes at a time, then one fma per block.
template <int kTokens, typename Block>
STARLING_AVX2 inline void TwoBlocks(const Block* x, const BlockQ8_0* const* y, int64_t b,
                                    const Q8_0BlockTerms* const* y_terms, __m256* acc) {
  const __m512i evens =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  // Lanes 0-7: field 0 of the first 8-byte terms, lanes 8-15: of the second.
  const __m512i first_d = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
  const __m512i first_offset = _mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3);
  __m512i wide0[kTokens], wide1[kTokens];
  BlockWide<kTokens>(x[b], y, b, wide0);
  BlockWide<kTokens>(x[b + 1], y, b + 1, wide1);
  // The 8 row scales of block b in lanes 0-7, of block b + 1 in lanes 8-15.
  const __m512 dw = _mm512_castpd_ps(_mm512_insertf64x4(
      _mm512_castps_pd(_mm512_castps256_ps512(
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].d))))),
      _mm256_castps_pd(
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b + 1].d)))),
      1));
  for (int t = 0; t < kTokens; ++t) {
    // The terms of blocks b and b + 1, adjacent: d, offset, d, offset.
    const __m512i terms =
        _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y_terms[t] + b)));
    __m512i offsets = _mm512_permutexvar_epi32(first_offset, terms);
    if constexpr (OffsetShift(Block{}) > 0) {
      offsets = _mm512_slli_epi32(offsets, OffsetShift(Block{}));
    }
    const __m512i sums =
        _mm512_add_epi32(_mm512_add_epi32(_mm512_permutex2var_epi32(wide0[t], evens, wide1[t]),
                                          _mm512_permutex2var_epi32(wide0[t], odds, wide1[t])),
                         offsets);
    const __m512 da = _mm512_castsi512_ps(_mm512_permutexvar_epi32(first_d, terms));
    const __m512 scale = _mm512_mul_ps(dw, da);
    const __m512 f = _mm512_cvtepi32_ps(sums);
    acc[t] = _mm256_fmadd_ps(_mm512_castps512_ps256(f), _mm512_castps512_ps256(scale), acc[t]);
    acc[t] = _mm256_fmadd_ps(HighHalf(f), HighHalf(scale), acc[t]);
  }
}
#elif STARLING_TILE_VNNI
// Q4_0, per block and token: 8 vpdpbusd (u8 nibbles x s8 activations, four products per int32
// lane, exact), starting from the offset term; the nibbles are unpacked once per block for all
// tokens.
template <int kTokens>
STARLING_AVX2 inline void BlockSums(const BlockQ4_0x8& x, const BlockQ8_0* const* y, int64_t b,
                                    const Q8_0BlockTerms* const* y_terms, __m256i* sumi) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int t = 0; t < kTokens; ++t) sumi[t] = _mm256_set1_epi32(y_terms[t][b].offset);
#pragma GCC unroll 1
  for (int j = 0; j < 4; ++j) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * j));
    const __m256i lo = _mm256_and_si256(packed, low4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
    for (int t = 0; t < kTokens; ++t) {
      int32_t a_lo, a_hi;  // activation values 4j..4j+3 and 16+4j..16+4j+3
      std::memcpy(&a_lo, y[t][b].qs + 4 * j, 4);
      std::memcpy(&a_hi, y[t][b].qs + 16 + 4 * j, 4);
      sumi[t] = STARLING_TILE_DPBUSD(sumi[t], lo, _mm256_set1_epi32(a_lo));
      sumi[t] = STARLING_TILE_DPBUSD(sumi[t], hi, _mm256_set1_epi32(a_hi));
    }
  }
}

// Q8_0, per block and token: 8 vpdpbusd of the weights made unsigned (w + 128, one xor per chunk
// for all tokens) with the activations; the sum starts at -128 times the activations' sum (= 16
// times the block's Q4_0 offset term), which takes the 128 back out. |sum (w + 128) q_a| <= 32 *
// 255 * 127: exact in int32.
template <int kTokens>
STARLING_AVX2 inline void BlockSums(const BlockQ8_0x8& x, const BlockQ8_0* const* y, int64_t b,
                                    const Q8_0BlockTerms* const* y_terms, __m256i* sumi) {
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int t = 0; t < kTokens; ++t) sumi[t] = _mm256_set1_epi32(16 * y_terms[t][b].offset);
#pragma GCC unroll 1
  for (int j = 0; j < 8; ++j) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * j));
    const __m256i w_biased = _mm256_xor_si256(w, bias);
    for (int t = 0; t < kTokens; ++t) {
      int32_t a4;  // activation values 4j..4j+3
      std::memcpy(&a4, y[t][b].qs + 4 * j, 4);
      sumi[t] = STARLING_TILE_DPBUSD(sumi[t], w_biased, _mm256_set1_epi32(a4));
    }
  }
}
#else
// Q4_0, per block and token: 8 maddubs, 7 int16 adds, one widening, one offset add; the
// nibbles are unpacked once per block for all tokens.
template <int kTokens>
STARLING_AVX2 inline void BlockSums(const BlockQ4_0x8& x, const BlockQ8_0* const* y, int64_t b,
                                    const Q8_0BlockTerms* const* y_terms, __m256i* sumi) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256i sums[kTokens];
  for (auto& s : sums) s = _mm256_setzero_si256();
    // Not unrolled: unrolled, GCC schedules all products first and spills them.
#pragma GCC unroll 1
  for (int j = 0; j < 4; ++j) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * j));
    const __m256i lo = _mm256_and_si256(packed, low4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
    for (int t = 0; t < kTokens; ++t) {
      int32_t a_lo, a_hi;  // activation values 4j..4j+3 and 16+4j..16+4j+3
      std::memcpy(&a_lo, y[t][b].qs + 4 * j, 4);
      std::memcpy(&a_hi, y[t][b].qs + 16 + 4 * j, 4);
      // u8 nibbles x s8: pair sums |.| <= 2 * 15 * 128 = 3840; eight of them <= 30720: no
      // int16 saturation or wrap.
      const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(a_lo)),
                                         _mm256_maddubs_epi16(hi, _mm256_set1_epi32(a_hi)));
      sums[t] = _mm256_add_epi16(sums[t], p);
    }
  }
  const __m256i ones = _mm256_set1_epi16(1);
  for (int t = 0; t < kTokens; ++t) {
    // Lanes 2r and 2r + 1 hold row r's pairs: madd with ones gives row r's sum in lane r; the
    // offset turns sum u q_a into sum (u - 8) q_a.
    sumi[t] =
        _mm256_add_epi32(_mm256_madd_epi16(sums[t], ones), _mm256_set1_epi32(y_terms[t][b].offset));
  }
}

// Q8_0, per block and token: 8 x (sign, maddubs, widening, int32 add); |w| once per chunk.
template <int kTokens>
STARLING_AVX2 inline void BlockSums(const BlockQ8_0x8& x, const BlockQ8_0* const* y, int64_t b,
                                    const Q8_0BlockTerms* const* /*y_terms*/, __m256i* sumi) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int t = 0; t < kTokens; ++t) sumi[t] = _mm256_setzero_si256();
#pragma GCC unroll 1
  for (int j = 0; j < 8; ++j) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * j));
    const __m256i w_abs = _mm256_abs_epi8(w);
    for (int t = 0; t < kTokens; ++t) {
      int32_t a4;  // activation values 4j..4j+3
      std::memcpy(&a4, y[t][b].qs + 4 * j, 4);
      // |w| x sign(a, w) = w a; pair sums |.| <= 2 * 128 * 127 (activations in [-127, 127]):
      // no saturation, but two would overflow int16, so each is widened.
      const __m256i p = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(_mm256_set1_epi32(a4), w));
      sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, ones));
    }
  }
}
#endif  // STARLING_TILE_VNNI

// ---- Q4_1, Q5_0, Q5_1: Q4_0's nibbles, with the fifth bits or-ed in (Q5_0, Q5_1), unsigned;
// Q5_0's offset (q - 16) is twice Q4_0's, Q4_1 and Q5_1 have none (their mins are a float term).
template <typename Interleaved>
constexpr int kOffsetTimes = std::is_same_v<Interleaved, BlockQ5_0x8> ? 2 : 0;

// Chunk j's unsigned quants from its packed nibbles: lo (values 4j..4j+3 of each row), hi
// (16 + 4j..); the fifth bits j and 4 + j of the row's qh bytes moved to bit 4 (the 16-bit
// shifts bring in only bits that the masks drop).
template <typename Interleaved, typename Vec>
STARLING_AVX2 inline void SmallChunkQuants(Vec packed, Vec qh, Vec qh_shifted, Vec* lo, Vec* hi) {
  if constexpr (sizeof(Vec) == 32) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    *lo = _mm256_and_si256(packed, low4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
    if constexpr (interleaved::kHasFifthBits<Interleaved>) {
      const __m256i bit4 = _mm256_set1_epi8(0x10);
      *lo = _mm256_or_si256(*lo, _mm256_and_si256(qh, bit4));
      *hi = _mm256_or_si256(*hi, _mm256_and_si256(qh_shifted, bit4));
    }
  }
#if STARLING_TILE_ZMM
  if constexpr (sizeof(Vec) == 64) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    *lo = _mm512_and_si512(packed, low4);
    *hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
    if constexpr (interleaved::kHasFifthBits<Interleaved>) {
      const __m512i bit4 = _mm512_set1_epi8(0x10);
      *lo = _mm512_or_si512(*lo, _mm512_and_si512(qh, bit4));
      *hi = _mm512_or_si512(*hi, _mm512_and_si512(qh_shifted, bit4));
    }
  }
#endif
}

template <int kTokens, typename Interleaved>
STARLING_AVX2 inline void SmallBlockSums(const Interleaved& x, const BlockQ8_0* const* y, int64_t b,
                                         const Q8_0BlockTerms* const* y_terms, __m256i* sumi) {
  [[maybe_unused]] __m256i qh = _mm256_setzero_si256();
  if constexpr (interleaved::kHasFifthBits<Interleaved>) {
    qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qh));
  }
#if STARLING_TILE_ZMM
  // Chunk pairs as in Q4_0's block sums (row r in lanes 2r: chunk j, 2r + 1: chunk j + 1): the
  // row's qh word in both lanes, shifted by j and j + 1 (16-bit lanes, variable counts).
  const __m512i both_lanes = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i qh_wide = _mm512_permutexvar_epi32(both_lanes, _mm512_castsi256_si512(qh));
  const __m512i next = _mm512_set1_epi64(0x0001000100000000);  // +1 in the odd lanes
  __m512i wide[kTokens];
  for (auto& v : wide) v = _mm512_setzero_si512();
#pragma GCC unroll 1
  for (int j = 0; j < 4; j += 2) {
    const __m512i count = _mm512_add_epi16(next, _mm512_set1_epi16(static_cast<int16_t>(j)));
    // bit j -> 4 (low nibble's), bit 4 + j -> 4 (high nibble's)
    const __m512i at_j = _mm512_srlv_epi16(qh_wide, count);
    __m512i lo, hi;
    SmallChunkQuants<Interleaved>(PairChunks(x.qs + 32 * j), _mm512_slli_epi16(at_j, 4), at_j, &lo,
                                  &hi);
    for (int t = 0; t < kTokens; ++t) {
      wide[t] = _mm512_dpbusd_epi32(wide[t], lo, BroadcastWordPair(y[t][b].qs + 4 * j));
      wide[t] = _mm512_dpbusd_epi32(wide[t], hi, BroadcastWordPair(y[t][b].qs + 16 + 4 * j));
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    sumi[t] = _mm256_add_epi32(AddLanePairs(wide[t]),
                               _mm256_set1_epi32(kOffsetTimes<Interleaved> * y_terms[t][b].offset));
  }
#else
#if STARLING_TILE_VNNI
  for (int t = 0; t < kTokens; ++t) {
    sumi[t] = _mm256_set1_epi32(kOffsetTimes<Interleaved> * y_terms[t][b].offset);
  }
#else
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i sums[kTokens];  // int16 pair sums
  for (int t = 0; t < kTokens; ++t) {
    sums[t] = _mm256_setzero_si256();
    sumi[t] = _mm256_set1_epi32(kOffsetTimes<Interleaved> * y_terms[t][b].offset);
  }
#endif
#pragma GCC unroll 1
  for (int j = 0; j < 4; ++j) {
    const __m256i at_j = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(j));
    __m256i lo, hi;
    SmallChunkQuants<Interleaved>(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * j)),
        _mm256_slli_epi16(at_j, 4), at_j, &lo, &hi);
    for (int t = 0; t < kTokens; ++t) {
      int32_t a_lo, a_hi;  // activation values 4j..4j+3 and 16+4j..16+4j+3
      std::memcpy(&a_lo, y[t][b].qs + 4 * j, 4);
      std::memcpy(&a_hi, y[t][b].qs + 16 + 4 * j, 4);
#if STARLING_TILE_VNNI
      sumi[t] = STARLING_TILE_DPBUSD(sumi[t], lo, _mm256_set1_epi32(a_lo));
      sumi[t] = STARLING_TILE_DPBUSD(sumi[t], hi, _mm256_set1_epi32(a_hi));
#else
      // u4 (u5) x s8 pair sums: |.| <= 2 * 31 * 128 = 7936; four of them fit int16, so the
      // sums are widened every second chunk (u4: once, after eight).
      sums[t] = _mm256_add_epi16(
          sums[t], _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(a_lo)),
                                    _mm256_maddubs_epi16(hi, _mm256_set1_epi32(a_hi))));
      if (j == 3 || (interleaved::kHasFifthBits<Interleaved> && j == 1)) {
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(sums[t], ones));
        sums[t] = _mm256_setzero_si256();
      }
#endif
    }
  }
#endif  // STARLING_TILE_ZMM
}

// stream: the weights come from memory (generation: one tile of tokens per group), so the
// lines ahead are prefetched.
template <typename Interleaved, int kTokens>
STARLING_AVX2 void Tile(const Interleaved* x, int64_t blocks, const char* a, size_t a_stride,
                        const Q8_0BlockTerms* terms, bool stream, __m256* out) {
  const BlockQ8_0* y[kTokens];
  const Q8_0BlockTerms* y_terms[kTokens];
  for (int t = 0; t < kTokens; ++t) {
    y[t] = reinterpret_cast<const BlockQ8_0*>(a + t * a_stride);
    y_terms[t] = terms + t * blocks;
  }
  __m256 acc[kTokens];  // local, so that it lives in registers
  for (auto& sum : acc) sum = _mm256_setzero_ps();
  constexpr bool kQ4_0OrQ8_0 =
      std::is_same_v<Interleaved, BlockQ4_0x8> || std::is_same_v<Interleaved, BlockQ8_0x8>;
  int64_t b = 0;
#if STARLING_TILE_ZMM
  if constexpr (kQ4_0OrQ8_0) {
    for (; b + 1 < blocks; b += 2) {
      if (stream) {
        interleaved::PrefetchLines(x + b, interleaved::kPrefetchBytes);
        interleaved::PrefetchLines(x + b + 1, interleaved::kPrefetchBytes);
      }
      TwoBlocks<kTokens>(x, y, b, y_terms, acc);
    }
  }
#endif
  for (; b < blocks; ++b) {
    if (stream) interleaved::PrefetchLines(x + b, interleaved::kPrefetchBytes);
    __m256i sumi[kTokens];
    if constexpr (kQ4_0OrQ8_0) {
      BlockSums<kTokens>(x[b], y, b, y_terms, sumi);
    } else {
      SmallBlockSums<kTokens>(x[b], y, b, y_terms, sumi);
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].d)));
    for (int t = 0; t < kTokens; ++t) {
      const __m256 da = _mm256_set1_ps(y_terms[t][b].d);
      const __m256 scale = _mm256_mul_ps(dw, da);
      if constexpr (kQ4_0OrQ8_0) {
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), scale, acc[t]);
      } else {  // DotQ4_1Q8_0's ...: sum += sumi * (d da) [+ suma * (m da)], no fma
        acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_cvtepi32_ps(sumi[t]), scale));
        if constexpr (interleaved::kHasMins<Interleaved>) {
          const __m256 mw =
              _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].m)));
          // the activations' sum: the offset term is -8 times it
          const __m256 suma = _mm256_set1_ps(static_cast<float>(-y_terms[t][b].offset / 8));
          acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(suma, _mm256_mul_ps(mw, da)));
        }
      }
    }
  }
  for (int t = 0; t < kTokens; ++t) out[t] = acc[t];
}

// Groups of 8 rows, each against tiles of up to 4 tokens.
template <typename Interleaved>
STARLING_AVX2 void DotsInterleavedAvx2(const void* w, int64_t rows, const void* a, size_t a_stride,
                                       const Q8_0BlockTerms* terms, int64_t tokens, int64_t n,
                                       float* out, int64_t out_stride) {
  constexpr int kTokens = STARLING_TILE_Q8_0_TOKENS;
  static_assert(kTokens >= 1 && kTokens <= 8);
  using TileFn = void (*)(const Interleaved*, int64_t, const char*, size_t, const Q8_0BlockTerms*,
                          bool, __m256*);
  static constexpr TileFn kAll[8] = {
      Tile<Interleaved, 1>, Tile<Interleaved, 2>, Tile<Interleaved, 3>, Tile<Interleaved, 4>,
      Tile<Interleaved, 5>, Tile<Interleaved, 6>, Tile<Interleaved, 7>, Tile<Interleaved, 8>};
  const TileFn* kTiles = kAll;
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  const auto* groups = static_cast<const Interleaved*>(w);
  const auto* ab = static_cast<const char*>(a);
  for (int64_t g = 0; g < GroupCount(rows); ++g) {
    const int64_t valid = interleaved::ValidRows(g, rows);
    for (int64_t t = 0; t < tokens; t += kTokens) {
      const int64_t tile_tokens = std::min<int64_t>(kTokens, tokens - t);
      __m256 acc[kTokens];
      kTiles[tile_tokens - 1](groups + g * blocks, blocks, ab + t * a_stride, a_stride,
                              terms + t * blocks, tokens <= kTokens, acc);
      interleaved::StoreGroupTile(acc, tile_tokens, valid, out + t * out_stride + g * kGroupRows,
                                  out_stride);
    }
  }
}

// ---- The K-quants (256-value blocks, Q8_K activations)

// ---- AVX2
//
// A tile is one group (8 rows) against kTokens activation rows; lane r of every vector belongs
// to row r. Per 256-block and token, the block's integer sums are exact int32 lanes, then the
// scalar twin's float operations run lane-wise (a vector multiply, fma, fnmadd (= fma(-a, b, c)
// exactly) and int32 -> float conversion each round as their scalar forms).

// Activation word: values e..e+3 of a Q8_K block, broadcast to all eight rows' lanes.
STARLING_AVX2 inline __m256i Broadcast4(const int8_t* qs) {
  int32_t word;
  std::memcpy(&word, qs, 4);
  return _mm256_set1_epi32(word);
}

// A shuffle mask that fills each row's 32-bit lane with bytes (b0, b1, b2, b3) of that same
// lane (an index >= 4 zeroes the byte). _mm256_shuffle_epi8 indexes within 128-bit halves, each
// holding four rows.
STARLING_AVX2 inline __m256i WithinRows(int b0, int b1, int b2, int b3) {
  auto lane = [&](int r) {
    auto byte = [r](int i) { return i < 4 ? static_cast<uint32_t>(4 * r + i) : 0x80u; };
    return static_cast<int>(byte(b0) | byte(b1) << 8 | byte(b2) << 16 | byte(b3) << 24);
  };
  return _mm256_setr_epi32(lane(0), lane(1), lane(2), lane(3), lane(0), lane(1), lane(2), lane(3));
}

// Byte j of each row into both of its int16 lanes, zero-extended.
STARLING_AVX2 inline __m256i SpreadByte(int j) {
  return WithinRows(j, 4, j, 4);
}

// Streaming a matrix from memory (generation), the hardware prefetchers alone reach 5-9 GB/s
// on one Zen 3 core here (the Q6_K blocks, read in two regions at once, worst); prefetching two
// blocks ahead, a few lines per step of each block's loop, 12-14 GB/s. Lines [first, first +
// count) of the block kPrefetchBlocks after x; past the matrix's end is harmless (prefetches do
// not fault).
constexpr int kPrefetchBlocks = 2;

template <typename Interleaved>
STARLING_AVX2 inline void PrefetchAhead(const Interleaved& x, int first, int count) {
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(&x) + kPrefetchBlocks * sizeof(x);
  for (int i = 0; i < count; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(ahead + 64 * (first + i)), _MM_HINT_T0);
  }
}

STARLING_AVX2 inline __m256 ActivationScale(const BlockQ8_K& y) {
  return _mm256_set1_ps(y.d);
}

// Q4_K and Q5_K per block and token: 64 maddubs summed in int16 per sub-block (8 each; Q5_K's
// u5 products, 4 each), 8 (16) madds with the sub-blocks' scales, 8 madds of the mins with the
// bsums; the quants (Q5_K: nibble | fifth bit << 4) and scales are unpacked once per block for
// all tokens.
template <typename ScaleMinBlock, int kTokens>
STARLING_AVX2 void TileScaleMin(const ScaleMinBlock* x, int64_t blocks, const BlockQ8_K* const* y,
                                __m256* out) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i spread[4] = {SpreadByte(0), SpreadByte(1), SpreadByte(2), SpreadByte(3)};
  constexpr bool kFive = std::is_same_v<ScaleMinBlock, BlockQ5_Kx8>;
  // The block's lines in four steps (Q4_K: 18 lines, Q5_K: 22).
  constexpr int kLinesPerGroup = (sizeof(ScaleMinBlock) / 64 + 4) / 4;
  [[maybe_unused]] const __m256i one_bit = _mm256_set1_epi8(1);
#if STARLING_TILE_VNNI
  const __m256i byte_of_row[4] = {WithinRows(0, 4, 4, 4), WithinRows(1, 4, 4, 4),
                                  WithinRows(2, 4, 4, 4), WithinRows(3, 4, 4, 4)};
#endif
  __m256 acc[kTokens];
  for (auto& v : acc) v = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const ScaleMinBlock& xb = x[b];
    // Decoded scales and mins, row r's four bytes in lane r: sc[0..3], sc[4..7], m[0..3],
    // m[4..7] (Q4_KScaleMin's formulas on 32-bit lanes; the shifts bring in only bits that
    // the masks drop).
    const auto* words = reinterpret_cast<const __m256i*>(xb.scales);
    const __m256i u0 = _mm256_loadu_si256(words);
    const __m256i u1 = _mm256_loadu_si256(words + 1);
    const __m256i u2 = _mm256_loadu_si256(words + 2);
    const __m256i low6 = _mm256_set1_epi8(0x3F);
    const __m256i top2 = _mm256_set1_epi8(0x30);  // bits 6-7 moved to 4-5
    const __m256i sc[2] = {_mm256_and_si256(u0, low6),
                           _mm256_or_si256(_mm256_and_si256(u2, low4),
                                           _mm256_and_si256(_mm256_srli_epi32(u0, 2), top2))};
    const __m256i mins[2] = {_mm256_and_si256(u1, low6),
                             _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), low4),
                                             _mm256_and_si256(_mm256_srli_epi32(u1, 2), top2))};
#if STARLING_TILE_ZMM
    // 512 bits: chunk pairs as in the Q4_0 block sums (row r in lanes 2r, 2r + 1), each
    // sub-block's scale applied to both lanes of its row (exact), the pairs added once per block.
    const __m512i both_lanes = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i low4_wide = _mm512_set1_epi8(0x0F);
    __m512i sum_wide[kTokens];
    for (auto& v : sum_wide) v = _mm512_setzero_si512();
#pragma GCC unroll 1
    for (int g = 0; g < 4; ++g) {
      PrefetchAhead(xb, kLinesPerGroup * g, kLinesPerGroup);
#pragma GCC unroll 2
      for (int half = 0; half < 2; ++half) {
        __m512i part[kTokens];
        for (auto& v : part) v = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int c = 0; c < 8; c += 2) {
          const __m512i packed = PairChunks(xb.qs + 256 * g + 32 * c);
          __m512i q = half == 0 ? _mm512_and_si512(packed, low4_wide)
                                : _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4_wide);
          if constexpr (kFive) {  // bit 2g + half of the qh bytes, moved to bit 4
            const __m512i bits =
                _mm512_srl_epi16(PairChunks(xb.qh + 32 * c), _mm_cvtsi32_si128(2 * g + half));
            q = _mm512_or_si512(q,
                                _mm512_slli_epi16(_mm512_and_si512(bits, _mm512_set1_epi8(1)), 4));
          }
#pragma GCC unroll 8
          for (int t = 0; t < kTokens; ++t) {
            const int8_t* qa = y[t][b].qs + 64 * g + 32 * half + 4 * c;
            part[t] = _mm512_dpbusd_epi32(part[t], q, BroadcastWordPair(qa));
            asm("" : "+v"(part[t]));  // as below
          }
        }
        const __m256i scale = _mm256_shuffle_epi8(sc[g / 2], byte_of_row[2 * g % 4 + half]);
        const __m512i scale_wide =
            _mm512_permutexvar_epi32(both_lanes, _mm512_castsi256_si512(scale));
        for (int t = 0; t < kTokens; ++t) {
          sum_wide[t] = _mm512_add_epi32(sum_wide[t], _mm512_mullo_epi32(part[t], scale_wide));
        }
      }
    }
    __m256i sumi[kTokens];
    for (int t = 0; t < kTokens; ++t) sumi[t] = AddLanePairs(sum_wide[t]);
#else
    // Sub-blocks 2g (low nibbles of chunks 8g..8g+7) and 2g + 1 (their high nibbles), one
    // after the other: one int16 sum per token is live, so more tokens fit the registers.
    __m256i sumi[kTokens];
    for (auto& v : sumi) v = _mm256_setzero_si256();
#pragma GCC unroll 1
    for (int g = 0; g < 4; ++g) {
      PrefetchAhead(xb, kLinesPerGroup * g, kLinesPerGroup);
      const __m256i* chunks = reinterpret_cast<const __m256i*>(xb.qs + 256 * g);
#pragma GCC unroll 2
      for (int half = 0; half < 2; ++half) {
        __m256i sum16[kTokens];
        for (auto& v : sum16) v = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
          const __m256i packed = _mm256_loadu_si256(chunks + c);
          __m256i q = half == 0 ? _mm256_and_si256(packed, low4)
                                : _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
          if constexpr (kFive) {  // bit 2g + half of the qh bytes, moved to bit 4
            const __m256i bits =
                _mm256_srl_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qh) + c),
                                 _mm_cvtsi32_si128(2 * g + half));
            q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(bits, one_bit), 4));
#if !STARLING_TILE_VNNI
            // u5 x s8 pairs reach 2 * 31 * 128 = 7936: four of them fit int16, eight do not,
            // so the first four chunks' sums are scaled and widened here.
            if (c == 4) {
              const __m256i scale = _mm256_shuffle_epi8(sc[g / 2], spread[2 * g % 4 + half]);
              for (int t = 0; t < kTokens; ++t) {
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(sum16[t], scale));
                sum16[t] = _mm256_setzero_si256();
              }
            }
#endif
          }
#pragma GCC unroll 8
          for (int t = 0; t < kTokens; ++t) {
            // u4 x s8 pairs: |.| <= 2 * 15 * 128 = 3840; eight of them <= 30720: no int16
            // saturation or wrap.
            const int8_t* qa = y[t][b].qs + 64 * g + 32 * half + 4 * c;
#if STARLING_TILE_VNNI
            // Four u4 x s8 products per int32 lane: exact.
            sum16[t] = STARLING_TILE_DPBUSD(sum16[t], q, Broadcast4(qa));
#else
            sum16[t] = _mm256_add_epi16(sum16[t], _mm256_maddubs_epi16(q, Broadcast4(qa)));
#endif
            // Keeps the sums in registers: without this, GCC reassociates the unrolled sums,
            // computes all the products first and spills them.
            asm("" : "+x"(sum16[t]));
          }
        }
#if STARLING_TILE_VNNI
        // VNNI: sum16 holds int32 sums (|.| <= 32 * 15 * 128); sub-block 2g + half's 6-bit
        // scale as each row's int32 lane.
        const __m256i scale = _mm256_shuffle_epi8(sc[g / 2], byte_of_row[2 * g % 4 + half]);
        for (int t = 0; t < kTokens; ++t) {
          sumi[t] = _mm256_add_epi32(sumi[t], _mm256_mullo_epi32(sum16[t], scale));
        }
#else
        // Sub-block 2g + half's 6-bit scale in both int16 lanes of each row.
        const __m256i scale = _mm256_shuffle_epi8(sc[g / 2], spread[2 * g % 4 + half]);
        for (int t = 0; t < kTokens; ++t) {
          sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(sum16[t], scale));
        }
#endif
      }
    }
#endif  // STARLING_TILE_ZMM
    // summ = sum_j m[j] * (bsums[2j] + bsums[2j + 1]): both int16 lanes of a row hold m[j],
    // against bsums word j (|.| <= 2^25, exact).
    __m256i summ[kTokens];
    for (auto& v : summ) v = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const __m256i m = _mm256_shuffle_epi8(mins[j / 4], spread[j % 4]);
      for (int t = 0; t < kTokens; ++t) {
        int32_t bsum_pair;
        std::memcpy(&bsum_pair, y[t][b].bsums + 2 * j, 4);
        summ[t] = _mm256_add_epi32(summ[t], _mm256_madd_epi16(m, _mm256_set1_epi32(bsum_pair)));
      }
    }
    // DotQ4_KQ8_K's float operations, in its order.
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.d)));
    const __m256 dminw =
        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.dmin)));
    for (int t = 0; t < kTokens; ++t) {
      const __m256 da = ActivationScale(y[t][b]);
      acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
      acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dminw, da), _mm256_cvtepi32_ps(summ[t]), acc[t]);
    }
  }
  for (int t = 0; t < kTokens; ++t) out[t] = acc[t];
}

// ---- Q6_K, Q3_K and Q2_K: sixteen 16-value sub-blocks of unsigned quants, one int8 scale each
// (Q6_K's order: row r's sub-blocks 2s and 2s + 1 at entries 16s + 2r, 16s + 2r + 1), and an
// offset (Q6_K: -32, Q3_K: -4) or Q2_K's mins.
template <typename Block>
struct Sixteen;
// kSumsFitInt16: a sub-block's 16 products, |.| <= 16 * max q * 128, fit in int16 (Q3_K:
// 14336, Q2_K: 6144; Q6_K: 129024 does not), so the 512-bit tile multiplies them by the scale
// with vpmaddwd (one uop everywhere) instead of vpmulld (two on Intel).
template <>
struct Sixteen<BlockQ6_Kx8> {
  static constexpr int kOffsetShift = 5;  // q - 32
  static constexpr bool kMins = false;
  static constexpr bool kSumsFitInt16 = false;
};
template <>
struct Sixteen<BlockQ3_Kx8> {
  static constexpr int kOffsetShift = 2;  // q - 4
  static constexpr bool kMins = false;
  static constexpr bool kSumsFitInt16 = true;
};
template <>
struct Sixteen<BlockQ2_Kx8> {
  static constexpr int kOffsetShift = 0;
  static constexpr bool kMins = true;
  static constexpr bool kSumsFitInt16 = true;
};

// The block's 128 int8 scales (and Q2_K's mins), in the entry order above: Q6_K's as stored,
// the others decoded into sc (and m) once per block.
STARLING_AVX2 inline const int8_t* BlockScales(const BlockQ6_Kx8& xb, int8_t*, int8_t*) {
  return xb.scales;
}
STARLING_AVX2 inline const int8_t* BlockScales(const BlockQ3_Kx8& xb, int8_t* sc, int8_t*) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i low2 = _mm256_set1_epi8(0x03);
  const __m256i lo0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.scales_low));
  const __m256i lo1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.scales_low + 32));
  const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.scales_high));
  // Entries 32c..32c+31: low four bits, and bits 2c, 2c + 1 of scales_high moved to bits 4-5
  // (the 16-bit shifts bring in only bits that the masks drop).
  const __m256i low[4] = {_mm256_and_si256(lo0, low4), _mm256_and_si256(lo1, low4),
                          _mm256_and_si256(_mm256_srli_epi16(lo0, 4), low4),
                          _mm256_and_si256(_mm256_srli_epi16(lo1, 4), low4)};
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    const __m256i high = _mm256_and_si256(_mm256_srli_epi16(hi, 2 * c), low2);
    const __m256i stored = _mm256_or_si256(low[c], _mm256_slli_epi16(high, 4));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sc + 32 * c),
                        _mm256_sub_epi8(stored, _mm256_set1_epi8(32)));
  }
  return sc;
}
STARLING_AVX2 inline const int8_t* BlockScales(const BlockQ2_Kx8& xb, int8_t* sc, int8_t* m) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    const __m256i both = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.scales + 32 * c));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sc + 32 * c), _mm256_and_si256(both, low4));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(m + 32 * c),
                        _mm256_and_si256(_mm256_srli_epi16(both, 4), low4));
  }
  return sc;
}

// Sub-block k's quants: q[p] holds quad p (values 16k + 4p + 0..3) of the 8 rows, unsigned.
// (The 16-bit shifts bring in only bits that the masks drop.)
STARLING_AVX2 inline void SubBlockQuads(const BlockQ6_Kx8& xb, int k, __m256i* q) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i high2 = _mm256_set1_epi8(0x30);
  const auto* ql = reinterpret_cast<const __m256i*>(xb.ql + 64 * k);
  const __m256i ql0 = _mm256_loadu_si256(ql);
  const __m256i ql1 = _mm256_loadu_si256(ql + 1);
  const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qh + 32 * k));
  // The nibble, and qh bits 2p, 2p + 1 moved to bits 4-5.
  q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low4),
                         _mm256_and_si256(_mm256_slli_epi16(qh, 4), high2));
  q[1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                         _mm256_and_si256(_mm256_slli_epi16(qh, 2), high2));
  q[2] = _mm256_or_si256(_mm256_and_si256(ql1, low4), _mm256_and_si256(qh, high2));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                         _mm256_and_si256(_mm256_srli_epi16(qh, 2), high2));
}
// Bits 2p, 2p + 1 of the ql chunk (Q2_K's quants, Q3_K's low bits).
template <typename TwoBitBlock>
STARLING_AVX2 inline void TwoBitQuads(const TwoBitBlock& xb, int k, __m256i* q) {
  const __m256i low2 = _mm256_set1_epi8(0x03);
  const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.ql + 32 * k));
  q[0] = _mm256_and_si256(ql, low2);
  q[1] = _mm256_and_si256(_mm256_srli_epi16(ql, 2), low2);
  q[2] = _mm256_and_si256(_mm256_srli_epi16(ql, 4), low2);
  q[3] = _mm256_and_si256(_mm256_srli_epi16(ql, 6), low2);
}
STARLING_AVX2 inline void SubBlockQuads(const BlockQ2_Kx8& xb, int k, __m256i* q) {
  TwoBitQuads(xb, k, q);
}
STARLING_AVX2 inline void SubBlockQuads(const BlockQ3_Kx8& xb, int k, __m256i* q) {
  TwoBitQuads(xb, k, q);
  // Bit 4 (k % 2) + p of the qh chunk k / 2, moved to bit 2.
  const __m256i bit2 = _mm256_set1_epi8(0x04);
  __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qh + 32 * (k / 2)));
  if (k % 2 == 1) qh = _mm256_srli_epi16(qh, 4);
  q[0] = _mm256_or_si256(q[0], _mm256_and_si256(_mm256_slli_epi16(qh, 2), bit2));
  q[1] = _mm256_or_si256(q[1], _mm256_and_si256(_mm256_slli_epi16(qh, 1), bit2));
  q[2] = _mm256_or_si256(q[2], _mm256_and_si256(qh, bit2));
  q[3] = _mm256_or_si256(q[3], _mm256_and_si256(_mm256_srli_epi16(qh, 1), bit2));
}

#if STARLING_TILE_ZMM
// 512 bits: sub-blocks 2s and 2s + 1 at once. q[p] lane 2r + h holds quad p (values 4p..4p+3)
// of row r's sub-block 2s + h, unsigned: the lane order of the scales as stored (entry 16s +
// 2r + h) and of AddLanePairs. ((x & mask) | y as one vpternlogd: A | (B & C) is 0xF8.)
STARLING_AVX2 inline __m512i OrMasked(__m512i a, __m512i b, __m512i mask) {
  return _mm512_ternarylogic_epi32(a, b, mask, 0xF8);
}
template <typename TwoBitBlock>
STARLING_AVX2 inline void TwoBitPairQuads(const TwoBitBlock& xb, int s, __m512i* q) {
  const __m512i low2 = _mm512_set1_epi8(0x03);
  const __m512i ql = PairChunks(xb.ql + 64 * s);  // chunks 2s, 2s + 1
  q[0] = _mm512_and_si512(ql, low2);
  q[1] = _mm512_and_si512(_mm512_srli_epi16(ql, 2), low2);
  q[2] = _mm512_and_si512(_mm512_srli_epi16(ql, 4), low2);
  q[3] = _mm512_and_si512(_mm512_srli_epi16(ql, 6), low2);
}
STARLING_AVX2 inline void SubBlockPairQuads(const BlockQ2_Kx8& xb, int s, __m512i* q) {
  TwoBitPairQuads(xb, s, q);
}
STARLING_AVX2 inline void SubBlockPairQuads(const BlockQ3_Kx8& xb, int s, __m512i* q) {
  TwoBitPairQuads(xb, s, q);
  // qh chunk s: bit 4h + p of row r's word; each word into lanes 2r and 2r + 1, the second
  // shifted down by 4, so that bit p is quad p's high bit, then moved to bit 2.
  const __m512i each_twice = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i odd_by_4 = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
  const __m512i bit2 = _mm512_set1_epi8(0x04);
  const __m512i qh = _mm512_srlv_epi32(
      _mm512_permutexvar_epi32(each_twice, _mm512_castsi256_si512(_mm256_loadu_si256(
                                               reinterpret_cast<const __m256i*>(xb.qh + 32 * s)))),
      odd_by_4);
  q[0] = OrMasked(q[0], _mm512_slli_epi16(qh, 2), bit2);
  q[1] = OrMasked(q[1], _mm512_slli_epi16(qh, 1), bit2);
  q[2] = OrMasked(q[2], qh, bit2);
  q[3] = OrMasked(q[3], _mm512_srli_epi16(qh, 1), bit2);
}
STARLING_AVX2 inline void SubBlockPairQuads(const BlockQ6_Kx8& xb, int s, __m512i* q) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i high2 = _mm512_set1_epi8(0x30);
  // Sub-block k's ql is two chunks (64k: quads 0 and 1 as nibbles, 64k + 32: quads 2 and 3).
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i even = _mm512_loadu_si512(xb.ql + 128 * s);
  const __m512i odd = _mm512_loadu_si512(xb.ql + 128 * s + 64);
  const __m512i ql0 = _mm512_permutex2var_epi32(even, first, odd);
  const __m512i ql1 = _mm512_permutex2var_epi32(even, second, odd);
  const __m512i qh = PairChunks(xb.qh + 64 * s);  // qh chunks 2s, 2s + 1
  q[0] = OrMasked(_mm512_and_si512(ql0, low4), _mm512_slli_epi16(qh, 4), high2);
  q[1] =
      OrMasked(_mm512_and_si512(_mm512_srli_epi16(ql0, 4), low4), _mm512_slli_epi16(qh, 2), high2);
  q[2] = OrMasked(_mm512_and_si512(ql1, low4), qh, high2);
  q[3] =
      OrMasked(_mm512_and_si512(_mm512_srli_epi16(ql1, 4), low4), _mm512_srli_epi16(qh, 2), high2);
}
#endif  // STARLING_TILE_ZMM

// Per block and token: 64 maddubs, added in int16 two at a time, 32 madds with the sub-blocks'
// scales (VNNI: 64 vpdpbusd, 16 vpmulld), and 8 madds of the scales (Q2_K: the mins) with the
// bsums; the quants and scales are unpacked once per block for all tokens. With 512 bits: 32
// vpdpbusd and 8 multiplies by the scales, two sub-blocks per step, which also halves the
// unpacking (measured on Zen 5, one token, the weights in L2: Q2_K 65 -> 98 G MAC/s, Q3_K 47
// -> 72, Q6_K 50 -> 75).
template <typename Block, int kTokens>
STARLING_AVX2 void TileSixteen(const Block* x, int64_t blocks, const BlockQ8_K* const* y,
                               __m256* out) {
  using Traits = Sixteen<Block>;
  // The block's lines over its 16 steps (Q6_K: 27 lines, Q3_K: 14, Q2_K: 11).
  constexpr int kLinesPerStep = (sizeof(Block) / 64 + 16) / 16;
  // Shuffles of a row's int16 scale pair (sc[2s], sc[2s + 1]): the first into both int16
  // lanes, the second into both.
  [[maybe_unused]] const __m256i first = WithinRows(0, 1, 0, 1);
  [[maybe_unused]] const __m256i second = WithinRows(2, 3, 2, 3);
  alignas(32) int8_t decoded_scales[128];
  alignas(32) int8_t decoded_mins[128];
  __m256 acc[kTokens];
  for (auto& v : acc) v = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const Block& xb = x[b];
    const int8_t* scales = BlockScales(xb, decoded_scales, decoded_mins);
    __m256i sumi[kTokens];
    for (auto& v : sumi) v = _mm256_setzero_si256();
#if STARLING_TILE_ZMM
    // 512 bits: a pair of sub-blocks per step (SubBlockPairQuads' lanes). Activation words
    // 4h + p of the pair's 32 values meet quad p in lane 2r + h.
    const __m512i quad_words[4] = {
        _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4),
        _mm512_setr_epi32(1, 5, 1, 5, 1, 5, 1, 5, 1, 5, 1, 5, 1, 5, 1, 5),
        _mm512_setr_epi32(2, 6, 2, 6, 2, 6, 2, 6, 2, 6, 2, 6, 2, 6, 2, 6),
        _mm512_setr_epi32(3, 7, 3, 7, 3, 7, 3, 7, 3, 7, 3, 7, 3, 7, 3, 7)};
    __m512i sum_wide[kTokens];
    for (auto& v : sum_wide) v = _mm512_setzero_si512();
#pragma GCC unroll 1
    for (int s = 0; s < 8; ++s) {
      PrefetchAhead(xb, 2 * kLinesPerStep * s, 2 * kLinesPerStep);
      // Lane 2r + h: the scale of row r's sub-block 2s + h (entry 16s + 2r + h).
      const __m512i scale =
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + 16 * s)));
      // The scale as int16 in each lane's low word, 0 in its high word.
      const __m512i scale_low = _mm512_and_si512(scale, _mm512_set1_epi32(0xFFFF));
      __m512i q[4];
      SubBlockPairQuads(xb, s, q);
#pragma GCC unroll 8
      for (int t = 0; t < kTokens; ++t) {
        const __m512i words = _mm512_castsi256_si512(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[t][b].qs + 32 * s)));
        // 16 products per lane (|.| <= 16 * 63 * 128), times the scale: exact int32 lanes
        // (the sum over the block's 8 pairs <= 2^27).
        __m512i part = _mm512_setzero_si512();
        for (int p = 0; p < 4; ++p) {
          part = _mm512_dpbusd_epi32(part, q[p], _mm512_permutexvar_epi32(quad_words[p], words));
        }
        if constexpr (Traits::kSumsFitInt16) {  // part's low word times the scale
          sum_wide[t] = _mm512_add_epi32(sum_wide[t], _mm512_madd_epi16(part, scale_low));
        } else {
          sum_wide[t] = _mm512_add_epi32(sum_wide[t], _mm512_mullo_epi32(part, scale));
        }
        asm("" : "+v"(sum_wide[t]));  // as in TileScaleMin
      }
    }
    for (int t = 0; t < kTokens; ++t) sumi[t] = AddLanePairs(sum_wide[t]);
#else
#pragma GCC unroll 1
    for (int k = 0; k < 16; ++k) {
      PrefetchAhead(xb, kLinesPerStep * k, kLinesPerStep);
      const __m256i pair = _mm256_cvtepi8_epi16(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + 16 * (k / 2))));
#if STARLING_TILE_VNNI
      // Sub-block k's int8 scale, sign-extended into each row's int32 lane.
      const __m256i scale = k % 2 == 0 ? _mm256_srai_epi32(_mm256_slli_epi32(pair, 16), 16)
                                       : _mm256_srai_epi32(pair, 16);
#else
      const __m256i scale = _mm256_shuffle_epi8(pair, k % 2 == 0 ? first : second);
#endif
      __m256i q[4];
      SubBlockQuads(xb, k, q);
#pragma GCC unroll 8
      for (int t = 0; t < kTokens; ++t) {
        const int8_t* qa = y[t][b].qs + 16 * k;
#if STARLING_TILE_VNNI
        // Four u6 x s8 products per int32 lane, 16 per sub-block (|.| <= 16 * 63 * 128), times
        // the scale: exact int32 lanes.
        __m256i part = STARLING_TILE_DPBUSD(_mm256_setzero_si256(), q[0], Broadcast4(qa));
        part = STARLING_TILE_DPBUSD(part, q[1], Broadcast4(qa + 4));
        part = STARLING_TILE_DPBUSD(part, q[2], Broadcast4(qa + 8));
        part = STARLING_TILE_DPBUSD(part, q[3], Broadcast4(qa + 12));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_mullo_epi32(part, scale));
#else
        // u6 x s8 pairs: |.| <= 2 * 63 * 128 = 16128; two of them <= 32256: no int16
        // saturation or wrap. Times the int8 scale in madd: exact int32 lanes.
        const __m256i s01 = _mm256_add_epi16(_mm256_maddubs_epi16(q[0], Broadcast4(qa)),
                                             _mm256_maddubs_epi16(q[1], Broadcast4(qa + 4)));
        const __m256i s23 = _mm256_add_epi16(_mm256_maddubs_epi16(q[2], Broadcast4(qa + 8)),
                                             _mm256_maddubs_epi16(q[3], Broadcast4(qa + 12)));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(_mm256_madd_epi16(s01, scale),
                                                             _mm256_madd_epi16(s23, scale)));
#endif
        asm("" : "+x"(sumi[t]));  // as in TileScaleMin
      }
    }
#endif  // STARLING_TILE_ZMM
    // Q6_K, Q3_K: sum sc (q - 2^shift) qa = sum sc q qa - 2^shift sum_k sc[k] bsums[k]; Q2_K:
    // summ = sum_k m[k] bsums[k]. The pairs against bsums words (|.| <= 16 * 128 * 2048 =
    // 2^22, times 32 <= 2^27: exact).
    const int8_t* weights = Traits::kMins ? decoded_mins : scales;
    __m256i bsum_term[kTokens];
    for (auto& v : bsum_term) v = _mm256_setzero_si256();
    for (int s = 0; s < 8; ++s) {
      const __m256i pair =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(weights + 16 * s)));
      for (int t = 0; t < kTokens; ++t) {
        int32_t bsum_pair;
        std::memcpy(&bsum_pair, y[t][b].bsums + 2 * s, 4);
        bsum_term[t] =
            _mm256_add_epi32(bsum_term[t], _mm256_madd_epi16(pair, _mm256_set1_epi32(bsum_pair)));
      }
    }
    // The row-major dot product's float operations (DotQ6_KQ8_K, DotQ3_KQ8_K: one fma;
    // DotQ2_KQ8_K: AddScaleMinBlock).
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.d)));
    for (int t = 0; t < kTokens; ++t) {
      const __m256 da = ActivationScale(y[t][b]);
      if constexpr (Traits::kMins) {
        const __m256 dminw =
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.dmin)));
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        acc[t] =
            _mm256_fnmadd_ps(_mm256_mul_ps(dminw, da), _mm256_cvtepi32_ps(bsum_term[t]), acc[t]);
      } else {
        sumi[t] = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(bsum_term[t], Traits::kOffsetShift));
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
      }
    }
  }
  for (int t = 0; t < kTokens; ++t) out[t] = acc[t];
}

// Tiles of 8 rows x up to 8 tokens. Measured on Zen 3, one thread, a 64 x 4096 chunk in cache
// against 64 tokens: tiles of 8 tokens ran ~1.2x the row-major kernels (1 row x 8 tokens) for
// Q4_K and 1.05-1.2x for Q6_K (tiles of 4 or 6: as fast for Q4_K, slower for Q6_K); against one
// token (generation), ~2.2x (Q4_K) and ~1.5x (Q6_K) the row-major single dot products, so
// streaming from memory is bound by the memory, not the kernel.
constexpr int kTileTokens = 8;

// The K-quant tile of a layout for kTokens tokens.
template <typename Interleaved, int kTokens>
STARLING_AVX2 void KQuantTile(const Interleaved* x, int64_t blocks, const BlockQ8_K* const* y,
                              __m256* out) {
  if constexpr (std::is_same_v<Interleaved, BlockQ4_Kx8> ||
                std::is_same_v<Interleaved, BlockQ5_Kx8>) {
    TileScaleMin<Interleaved, kTokens>(x, blocks, y, out);
  } else {
    TileSixteen<Interleaved, kTokens>(x, blocks, y, out);
  }
}

template <typename Interleaved>
using TileFn = void (*)(const Interleaved* x, int64_t blocks, const BlockQ8_K* const* y,
                        __m256* out);

// tiles[k - 1] takes k tokens.
template <typename Interleaved, size_t... k>
const TileFn<Interleaved>* KQuantTiles(std::index_sequence<k...>) {
  static constexpr TileFn<Interleaved> kTiles[] = {
      KQuantTile<Interleaved, static_cast<int>(k) + 1>...};
  return kTiles;
}

// Groups of 8 rows, each against tiles of up to kTileTokens tokens.
template <typename Interleaved>
STARLING_AVX2 void DotsKQuantInterleaved(const void* w, int64_t rows, const void* a,
                                         size_t a_stride, int64_t tokens, int64_t n, float* out,
                                         int64_t out_stride) {
  const TileFn<Interleaved>* tiles =
      KQuantTiles<Interleaved>(std::make_index_sequence<kTileTokens>());
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  const auto* groups = static_cast<const Interleaved*>(w);
  const auto* ab = static_cast<const char*>(a);
  for (int64_t g = 0; g < GroupCount(rows); ++g) {
    const int64_t valid = interleaved::ValidRows(g, rows);
    for (int64_t t = 0; t < tokens; t += kTileTokens) {
      const int64_t tile_tokens = std::min<int64_t>(kTileTokens, tokens - t);
      const BlockQ8_K* y[kTileTokens];
      for (int64_t i = 0; i < tile_tokens; ++i) {
        y[i] = reinterpret_cast<const BlockQ8_K*>(ab + (t + i) * a_stride);
      }
      __m256 acc[kTileTokens];
      tiles[tile_tokens - 1](groups + g * blocks, blocks, y, acc);
      interleaved::StoreGroupTile(acc, tile_tokens, valid, out + t * out_stride + g * kGroupRows,
                                  out_stride);
    }
  }
}

}  // namespace

void STARLING_TILE_NAME(DotsQ4_0x8Q8_0)(const void* w, int64_t rows, const void* a, size_t a_stride,
                                        const Q8_0BlockTerms* terms, int64_t tokens, int64_t n,
                                        float* out, int64_t out_stride) {
  DotsInterleavedAvx2<BlockQ4_0x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}
void STARLING_TILE_NAME(DotsQ8_0x8Q8_0)(const void* w, int64_t rows, const void* a, size_t a_stride,
                                        const Q8_0BlockTerms* terms, int64_t tokens, int64_t n,
                                        float* out, int64_t out_stride) {
  DotsInterleavedAvx2<BlockQ8_0x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}

void STARLING_TILE_NAME(DotsQ4_1x8Q8_0)(const void* w, int64_t rows, const void* a, size_t a_stride,
                                        const Q8_0BlockTerms* terms, int64_t tokens, int64_t n,
                                        float* out, int64_t out_stride) {
  DotsInterleavedAvx2<BlockQ4_1x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}
void STARLING_TILE_NAME(DotsQ5_0x8Q8_0)(const void* w, int64_t rows, const void* a, size_t a_stride,
                                        const Q8_0BlockTerms* terms, int64_t tokens, int64_t n,
                                        float* out, int64_t out_stride) {
  DotsInterleavedAvx2<BlockQ5_0x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}
void STARLING_TILE_NAME(DotsQ5_1x8Q8_0)(const void* w, int64_t rows, const void* a, size_t a_stride,
                                        const Q8_0BlockTerms* terms, int64_t tokens, int64_t n,
                                        float* out, int64_t out_stride) {
  DotsInterleavedAvx2<BlockQ5_1x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}

void STARLING_TILE_NAME(DotsQ2_Kx8Q8_K)(const void* w, int64_t rows, const void* a, size_t a_stride,
                                        int64_t tokens, int64_t n, float* out, int64_t out_stride) {
  DotsKQuantInterleaved<BlockQ2_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride);
}
void STARLING_TILE_NAME(DotsQ3_Kx8Q8_K)(const void* w, int64_t rows, const void* a, size_t a_stride,
                                        int64_t tokens, int64_t n, float* out, int64_t out_stride) {
  DotsKQuantInterleaved<BlockQ3_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride);
}
void STARLING_TILE_NAME(DotsQ4_Kx8Q8_K)(const void* w, int64_t rows, const void* a, size_t a_stride,
                                        int64_t tokens, int64_t n, float* out, int64_t out_stride) {
  DotsKQuantInterleaved<BlockQ4_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride);
}
void STARLING_TILE_NAME(DotsQ5_Kx8Q8_K)(const void* w, int64_t rows, const void* a, size_t a_stride,
                                        int64_t tokens, int64_t n, float* out, int64_t out_stride) {
  DotsKQuantInterleaved<BlockQ5_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride);
}
void STARLING_TILE_NAME(DotsQ6_Kx8Q8_K)(const void* w, int64_t rows, const void* a, size_t a_stride,
                                        int64_t tokens, int64_t n, float* out, int64_t out_stride) {
  DotsKQuantInterleaved<BlockQ6_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride);
}

}  // namespace starling

#undef STARLING_AVX2
