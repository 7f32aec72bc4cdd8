// The instruction limit that prompt processing's integer work runs against, measured on this
// core: the clock (a chain of dependent 64-bit multiplies, 3 cycles each on Zen 3-5 and recent
// Intel cores) and the throughput of vpdpbusd (u8 x s8, four products per int32 lane) with 12
// independent accumulators, 256-bit (AVX-VNNI or AVX-512 VL) and 512-bit (AVX-512 VNNI), as
// multiply-adds per cycle. docs/PERFORMANCE.md sets the matmuls' MAC/cycle against these.
//   bench_vnni_peak [IMUL_LATENCY=3]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "kernels/dot.h"

namespace {

template <typename Fn>
double Seconds(Fn&& fn) {
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

constexpr long kSteps = 200'000'000;

// The clock in GHz from kSteps dependent multiplies of `latency` cycles each.
double ClockGhz(int latency) {
  uint64_t x = 3;
  const double s = Seconds([&] {
    for (long i = 0; i < kSteps; ++i) asm volatile("imul %0, %0" : "+r"(x));
  });
  return latency * static_cast<double>(kSteps) / s / 1e9;
}

// vpdpbusd instructions per second, 12 independent chains (the loop written out per width:
// a lambda would not inherit the target attribute).
#define STARLING_DPBUSD_LOOP(Vec, dpbusd)                                                          \
  double best = 1e30;                                                                              \
  for (int rep = 0; rep < 5; ++rep) {                                                              \
    const auto t0 = std::chrono::steady_clock::now();                                              \
    Vec acc[12] = {};                                                                              \
    Vec a{}, b{};                                                                                  \
    asm volatile("" : "+v"(a), "+v"(b));                                                           \
    for (long i = 0; i < kSteps / 12; ++i) {                                                       \
      for (auto& v : acc) v = dpbusd(v, a, b);                                                     \
      for (auto& v : acc) asm volatile("" : "+v"(v));                                              \
    }                                                                                              \
    best = std::min(best,                                                                          \
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()); \
  }                                                                                                \
  return 12.0 * (kSteps / 12) / best

__attribute__((target("avx2,avxvnni"))) double YmmPerSecond() {
  STARLING_DPBUSD_LOOP(__m256i, _mm256_dpbusd_avx_epi32);
}

__attribute__((target("avx512f,avx512vnni"))) double ZmmPerSecond() {
  STARLING_DPBUSD_LOOP(__m512i, _mm512_dpbusd_epi32);
}

}  // namespace

int main(int argc, char** argv) {
  const int latency = argc > 1 ? std::atoi(argv[1]) : 3;
  const double ghz = ClockGhz(latency);
  std::printf("clock: %.2f GHz (imul chain, %d cycles per step)\n", ghz, latency);
  if (starling::CpuHasAvxVnni()) {
    const double per_s = YmmPerSecond();
    std::printf("vpdpbusd ymm: %.2f per cycle = %.1f MAC/cycle\n", per_s / (ghz * 1e9),
                32 * per_s / (ghz * 1e9));
  }
  if (starling::CpuHasAvx512Vnni()) {
    const double per_s = ZmmPerSecond();
    std::printf("vpdpbusd zmm: %.2f per cycle = %.1f MAC/cycle\n", per_s / (ghz * 1e9),
                64 * per_s / (ghz * 1e9));
  }
  return 0;
}
