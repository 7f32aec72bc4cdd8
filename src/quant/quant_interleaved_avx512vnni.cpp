// The interleaved layouts' tiles with VNNI integer steps in the EVEX encoding (AVX-512 VL +
// VNNI: Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4), 256 bits wide with 32 vector
// registers.
#define STARLING_TILE_TARGET \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define STARLING_TILE_VNNI 1
#define STARLING_TILE_Q8_0_TOKENS 8
#define STARLING_TILE_DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#define STARLING_TILE_NAME(f) f##_Avx512Vnni
#include "quant/interleaved_tiles.h"
