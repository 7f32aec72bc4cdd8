// The interleaved layouts' tiles with VNNI integer steps in the VEX encoding (AVX-VNNI: Alder
// Lake and later, Zen 5), for CPUs that have it without AVX-512.
#define STARLING_TILE_TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#define STARLING_TILE_VNNI 1
#define STARLING_TILE_Q8_0_TOKENS 6
#define STARLING_TILE_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#define STARLING_TILE_NAME(f) f##_AvxVnni
#include "quant/interleaved_tiles.h"
