// The interleaved layouts' tiles with VNNI integer steps in the EVEX encoding (AVX-512 VL +
// VNNI: Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4 and 5): 256-bit tiles with 32 vector
// registers, and 512-bit block sums for all four layouts (STARLING_TILE_ZMM).
#define STARLING_TILE_TARGET \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define STARLING_TILE_VNNI 1
#define STARLING_TILE_Q8_0_TOKENS 8
#define STARLING_TILE_DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#define STARLING_TILE_ZMM 1
#define STARLING_TILE_NAME(f) f##_Avx512Vnni
#include "quant/interleaved_tiles.h"
