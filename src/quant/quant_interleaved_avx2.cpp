// The interleaved layouts' tiles with AVX2 integer steps (maddubs, int16 sums, madd): the level
// of every x86-64 CPU since Haswell and Zen 1.
#define STARLING_TILE_TARGET __attribute__((target("avx2,fma,f16c")))
#define STARLING_TILE_VNNI 0
#define STARLING_TILE_Q8_0_TOKENS 4
#define STARLING_TILE_NAME(f) f##_Avx2
#include "quant/interleaved_tiles.h"
