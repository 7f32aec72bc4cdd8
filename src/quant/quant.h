// Quantized block formats with ggml's exact byte layouts, so tensors of community GGUF files are
// read in place. Each row of n elements is n / QuantBlockSize(type) consecutive blocks.
//
// The functions without a suffix are the scalar reference implementations ("scalar twins"):
// readable loops that define the results. The *_Avx2 functions (quant_avx2.cpp) must match them:
// integer parts exactly, floats as documented at each declaration.
//
// All block data is little-endian (as GGUF is); fp16 fields are IEEE binary16 bit patterns.
// Block pointers must be aligned to alignof(the block struct) (2, or 4 for Q8_K); GGUF's tensor
// data alignment (32 by default) and the even block sizes guarantee that for every row.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"  // HalfToFloat, FloatToHalf
#include "quant/format.h"

namespace starling {

static_assert(std::endian::native == std::endian::little, "block layouts assume little-endian");

// Elements per block (32 or 256), bytes per block, and the row helpers of format.h, for block
// formats.
inline size_t QuantBlockSize(WeightFormat type) {
  return static_cast<size_t>(Traits(type).block_size);
}
inline size_t QuantBlockBytes(WeightFormat type) {
  return static_cast<size_t>(Traits(type).block_bytes);
}
// Bytes of a row of n elements. Throws Error unless n >= 0 is a multiple of the block size.
inline size_t QuantRowBytes(WeightFormat type, int64_t n) {
  return FormatRowBytes(type, n);
}
// Blocks in a row of n elements, with the same check.
inline int64_t QuantBlockCount(WeightFormat type, int64_t n) {
  return FormatBlockCount(type, n);
}

// The block layouts (ggml-common.h). x[i] is the dequantized value of element i of the block.

// x[i] = d * qs[i].
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[32];
};

// x[i] = d * ((qs[i] & 15) - 8) and x[i + 16] = d * ((qs[i] >> 4) - 8), for i < 16.
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[16];
};

// x[i] = d * (qs[i] & 15) + m and x[i + 16] = d * (qs[i] >> 4) + m, for i < 16.
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[16];
};

// 5-bit q: its low four bits are nibbles as in Q4_0, bit 4 of element j is bit j of the
// little-endian word qh. Q5_0: x = d * (q - 16); Q5_1: x = d * q + m.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
};
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[16];
};

// Sixteen sub-blocks of 16: scales[k] holds sub-block k's 4-bit scale (low nibble) and 4-bit min
// (high nibble); x = d * sc * q - dmin * m with a 2-bit q. Element 128h + 32s + l (h < 2, s < 4,
// l < 32) is bits 2s, 2s+1 of qs[32h + l]. d and dmin come last.
struct BlockQ2_K {
  uint8_t scales[16];
  uint8_t qs[64];
  uint16_t d;
  uint16_t dmin;
};

// Sixteen sub-blocks of 16 with 6-bit scales (stored + 32): sub-block k's low four bits are
// scales[k] & 15 for k < 8, scales[k - 8] >> 4 above; its high two bits are bits 2(k/4),
// 2(k/4)+1 of scales[8 + k % 4]. x = d * (sc - 32) * (q - 4 * (1 - hbit)), with the 2-bit part of
// q placed as in Q2_K and element e's high bit at bit e / 32 of hmask[e % 32].
struct BlockQ3_K {
  uint8_t hmask[32];
  uint8_t qs[64];
  uint8_t scales[12];
  uint16_t d;
};

// As Q4_K (scales, mins and nibbles) with a fifth bit per quant: element 64g + l (l < 32) has
// bit 2g of qh[l], element 64g + 32 + l bit 2g + 1. x = d * sc[j] * q - dmin * m[j], q < 32.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};

// Eight sub-blocks of 32 with 6-bit scale sc[j] and min m[j], packed into `scales`:
//   j < 4:  sc[j] = scales[j] & 63;  m[j] = scales[j + 4] & 63
//   j >= 4: sc[j] = (scales[j + 4] & 15) | (scales[j - 4] >> 6) << 4
//           m[j]  = (scales[j + 4] >> 4) | (scales[j] >> 6) << 4
// Elements 64g..64g+31 are the low nibbles of qs[32g..32g+31] (sub-block 2g), elements
// 64g+32..64g+63 their high nibbles (sub-block 2g+1). x = d * sc[j] * q - dmin * m[j].
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};

// Sixteen sub-blocks of 16 with int8 scales: element e uses scales[e / 16]; x = d * sc * (q - 32)
// with a 6-bit q. In half h (elements 128h..128h+127), for l < 32, with L = ql + 64h and
// H = qh + 32h:
//   q[128h + l]      = (L[l] & 15)      | (H[l] & 3) << 4
//   q[128h + 32 + l] = (L[l + 32] & 15) | (H[l] >> 2 & 3) << 4
//   q[128h + 64 + l] = (L[l] >> 4)      | (H[l] >> 4 & 3) << 4
//   q[128h + 96 + l] = (L[l + 32] >> 4) | (H[l] >> 6 & 3) << 4
// Note that d comes last.
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};

// Activations for the K-quant dot products (never stored in files): x[i] = d * qs[i] with a float
// d; bsums[k] = the sum of qs[16k..16k+15], which the dot products rely on.
struct BlockQ8_K {
  float d;
  int8_t qs[256];
  int16_t bsums[16];
};

static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ6_K) == 210 && sizeof(BlockQ8_K) == 292);
static_assert(offsetof(BlockQ4_K, scales) == 4 && offsetof(BlockQ4_K, qs) == 16);
static_assert(offsetof(BlockQ6_K, qh) == 128 && offsetof(BlockQ6_K, scales) == 192 &&
              offsetof(BlockQ6_K, d) == 208);
static_assert(offsetof(BlockQ8_K, bsums) == 260);

// Decodes sub-block j's (scale, min) of a Q4_K block (ggml's get_scale_min_k4).
void Q4_KScaleMin(const uint8_t* scales, int j, uint8_t* sc, uint8_t* m);
// q[256] = the block's 6-bit quants minus 32 (in [-32, 31]), in element order.
void UnpackQ6_K(const BlockQ6_K& b, int8_t* q);

// out = quantized x[n] (QuantRowBytes(type, n) bytes; dense formats too: F16 and BF16 round to
// nearest even). Throws Error for a bad n. x must be
// finite.
//   Q8_0, Q4_0: bit-identical to ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref (Q8_0
//     rounds x/d half away from zero; Q4_0 takes d = max / -8, with max the first element of
//     largest magnitude, and q = min(15, trunc(x/d + 8.5)), i.e. ties round up).
//   Q4_K, Q6_K: ggml's quantize_row_q4_K_ref / quantize_row_q6_K_ref (make_qkx2_quants /
//     make_qx_quants searches without an importance matrix) operation for operation, compiled
//     without fma contraction, so the bytes equal those of a ggml build without contraction
//     (a ggml built with -march=native differs in a few percent of the blocks).
//   Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K: ggml's quantize_row_*_ref the same way (Q2_K and Q5_K
//     through make_qkx2_quants, Q3_K through make_q3_quants with its rmse search).
//   Q8_K: quantize_row_q8_K_ref (d = max / -127 as a float, round half to even, bsums); an
//     all-zero block also gets zero bsums (ggml leaves them unwritten).
// (ggml's own AVX2 activation quantizer for Q8_0 differs from its reference: 127 / amax for 1/d
// and ties to even; we follow the reference everywhere.)
void QuantizeRow(WeightFormat type, const float* x, int64_t n, void* out);

// out[n] = dequantized row, element for element as ggml's dequantize_row_*.
void DequantizeRow(WeightFormat type, const void* in, int64_t n, float* out);

// Dot products of one weight row with one activation row of n elements, as ggml's vec_dot: each
// block's integer dot product is exact (int32), then scaled and summed in float in block order:
//   Q8_0/Q4_0/Q5_0: sum += float(sumi) * (d_w * d_a)
//   Q4_1/Q5_1:      the same, then sum += float(sum of the activation quants) * (m_w * d_a)
//   K-quants:       sum = fma(d_w * d_a, float(sumi), sum), then (Q2_K, Q4_K, Q5_K)
//                   sum = fma(-(dmin_w * d_a), float(summ), sum), with summ = sum_j m[j] *
//                   (the bsums of sub-block j)
// (ggml pairs Q4_1/Q5_1 with Q8_1 activations, which carry d * sum(q); Q8_0 plus that sum taken
// here gives the same value to rounding and keeps one activation format per block size.)
// The float summation order differs from ggml's (which keeps 8 partial sums), so the results
// agree with ggml's only to rounding. Throws Error for a bad n.
float DotQ8_0Q8_0(const void* w, const void* a, int64_t n);
float DotQ4_0Q8_0(const void* w, const void* a, int64_t n);
float DotQ4_KQ8_K(const void* w, const void* a, int64_t n);
float DotQ6_KQ8_K(const void* w, const void* a, int64_t n);
float DotQ4_1Q8_0(const void* w, const void* a, int64_t n);
float DotQ5_0Q8_0(const void* w, const void* a, int64_t n);
float DotQ5_1Q8_0(const void* w, const void* a, int64_t n);
float DotQ2_KQ8_K(const void* w, const void* a, int64_t n);
float DotQ3_KQ8_K(const void* w, const void* a, int64_t n);
float DotQ5_KQ8_K(const void* w, const void* a, int64_t n);

// The 6-bit scales of a Q3_K block, minus 32: sc[16] in [-32, 31].
void Q3_KScales(const uint8_t* scales, int8_t* sc);

// ---- AVX2 + FMA + F16C versions (quant_avx2.cpp). Call only where CpuHasAvx2Fma().

// True if this CPU has AVX2, FMA and F16C.
bool CpuHasAvx2Fma();

// Byte-identical to QuantizeRow(kQ8_0 / kQ8_K, ...).
void QuantizeRowQ8_0_Avx2(const float* x, int64_t n, void* out);
void QuantizeRowQ8_K_Avx2(const float* x, int64_t n, void* out);

// The K-quant dot products perform the scalar twin's float operations in its order after an
// exact integer reduction per 256-block, so they return the same bits as DotQ4_KQ8_K /
// DotQ6_KQ8_K. They read the activations' bsums, so those must be consistent with qs.
float DotQ4_KQ8_K_Avx2(const void* w, const void* a, int64_t n);
float DotQ6_KQ8_K_Avx2(const void* w, const void* a, int64_t n);

// quant_more_avx2.cpp: the same bits as the scalar twins DotQ4_1Q8_0 ... DotQ5_KQ8_K (exact
// integer sums per block, then the twin's float operations in its order), for any bytes.
float DotQ4_1Q8_0_Avx2(const void* w, const void* a, int64_t n);
float DotQ5_0Q8_0_Avx2(const void* w, const void* a, int64_t n);
float DotQ5_1Q8_0_Avx2(const void* w, const void* a, int64_t n);
float DotQ2_KQ8_K_Avx2(const void* w, const void* a, int64_t n);
float DotQ3_KQ8_K_Avx2(const void* w, const void* a, int64_t n);
float DotQ5_KQ8_K_Avx2(const void* w, const void* a, int64_t n);

// The Q8_0-activation dot products of single rows (matrices run on the interleaved layouts'
// tiles) keep 8 float lanes (each block's exact integer partial sums are scaled with one fma
// per lane: acc = fma(d_w * d_a, lanes, acc)) and add the lanes at the end. Q4_0 forms
// (u - 8) q_a from the unsigned nibbles u in int16 pair sums, so its partial sums are exact too.
// Against the scalar twin: |difference| <= (2 * blocks + 8) * 2^-24 * S with
//   S = sum_i |d_w * d_a * q_a[i]| * |q_w[i]|
// (first-order bounds: the scalar sum is a recursive sum of `blocks` terms, each rounded twice,
// so <= (blocks + 1) * 2^-24 * S; each lane sums `blocks` terms by fma, each term's scale
// rounded once, then a 3-level reduction, so <= (blocks + 4) * 2^-24 * S). DotQ8_0Q8_0_Avx2
// needs activation quants in [-127, 127] (QuantizeRow never writes -128; any weight byte is
// fine); DotQ4_0Q8_0_Avx2 takes any bytes.
float DotQ8_0Q8_0_Avx2(const void* w, const void* a, int64_t n);
float DotQ4_0Q8_0_Avx2(const void* w, const void* a, int64_t n);

// ---- Q4_0, Q8_0 (and Q4_1, Q5_0, Q5_1 below) weights interleaved eight rows at a time
// (quant_interleaved.cpp), the
// layouts the matmul copies these matrices into at load. With eight rows side by side, one
// 256-bit register holds four quants of each of eight rows, an activation word is broadcast
// against it, and the products land in lanes that each belong to one row: a Q4_0 block of
// 8 rows x 32 values costs 8 maddubs and one widening (its sums fit int16), against 16 maddubs
// and 8 widenings, conversions and fmas when rows are kept apart.
//
// Group g (rows 8g..8g+7) is `blocks` consecutive interleaved blocks, one per 32 columns. Row r
// of the group keeps its block's scale in d[r], and its quant bytes as words: bytes 4r..4r+3
// of the 32-byte chunk j are its qs[4j..4j+3]. (Q4_0: the low nibbles of chunk j hold its
// values 4j..4j+3 and the high nibbles its values 16+4j..16+4j+3.) A last group with fewer
// than 8 rows is padded with zero rows (scale 0).
struct BlockQ4_0x8 {
  uint16_t d[8];
  uint8_t qs[128];  // 4 chunks
};
struct BlockQ8_0x8 {
  uint16_t d[8];
  int8_t qs[256];  // 8 chunks
};
// Q4_1, Q5_0, Q5_1: Q4_0's layout (d, and the nibbles in 4 chunks) plus, where the format has
// them, row r's fp16 min in m[r] and its fifth bits in qh bytes 4r..4r+3: byte 4r + i has at
// bit j the fifth bit of value 4j + i (chunk j's low nibble), at bit 4 + j that of value
// 16 + 4j + i (its high nibble).
struct BlockQ4_1x8 {
  uint16_t d[8];
  uint16_t m[8];
  uint8_t qs[128];
};
struct BlockQ5_0x8 {
  uint16_t d[8];
  uint8_t qh[32];
  uint8_t qs[128];
};
struct BlockQ5_1x8 {
  uint16_t d[8];
  uint16_t m[8];
  uint8_t qh[32];
  uint8_t qs[128];
};
static_assert(sizeof(BlockQ4_0x8) == 8 * sizeof(BlockQ4_0));
static_assert(sizeof(BlockQ8_0x8) == 8 * sizeof(BlockQ8_0));
static_assert(sizeof(BlockQ4_1x8) == 8 * sizeof(BlockQ4_1));
static_assert(sizeof(BlockQ5_0x8) == 8 * sizeof(BlockQ5_0));
static_assert(sizeof(BlockQ5_1x8) == 8 * sizeof(BlockQ5_1));

// Interleaved blocks of a [rows, n] matrix: ceil(rows / 8) * (n / 32).
int64_t InterleavedBlockCount(int64_t rows, int64_t n);
// out = the row-major matrix w [rows, n] (rows of QuantRowBytes bytes) interleaved.
void RepackQ4_0x8(const void* w, int64_t rows, int64_t n, void* out);
void RepackQ8_0x8(const void* w, int64_t rows, int64_t n, void* out);
void RepackQ4_1x8(const void* w, int64_t rows, int64_t n, void* out);
void RepackQ5_0x8(const void* w, int64_t rows, int64_t n, void* out);
void RepackQ5_1x8(const void* w, int64_t rows, int64_t n, void* out);
// out[n] = row `row` of an interleaved matrix, dequantized (as DequantizeRow).
void DequantizeRowQ4_0x8(const void* w, int64_t row, int64_t n, float* out);
void DequantizeRowQ8_0x8(const void* w, int64_t row, int64_t n, float* out);
void DequantizeRowQ4_1x8(const void* w, int64_t row, int64_t n, float* out);
void DequantizeRowQ5_0x8(const void* w, int64_t row, int64_t n, float* out);
void DequantizeRowQ5_1x8(const void* w, int64_t row, int64_t n, float* out);

// What the interleaved kernels need of each activation block besides its quants, computed
// once per matmul: its scale as a float and -8 times the sum of its quants (the Q4_0 offset:
// sum (u - 8) q_a = sum u q_a - 8 sum q_a, with u the unsigned nibble).
struct Q8_0BlockTerms {
  float d;
  int32_t offset;
};
// out[n / 32] for one activation row of Q8_0 blocks.
void ComputeQ8_0BlockTerms(const void* a, int64_t n, Q8_0BlockTerms* out);

// For r < rows, t < tokens: out[t * out_stride + r] = the dot product of row r of the
// interleaved matrix w (from its first group) with activation row t (a + t * a_stride, terms
// + t * (n / 32)). Each block's integer sum is exact, then
//   sum = fma(float(sumi), d_w * d_a, sum)   in block order,
// so the result equals DotQ4_0Q8_0 / DotQ8_0Q8_0 but for that fma (one rounding less per
// block). Q4_1, Q5_0 and Q5_1 perform DotQ4_1Q8_0's ... float operations (a multiply and an
// add per term, no fma) and return their bits. The AVX2 kernels return the scalar twins' bits
// for any tile shape; they need activation quants in [-127, 127] (QuantizeRow's range).
using InterleavedQ8_0Dots = void(const void* w, int64_t rows, const void* a, size_t a_stride,
                                 const Q8_0BlockTerms* terms, int64_t tokens, int64_t n, float* out,
                                 int64_t out_stride);
InterleavedQ8_0Dots DotsQ4_0x8Q8_0, DotsQ8_0x8Q8_0, DotsQ4_1x8Q8_0, DotsQ5_0x8Q8_0, DotsQ5_1x8Q8_0;
InterleavedQ8_0Dots DotsQ4_0x8Q8_0_Avx2, DotsQ8_0x8Q8_0_Avx2, DotsQ4_1x8Q8_0_Avx2,
    DotsQ5_0x8Q8_0_Avx2, DotsQ5_1x8Q8_0_Avx2;
// The same with VNNI integer steps (vpdpbusd): the AVX-VNNI (VEX) encoding, for CPUs that
// CpuHasAvxVnni(), and the AVX-512 VL + VNNI (EVEX) one, for CPUs that CpuHasAvx512Vnni()
// (kernels/dot.h), whose block sums run 512 bits wide. All return the scalar twins' bits.
InterleavedQ8_0Dots DotsQ4_0x8Q8_0_AvxVnni, DotsQ8_0x8Q8_0_AvxVnni, DotsQ4_1x8Q8_0_AvxVnni,
    DotsQ5_0x8Q8_0_AvxVnni, DotsQ5_1x8Q8_0_AvxVnni;
InterleavedQ8_0Dots DotsQ4_0x8Q8_0_Avx512Vnni, DotsQ8_0x8Q8_0_Avx512Vnni, DotsQ4_1x8Q8_0_Avx512Vnni,
    DotsQ5_0x8Q8_0_Avx512Vnni, DotsQ5_1x8Q8_0_Avx512Vnni;

// ---- The K-quants (Q2_K ... Q6_K) interleaved eight rows at a time (quant_interleaved_k.cpp), the
// layouts the matmul copies these matrices into at load, as Q4_0/Q8_0 above: one 256-bit
// register holds a 4-quant word of each of 8 rows, the activation word is broadcast against it,
// and each row's products land in its own lanes. Eight rows share every activation load, each
// madd applies a sub-block's scales to all 8 rows at once, and the per-row horizontal
// reductions of the row-major kernels disappear.
//
// Group g (rows 8g..8g+7) is `blocks` = n / 256 consecutive interleaved blocks. Both keep the
// bytes per weight of the file (an interleaved block is exactly 8 row blocks). The quants are
// 32-byte chunks of 4-byte words, word r (bytes 4r..4r+3) belonging to row r. A last group with
// fewer than 8 rows is padded with zero rows (all bytes zero: scales 0).

// Q4_K. d[r], dmin[r]: row r's fp16 scales. scales: the row's 12 packed bytes (BlockQ4_K) as
// three 4-byte words, word w of row r at scales[32w + 4r..]: decoded for 8 rows at once by the
// same word arithmetic (Q4_KScaleMin). qs: the row's qs[4j..4j+3] at chunk j, bytes 4r..4r+3
// (so, as in the file, chunks 8g..8g+7 hold sub-block 2g in their low nibbles and 2g+1 in their
// high nibbles: chunk j's low nibbles are values 64g + 4(j % 8) + 0..3, its high nibbles those
// plus 32, with g = j / 8).
struct BlockQ4_Kx8 {
  uint16_t d[8];
  uint16_t dmin[8];
  uint8_t scales[96];  // 3 words x 8 rows
  uint8_t qs[1024];    // 32 chunks
};

// Q6_K, re-encoded by 16-value sub-block k (the unit of its scales), unsigned q = quant + 32:
//   value 16k + 4p + i (p, i < 4) of row r has
//     low 4 bits:  ql chunk 2k + p / 2, byte 4r + i, low nibble for p even, high for p odd
//     high 2 bits: qh chunk k, byte 4r + i, bits 2p, 2p + 1
//   scales: row r's int8 scales 2s and 2s + 1 at scales[16s + 2r], [16s + 2r + 1] (sign-
//   extended to int16, eight row pairs of lanes: the madd weights of the bsums term as is, and
//   one shuffle from each sub-block's scale for all rows); d[r]: row r's fp16 scale.
struct BlockQ6_Kx8 {
  uint16_t d[8];
  int8_t scales[128];  // 8 groups of 16 bytes
  uint8_t ql[1024];    // 32 chunks
  uint8_t qh[512];     // 16 chunks
};
// Q5_K: Q4_K's interleaved layout plus the fifth bits. qh: row r's qh[4c..4c+3] at chunk c,
// bytes 4r..4r+3 (chunk c's bit s is the fifth bit of values 4c..4c+3 of sub-block s, as in the
// file: qh[l] bit s belongs to value 32s + l).
struct BlockQ5_Kx8 {
  uint16_t d[8];
  uint16_t dmin[8];
  uint8_t scales[96];  // as BlockQ4_Kx8
  uint8_t qh[256];     // 8 chunks
  uint8_t qs[1024];    // as BlockQ4_Kx8
};
// Q3_K, re-encoded as Q6_K by 16-value sub-block k, unsigned q = quant + 4 (low 2 bits | high
// bit << 2):
//   value 16k + 4p + i (p, i < 4) of row r has
//     low 2 bits: ql chunk k, byte 4r + i, bits 2p, 2p + 1
//     high bit:   qh chunk k / 2, byte 4r + i, bit 4 (k % 2) + p
//   scales: the 128 6-bit scales in Q6_K's order (entry 16s + 2r + h is row r's sub-block
//   2s + h), stored + 32 in 96 bytes: entry j's low four bits in scales_low[j % 64] (low nibble
//   for j < 64, high for j >= 64), its high two bits at bits 2 (j / 32), +1 of scales_high[j % 32].
struct BlockQ3_Kx8 {
  uint16_t d[8];
  uint8_t scales_low[64];
  uint8_t scales_high[32];
  uint8_t ql[512];  // 16 chunks
  uint8_t qh[256];  // 8 chunks
};
// Q2_K: the quants placed as Q3_K's low 2 bits; scales[16s + 2r + h]: row r's sub-block 2s + h
// byte as in the file (scale in the low nibble, min in the high).
struct BlockQ2_Kx8 {
  uint16_t d[8];
  uint16_t dmin[8];
  uint8_t scales[128];
  uint8_t ql[512];  // 16 chunks
};
static_assert(sizeof(BlockQ2_Kx8) == 8 * sizeof(BlockQ2_K));
static_assert(sizeof(BlockQ3_Kx8) == 8 * sizeof(BlockQ3_K));
static_assert(sizeof(BlockQ4_Kx8) == 8 * sizeof(BlockQ4_K));
static_assert(sizeof(BlockQ5_Kx8) == 8 * sizeof(BlockQ5_K));
static_assert(sizeof(BlockQ6_Kx8) == 8 * sizeof(BlockQ6_K));

// out = the row-major matrix w [rows, n] (rows of QuantRowBytes bytes) interleaved: ceil(rows /
// 8) * (n / 256) blocks.
void RepackQ2_Kx8(const void* w, int64_t rows, int64_t n, void* out);
void RepackQ3_Kx8(const void* w, int64_t rows, int64_t n, void* out);
void RepackQ4_Kx8(const void* w, int64_t rows, int64_t n, void* out);
void RepackQ5_Kx8(const void* w, int64_t rows, int64_t n, void* out);
void RepackQ6_Kx8(const void* w, int64_t rows, int64_t n, void* out);
// out[n] = row `row` of an interleaved matrix, dequantized: the bits of DequantizeRow of the
// original row.
void DequantizeRowQ2_Kx8(const void* w, int64_t row, int64_t n, float* out);
void DequantizeRowQ3_Kx8(const void* w, int64_t row, int64_t n, float* out);
void DequantizeRowQ4_Kx8(const void* w, int64_t row, int64_t n, float* out);
void DequantizeRowQ5_Kx8(const void* w, int64_t row, int64_t n, float* out);
void DequantizeRowQ6_Kx8(const void* w, int64_t row, int64_t n, float* out);

// For r < rows, t < tokens: out[t * out_stride + r] = the dot product of row r of the
// interleaved matrix w (from its first group) with activation row t (Q8_K blocks at a + t *
// a_stride), with the bits of DotQ4_KQ8_K / DotQ6_KQ8_K on the original row: exact integer sums
// per 256-block, then that function's float operations in its order. They read the activations'
// bsums, so those must be consistent with qs. The AVX2 kernels return the scalar twins' bits
// for any tile shape and any activation quants (the int16 bounds hold for -128 too).
using InterleavedQ8_KDots = void(const void* w, int64_t rows, const void* a, size_t a_stride,
                                 int64_t tokens, int64_t n, float* out, int64_t out_stride);
InterleavedQ8_KDots DotsQ2_Kx8Q8_K, DotsQ3_Kx8Q8_K, DotsQ4_Kx8Q8_K, DotsQ5_Kx8Q8_K, DotsQ6_Kx8Q8_K;
InterleavedQ8_KDots DotsQ2_Kx8Q8_K_Avx2, DotsQ3_Kx8Q8_K_Avx2, DotsQ4_Kx8Q8_K_Avx2,
    DotsQ5_Kx8Q8_K_Avx2, DotsQ6_Kx8Q8_K_Avx2;
// With VNNI integer steps, as the Q4_0/Q8_0 ones above.
InterleavedQ8_KDots DotsQ2_Kx8Q8_K_AvxVnni, DotsQ3_Kx8Q8_K_AvxVnni, DotsQ4_Kx8Q8_K_AvxVnni,
    DotsQ5_Kx8Q8_K_AvxVnni, DotsQ6_Kx8Q8_K_AvxVnni;
InterleavedQ8_KDots DotsQ2_Kx8Q8_K_Avx512Vnni, DotsQ3_Kx8Q8_K_Avx512Vnni, DotsQ4_Kx8Q8_K_Avx512Vnni,
    DotsQ5_Kx8Q8_K_Avx512Vnni, DotsQ6_Kx8Q8_K_Avx512Vnni;

}  // namespace starling
