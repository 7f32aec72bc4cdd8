// A/B of the bench's read-bandwidth probe (docs/PERFORMANCE.md, issue 18): before (uint64
// words, 4 accumulators, 32 KiB chunks handed out in turn to 2 threads) and after (one
// contiguous share per thread, AVX-512 loads, 8 accumulators). 1 GiB, THP-advised, touched
// first; best of 7 passes each, alternated 3 times. Needs AVX-512; built by hand:
//   g++ -O3 -pthread bench/probe_ab.cpp -o /tmp/probe_ab && /tmp/probe_ab
#include <immintrin.h>
#include <sys/mman.h>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>
static double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
__attribute__((target("avx512f"))) uint64_t New(const uint8_t* p, size_t bytes) {
  __m512i acc[8];
  for (auto& a : acc) a = _mm512_setzero_si512();
  for (size_t i = 0; i < bytes; i += 512)
    for (int k = 0; k < 8; ++k)
      acc[k] = _mm512_add_epi64(acc[k], _mm512_load_si512(p + i + 64 * k));
  for (int k = 1; k < 8; ++k) acc[0] = _mm512_add_epi64(acc[0], acc[k]);
  alignas(64) uint64_t l[8];
  _mm512_store_si512(l, acc[0]);
  uint64_t s = 0;
  for (auto v : l) s += v;
  return s;
}
int main() {
  const size_t bytes = size_t{1} << 30, n = bytes / 8;
  void* mem = aligned_alloc(1 << 21, bytes);
  madvise(mem, bytes, MADV_HUGEPAGE);
  auto* buf = static_cast<uint64_t*>(mem);
  for (size_t i = 0; i < n; ++i) buf[i] = i;
  std::atomic<uint64_t> sink{0};
  for (int round = 0; round < 3; ++round) {
    double best_old = 0, best_new = 0;
    for (int pass = 0; pass < 7;
         ++pass) {  // old: chunks of 4096 words dealt out by an atomic counter
      std::atomic<size_t> next{0};
      double t0 = Now();
      auto work = [&] {
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (;;) {
          size_t s = next.fetch_add(4096);
          if (s >= n) break;
          size_t e = std::min(n, s + 4096);
          for (size_t i = s; i + 4 <= e; i += 4) {
            a += buf[i];
            b += buf[i + 1];
            c += buf[i + 2];
            d += buf[i + 3];
          }
        }
        sink += a + b + c + d;
      };
      std::thread t(work);
      work();
      t.join();
      best_old = std::max(best_old, bytes / (Now() - t0) / 1e9);
    }
    for (int pass = 0; pass < 7; ++pass) {
      double t0 = Now();
      std::thread t([&] { sink += New(reinterpret_cast<uint8_t*>(buf) + bytes / 2, bytes / 2); });
      sink += New(reinterpret_cast<uint8_t*>(buf), bytes / 2);
      t.join();
      best_new = std::max(best_new, bytes / (Now() - t0) / 1e9);
    }
    std::printf("round %d: old %.2f GB/s, new %.2f GB/s\n", round, best_old, best_new);
  }
  return sink == 42;
}
