// `starling bench`: prompt processing and generation speed, in the spirit of llama-bench,
// with generation measured against the machine's memory read bandwidth (which the bench
// measures itself): generating a token reads every weight once, so bytes/token x tokens/s
// over the read bandwidth is how close to the physical limit the engine runs.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "core/memory.h"
#include "core/thread_pool.h"
#include "embedded_model.h"
#include "kernels/dot.h"

namespace starling::cli {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Stats {
  double median, min, max;
};

Stats Summarize(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return {values[values.size() / 2], values.front(), values.back()};
}

// Sums of `bytes` of memory (a multiple of 512) read as kStreams equal stretches in lockstep,
// with the widest loads the CPU has and 8 independent accumulators, so that neither the add
// latency nor the load width bounds the rate: the memory system does. Returns a value that
// depends on every byte.
template <int kStreams>
__attribute__((target("avx512f"))) uint64_t SumAvx512(const uint8_t* p, size_t bytes) {
  constexpr int kLoads = 8 / kStreams;  // 64-byte loads per stream and step
  const size_t part = bytes / kStreams;
  __m512i acc[8];
  for (__m512i& a : acc) a = _mm512_setzero_si512();
  for (size_t i = 0; i < part; i += 64 * kLoads) {
    for (int s = 0; s < kStreams; ++s) {
      for (int k = 0; k < kLoads; ++k) {
        acc[s * kLoads + k] =
            _mm512_add_epi64(acc[s * kLoads + k], _mm512_load_si512(p + s * part + i + 64 * k));
      }
    }
  }
  for (int k = 1; k < 8; ++k) acc[0] = _mm512_add_epi64(acc[0], acc[k]);
  // Stored and added here: gcc 12's _mm512_reduce_add_epi64 trips -Wuninitialized.
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, acc[0]);
  uint64_t sum = 0;
  for (const uint64_t lane : lanes) sum += lane;
  return sum;
}

template <int kStreams>
__attribute__((target("avx2"))) uint64_t SumAvx2(const uint8_t* p, size_t bytes) {
  constexpr int kLoads = 8 / kStreams;  // 32-byte loads per stream and step
  const size_t part = bytes / kStreams;
  __m256i acc[8];
  for (__m256i& a : acc) a = _mm256_setzero_si256();
  for (size_t i = 0; i < part; i += 32 * kLoads) {
    for (int s = 0; s < kStreams; ++s) {
      for (int k = 0; k < kLoads; ++k) {
        acc[s * kLoads + k] = _mm256_add_epi64(
            acc[s * kLoads + k],
            _mm256_load_si256(reinterpret_cast<const __m256i*>(p + s * part + i + 32 * k)));
      }
    }
  }
  for (int k = 1; k < 8; ++k) acc[0] = _mm256_add_epi64(acc[0], acc[k]);
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[0]);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

template <int kStreams>
uint64_t SumScalar(const uint8_t* p, size_t bytes) {
  constexpr int kLoads = 8 / kStreams;       // 8-byte loads per stream and step
  const size_t part = bytes / kStreams / 8;  // in words
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  uint64_t acc[8] = {};
  for (size_t i = 0; i < part; i += kLoads) {
    for (int s = 0; s < kStreams; ++s) {
      for (int k = 0; k < kLoads; ++k) acc[s * kLoads + k] += w[s * part + i + k];
    }
  }
  return acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
}

// The read loops the probe uses on this CPU (1, 2 and 4 streams per thread), and their name for
// the report.
constexpr int kStreamCounts[] = {1, 2, 4};
struct ReadLoop {
  uint64_t (*sum[3])(const uint8_t*, size_t);
  const char* name;
};
ReadLoop BestReadLoop() {
  if (__builtin_cpu_supports("avx512f")) {
    return {{SumAvx512<1>, SumAvx512<2>, SumAvx512<4>}, "avx512"};
  }
  if (__builtin_cpu_supports("avx2")) return {{SumAvx2<1>, SumAvx2<2>, SumAvx2<4>}, "avx2"};
  return {{SumScalar<1>, SumScalar<2>, SumScalar<4>}, "scalar"};
}

struct Bandwidth {
  double gb_per_s = 0;
  int streams = 0;  // per thread, of the best pass
};

// Read bandwidth in GB/s, the roofline generation is compared with: 1 GiB on huge pages (as the
// loaded weights are, model/LoadForMatMul), touched first; each thread of the pool reads one
// contiguous share with BestReadLoop(), as 1, 2 and 4 streams in lockstep (one core's hardware
// prefetchers may keep too few lines in flight for one stream: on the Zen 5 host of
// docs/PERFORMANCE.md two streams read up to 2x one), 5 passes each; the best pass (on a shared
// host other work only ever slows a pass down, so the fastest is the closest to what the memory
// system delivers).
Bandwidth MeasureReadBandwidth(ThreadPool& pool) {
  const size_t bytes = size_t{1} << 30;
  HugePageBuffer pages(bytes);
  uint8_t* buffer = pages.data();
  const auto threads = static_cast<int64_t>(pool.size());
  // Each share a multiple of 512 bytes (one step of the widest loop, whatever the streams).
  const size_t share = bytes / static_cast<size_t>(threads) / 512 * 512;
  pool.ParallelFor(threads, 1, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) {
      std::memset(buffer + static_cast<size_t>(t) * share, static_cast<int>(t + 1), share);
    }
  });
  const ReadLoop loop = BestReadLoop();
  std::vector<uint64_t> sink(static_cast<size_t>(threads) * 8, 0);
  Bandwidth best;
  for (int pass = 0; pass < 5; ++pass) {
    for (int i = 0; i < 3; ++i) {
      const double start = Now();
      pool.ParallelFor(threads, 1, [&](int64_t begin, int64_t end, int) {
        for (int64_t t = begin; t < end; ++t) {
          sink[static_cast<size_t>(t) * 8] +=
              loop.sum[i](buffer + static_cast<size_t>(t) * share, share);
        }
      });
      const double rate =
          static_cast<double>(share) * static_cast<double>(threads) / (Now() - start) / 1e9;
      if (rate > best.gb_per_s) best = {rate, kStreamCounts[i]};
    }
  }
  if (std::accumulate(sink.begin(), sink.end(), uint64_t{0}) == 42) std::printf(" ");
  return best;
}

struct BenchFlags {
  std::string model;
  int32_t prompt = 512;
  int32_t generate = 128;
  int threads = 0;
  int reps = 5;
  DType kv_type = DType::kF32;
  bool json = false;
};

void RunBench(const BenchFlags& f) {
  if (f.reps < 1) Fail("-r must be at least 1");
  if (f.prompt < 0 || f.generate < 0) Fail("-p and -n must not be negative");
  ThreadPool::SetGlobalThreads(f.threads);
  ThreadPool& pool = ThreadPool::Global();
  const LoadedModel m = LoadModelOrDefault(f.model);
  const ModelConfig& c = m.model->config();
  Bandwidth bandwidth;  // measured around the generation test
  // Bytes one generated token reads: every weight, except that only one row of an untied
  // embedding table is read (a tied one is read whole by the output head).
  uint64_t bytes_per_token = m.model->weight_bytes();
  if (!c.tie_word_embeddings) {
    const WeightMatrix& e = m.model->embedding();
    bytes_per_token -= static_cast<uint64_t>(e.rows - 1) * e.row_bytes();
  }
  std::vector<int32_t> tokens(static_cast<size_t>(std::max(f.prompt, 1)));
  for (size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<int32_t>((i * 7919 + 3) % c.vocab_size);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  Session session(*m.model, f.prompt + f.generate + 1, f.kv_type);
  auto report = [&](const std::string& kind, int32_t n, const std::vector<double>& rates,
                    bool generation) {
    const Stats s = Summarize(rates);
    const double gbs = s.median * static_cast<double>(bytes_per_token) / 1e9;
    if (f.json) {
      // Through nlohmann: a model path with quotes, backslashes or control characters (or
      // bytes that are not UTF-8, replaced) still makes valid JSON.
      nlohmann::ordered_json j;
      j["test"] = kind + std::to_string(n);
      j["model"] = m.source;
      j["threads"] = pool.size();
      j["reps"] = f.reps;
      j["simd"] = DotRowImplementation();
      j["kv_type"] = DTypeName(f.kv_type);
      j["tokens_per_s_median"] = s.median;
      j["tokens_per_s_min"] = s.min;
      j["tokens_per_s_max"] = s.max;
      if (generation) {
        j["bytes_per_token"] = bytes_per_token;
        j["gb_per_s"] = gbs;
        j["bandwidth_gb_per_s"] = bandwidth.gb_per_s;
        j["bandwidth_probe"] = BestReadLoop().name;
        j["bandwidth_probe_streams"] = bandwidth.streams;
        j["ratio_to_bandwidth"] = gbs / bandwidth.gb_per_s;
      }
      const std::string line =
          j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
      std::fwrite(line.data(), 1, line.size(), stdout);
    } else {
      std::printf("%-6s %4d  %9.2f tok/s (min %.2f, max %.2f)", kind.c_str(), n, s.median, s.min,
                  s.max);
      if (generation) {
        std::printf("  %.2f GB/s of %.2f GB/s read bandwidth (%s probe, %d stream%s; %.0f%%)", gbs,
                    bandwidth.gb_per_s, BestReadLoop().name, bandwidth.streams,
                    bandwidth.streams == 1 ? "" : "s", 100 * gbs / bandwidth.gb_per_s);
      }
      std::printf("\n");
    }
    std::fflush(stdout);
  };
  if (!f.json) {
    std::printf(
        "model %s: %.2f GiB of weights, %.2f MB read per generated token; %d threads, %s; %s KV "
        "cache\n",
        m.source.c_str(), static_cast<double>(m.model->weight_bytes()) / (1ull << 30),
        static_cast<double>(bytes_per_token) / 1e6, pool.size(), DotRowImplementation(),
        DTypeName(f.kv_type));
  }
  if (f.prompt > 0) {
    std::vector<double> rates;
    for (int r = 0; r < f.reps; ++r) {
      session.Truncate(0);
      const double start = Now();
      session.Forward(tokens, logits);
      rates.push_back(f.prompt / (Now() - start));
    }
    report("pp", f.prompt, rates, false);
  }
  if (f.generate > 0) {
    // Just before and just after the generation runs, so that the limit is the host's at the
    // time (its bandwidth moves from minute to minute when shared); the higher of the two.
    bandwidth = MeasureReadBandwidth(pool);
    std::vector<double> rates;
    for (int r = 0; r < f.reps; ++r) {
      session.Truncate(0);
      session.Forward(std::span(tokens).first(1), logits);
      const double start = Now();
      for (int32_t i = 0; i < f.generate; ++i) {
        const int32_t token = tokens[static_cast<size_t>(i + 1) % tokens.size()];
        session.Forward(std::span(&token, 1), logits);
      }
      rates.push_back(f.generate / (Now() - start));
    }
    const Bandwidth after = MeasureReadBandwidth(pool);
    if (after.gb_per_s > bandwidth.gb_per_s) bandwidth = after;
    report("tg", f.generate, rates, true);
  }
}

}  // namespace

void RegisterBench(CLI::App& app) {
  auto f = std::make_shared<BenchFlags>();
  CLI::App* cmd =
      app.add_subcommand("bench",
                         "Prompt-processing and generation speed, and generation's share of the "
                         "measured memory bandwidth");
  cmd->add_option("-m,--model", f->model,
                  "a Hugging Face directory, a GGUF file or a cached ORG/NAME");
  cmd->add_option("-p,--n-prompt", f->prompt, "prompt tokens (pp test)")->capture_default_str();
  cmd->add_option("-n,--n-gen", f->generate, "generated tokens (tg test)")->capture_default_str();
  cmd->add_option("-t,--threads", f->threads, "threads (default: one per core)");
  cmd->add_option("-r,--repetitions", f->reps, "repetitions")->capture_default_str();
  AddKvTypeOption(cmd, &f->kv_type);
  cmd->add_flag("--json", f->json, "print one JSON object per test, a line each");
  cmd->footer(
      "Examples:\n"
      "  starling bench -m model.gguf -p 512 -n 128 -t 8 -r 5\n"
      "  starling make-model /tmp/m7b.gguf --preset 7b --type q4_k_m && starling bench -m "
      "/tmp/m7b.gguf --json\n"
      "Figures for this machine and others: docs/PERFORMANCE.md.");
  cmd->callback([f] { RunBench(*f); });
}

}  // namespace starling::cli
