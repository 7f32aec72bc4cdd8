// Writes tests/data/ggml-quants/ggml_quants.bin: for each block format, input floats, the bytes
// ggml's reference quantizer (quantize_row_*_ref) makes of them and ggml's dequantization
// (dequantize_row_*) of those bytes. The quant tests compare our formats against them: ggml is
// the writer of the files people download, so its layouts and rounding are the reference.
// Built and run by tools/make_ggml_quant_fixture.sh against a ggml checkout (nothing of ggml is
// committed here).
//
// File: "SGQF", u32 version 1, u32 count, then per format: char name[8], u32 ggml type,
// u32 n (elements), u32 bytes, float x[n], u8 q[bytes], float y[n]. Little-endian.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-quants.h"

// What ggml-quants.c links against from the rest of ggml; the reference functions called here
// never reach them.
void ggml_abort(const char* file, int line, const char* fmt, ...) {
  fprintf(stderr, "ggml_abort at %s:%d (%s)\n", file, line, fmt);
  abort();
}
size_t ggml_row_size(enum ggml_type type, int64_t ne) {
  (void)type;
  (void)ne;
  abort();
}
size_t ggml_type_size(enum ggml_type type) {
  (void)type;
  abort();
}
const char* ggml_type_name(enum ggml_type type) {
  (void)type;
  abort();
}

enum { kN = 4096 };  // 16 super-blocks of 256, 128 blocks of 32

static uint64_t state = 0x9E3779B97F4A7C15ull;
static double Uniform(void) {  // xorshift64*, in (0, 1)
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return ((double)((state * 0x2545F4914F6CDD1Dull) >> 11) + 0.5) / 9007199254740992.0;
}
static float Normal(void) {
  return (float)(sqrt(-2.0 * log(Uniform())) * cos(6.283185307179586 * Uniform()));
}

// Inputs that reach every branch of the quantizers: weight-like normals at several scales,
// outliers, an all-zero and a constant super-block, an all-positive one, tiny values.
static void MakeInput(float* x) {
  for (int i = 0; i < kN; ++i) {
    const int block = i / 256;
    float v = Normal();
    switch (block % 8) {
      case 0: v *= 0.02f; break;
      case 1: v *= 1.0f; break;
      case 2: v = (i % 97 == 0) ? v * 8.0f : v * 0.05f; break;  // outliers
      case 3: v = 0.0f; break;
      case 4: v = 0.37f; break;
      case 5: v = fabsf(v) * 0.1f + 0.01f; break;  // all positive
      case 6: v *= 1e-6f; break;
      case 7: v = (float)(Uniform() * 2.0 - 1.0) * 3.0f; break;  // uniform
    }
    x[i] = v;
  }
}

typedef void (*Quantize)(const float*, void*, int64_t);
typedef void (*Dequantize)(const void*, float*, int64_t);

static void Write(FILE* f, const char* name, uint32_t type, size_t block_bytes, int qk,
                  Quantize quantize, Dequantize dequantize, const float* x) {
  const uint32_t bytes = (uint32_t)(kN / qk * block_bytes);
  uint8_t* q = calloc(bytes, 1);
  float* y = calloc(kN, sizeof(float));
  quantize(x, q, kN);
  dequantize(q, y, kN);
  char padded[8] = {0};
  strncpy(padded, name, sizeof padded);
  const uint32_t n = kN;
  fwrite(padded, 1, 8, f);
  fwrite(&type, 4, 1, f);
  fwrite(&n, 4, 1, f);
  fwrite(&bytes, 4, 1, f);
  fwrite(x, sizeof(float), kN, f);
  fwrite(q, 1, bytes, f);
  fwrite(y, sizeof(float), kN, f);
  free(q);
  free(y);
}

#define ENTRY(NAME, lower, TYPE, QK)                                                    \
  Write(f, NAME, TYPE, sizeof(block_##lower), QK, (Quantize)quantize_row_##lower##_ref, \
        (Dequantize)dequantize_row_##lower, x)

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s OUT.bin\n", argv[0]);
    return 2;
  }
  FILE* f = fopen(argv[1], "wb");
  if (f == NULL) {
    perror(argv[1]);
    return 1;
  }
  static float x[kN];
  MakeInput(x);
  fwrite("SGQF", 1, 4, f);
  const uint32_t version = 1, count = 11;
  fwrite(&version, 4, 1, f);
  fwrite(&count, 4, 1, f);
  ENTRY("Q4_0", q4_0, GGML_TYPE_Q4_0, 32);
  ENTRY("Q4_1", q4_1, GGML_TYPE_Q4_1, 32);
  ENTRY("Q5_0", q5_0, GGML_TYPE_Q5_0, 32);
  ENTRY("Q5_1", q5_1, GGML_TYPE_Q5_1, 32);
  ENTRY("Q8_0", q8_0, GGML_TYPE_Q8_0, 32);
  ENTRY("Q2_K", q2_K, GGML_TYPE_Q2_K, 256);
  ENTRY("Q3_K", q3_K, GGML_TYPE_Q3_K, 256);
  ENTRY("Q4_K", q4_K, GGML_TYPE_Q4_K, 256);
  ENTRY("Q5_K", q5_K, GGML_TYPE_Q5_K, 256);
  ENTRY("Q6_K", q6_K, GGML_TYPE_Q6_K, 256);
  ENTRY("Q8_K", q8_K, GGML_TYPE_Q8_K, 256);
  return fclose(f) == 0 ? 0 : 1;
}
