// Matmul kernel throughput, one thread, in G multiply-adds per second, for every weight format
// as the model loads it (quantized matrices through LoadForMatMul: interleaved eight rows at a
// time):
//   pp:   4096 x 4096 (Mistral-7B's q/o projections) against 64 tokens: prompt processing,
//         activation quantization included
//   tg:   28672 x 4096 (two Mistral-7B FFN matrices, larger than L3) against 1 token: the
//         weights streamed from memory, as in generation, with the GB/s of weights read
//   tg L2: 256 x 4096 against 1 token, the weights in cache: the one-token kernel's own speed
//         (generation is bound by the kernel, not the memory, where this is not well above tg)
//
//   bench_matmul [REPS=7] [FORMAT...]   (FORMAT: q4_0, q2_k, f16, ...; default all)
#include <strings.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/dot.h"
#include "model/gguf_export.h"
#include "quant/quant.h"
#include "quant/weight.h"

namespace starling {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Format {
  WeightFormat format;
  const char* name;
};

// Row-major bytes of a random [rows, cols] matrix in `format`.
std::vector<uint8_t> RandomMatrix(WeightFormat format, int64_t rows, int64_t cols,
                                  std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> row(static_cast<size_t>(cols));
  const size_t row_bytes = WeightRowBytes(format, cols);
  std::vector<uint8_t> out(row_bytes * static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    for (float& v : row) v = normal(rng);
    EncodeWeightRow(format, row.data(), cols,
                    reinterpret_cast<char*>(out.data()) + static_cast<size_t>(r) * row_bytes);
  }
  return out;
}

// Median G MAC/s of `reps` runs of MatMul(w, x[tokens]), each repeated to take >= 50 ms.
double MeasureGmacs(const WeightMatrix& w, int64_t tokens, int reps) {
  std::vector<float> x(static_cast<size_t>(tokens * w.cols), 0.5f);
  std::vector<float> out(static_cast<size_t>(tokens * w.rows));
  MatMul(w, x.data(), tokens, out.data());  // warm up
  std::vector<double> rates;
  for (int r = 0; r < reps; ++r) {
    int calls = 0;
    const double start = Now();
    double elapsed = 0;
    do {
      MatMul(w, x.data(), tokens, out.data());
      ++calls;
      elapsed = Now() - start;
    } while (elapsed < 0.05);
    rates.push_back(static_cast<double>(w.rows * w.cols * tokens) * calls / elapsed / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace
}  // namespace starling

int main(int argc, char** argv) {
  using namespace starling;
  const int reps = argc > 1 ? std::atoi(argv[1]) : 7;
  if (reps < 1) {
    std::fprintf(stderr, "usage: bench_matmul [REPS=7] [FORMAT...]\n");
    return 2;
  }
  // The formats named after REPS (any case); all when none is.
  auto wanted = [&](const char* name) {
    if (argc <= 2) return true;
    for (int i = 2; i < argc; ++i) {
      if (strcasecmp(argv[i], name) == 0) return true;
    }
    return false;
  };
  ThreadPool::SetGlobalThreads(1);
  std::printf("one thread, SIMD level %s; G multiply-adds per second (median of %d)\n",
              DotRowImplementation(), reps);
  std::printf("%-6s %14s %14s %10s %12s\n", "format", "pp 64 tokens", "tg 1 token", "tg GB/s",
              "tg L2");
  const Format formats[] = {
      {WeightFormat::kQ4_0, "Q4_0"}, {WeightFormat::kQ8_0, "Q8_0"}, {WeightFormat::kQ4_1, "Q4_1"},
      {WeightFormat::kQ5_0, "Q5_0"}, {WeightFormat::kQ5_1, "Q5_1"}, {WeightFormat::kQ2_K, "Q2_K"},
      {WeightFormat::kQ3_K, "Q3_K"}, {WeightFormat::kQ4_K, "Q4_K"}, {WeightFormat::kQ5_K, "Q5_K"},
      {WeightFormat::kQ6_K, "Q6_K"}, {WeightFormat::kF16, "F16"}};
  std::mt19937 rng(1);
  for (const Format& f : formats) {
    if (!wanted(f.name)) continue;
    const int64_t cols = 4096;
    // 64 random rows (quantizing is slow), repeated: values do not change speed.
    const std::vector<uint8_t> block = RandomMatrix(f.format, 64, cols, rng);
    double rate[3] = {}, gbs = 0;
    for (int test = 0; test < 3; ++test) {
      const int64_t rows = test == 0 ? 4096 : test == 1 ? 28672 : 256;
      const int64_t tokens = test == 0 ? 64 : 1;
      std::vector<uint8_t> bytes(block.size() * static_cast<size_t>(rows / 64));
      for (size_t at = 0; at < bytes.size(); at += block.size()) {
        std::copy(block.begin(), block.end(), bytes.begin() + static_cast<std::ptrdiff_t>(at));
      }
      WeightMatrix w{f.format, bytes.data(), rows, cols};
      HugePageBuffer loaded;
      if (LoadsForMatMul(w)) w = LoadForMatMul(w, loaded);
      rate[test] = MeasureGmacs(w, tokens, reps);
      if (test == 1) {
        gbs = rate[test] / static_cast<double>(rows * cols) * static_cast<double>(bytes.size());
      }
    }
    std::printf("%-6s %14.1f %14.1f %10.1f %12.1f\n", f.name, rate[0], rate[1], gbs, rate[2]);
  }
  return 0;
}
