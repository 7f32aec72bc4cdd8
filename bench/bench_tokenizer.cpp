// Encode throughput (MB/s of UTF-8 input) of our tokenizer against Google's SentencePiece
// on the same text, one thread each. Also checks that both produce the same ids.
//
//   bench_tokenizer TOKENIZER_MODEL [MEGABYTES=8] [REPS=5]
#include <sentencepiece_processor.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "text_corpus.h"
#include "tokenizer/load.h"

namespace {

// A mixed document: mostly English prose and code (what chat prompts hold), with the
// corpus generator's scripts, emoji and whitespace runs mixed in.
std::string MakeDocument(size_t bytes) {
  static const char* const kProse[] = {
      "The reward model scores each response, and the policy is tuned to prefer the ones "
      "that score higher. ",
      "In 2023, Starling-7B was trained with reinforcement learning from AI feedback on the "
      "Nectar dataset of 183,000 chat prompts, each with seven ranked responses.\n",
      "def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n    pivot = xs[0]\n"
      "    return quicksort([x for x in xs[1:] if x < pivot]) + [pivot] + "
      "quicksort([x for x in xs[1:] if x >= pivot])\n",
      "for (int i = 0; i < n; ++i) {\n  sum += a[i] * b[i];\n}\n",
      "Tokenization splits text into pieces; byte fallback keeps every string encodable. ",
  };
  starling::testing::CorpusGenerator generator(12345);
  std::string doc;
  size_t i = 0;
  while (doc.size() < bytes) {
    doc += kProse[i % 5];
    if (i % 4 == 3) doc += generator.Next(20, false) + "\n";
    ++i;
  }
  return doc;
}

template <typename F>
double MedianSeconds(int reps, F&& run) {
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    run();
    times.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s TOKENIZER_MODEL [MEGABYTES=8] [REPS=5]\n", argv[0]);
    return 2;
  }
  const double megabytes = argc > 2 ? std::atof(argv[2]) : 8.0;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 5;
  const std::string document = MakeDocument(static_cast<size_t>(megabytes * 1e6));
  // Split into chat-message-sized lines, as a server or a dataset tokenizer sees text.
  std::vector<std::string> lines;
  for (size_t pos = 0; pos < document.size();) {
    size_t end = document.find('\n', pos);
    end = end == std::string::npos ? document.size() : end + 1;
    lines.push_back(document.substr(pos, end - pos));
    pos = end;
  }

  const starling::Tokenizer ours = starling::LoadSentencePieceTokenizer(argv[1]);
  sentencepiece::SentencePieceProcessor reference;
  if (!reference.Load(argv[1]).ok()) return 1;

  for (const bool whole : {true, false}) {
    std::vector<int32_t> our_ids;
    std::vector<int> ref_ids;
    const double ours_s = MedianSeconds(reps, [&] {
      our_ids.clear();
      if (whole) {
        ours.EncodeText(document, &our_ids);
      } else {
        for (const std::string& line : lines) ours.EncodeText(line, &our_ids);
      }
    });
    const double ref_s = MedianSeconds(reps, [&] {
      ref_ids.clear();
      if (whole) {
        reference.Encode(document, &ref_ids);
      } else {
        std::vector<int> part;
        for (const std::string& line : lines) {
          reference.Encode(line, &part);
          ref_ids.insert(ref_ids.end(), part.begin(), part.end());
        }
      }
    });
    const bool same = std::equal(our_ids.begin(), our_ids.end(), ref_ids.begin(), ref_ids.end());
    const double mb = static_cast<double>(document.size()) / 1e6;
    std::printf(
        "{\"test\": \"encode_%s\", \"megabytes\": %.2f, \"tokens\": %zu, \"reps\": %d, "
        "\"starling_mb_per_s\": %.2f, \"sentencepiece_mb_per_s\": %.2f, \"ratio\": %.2f, "
        "\"same_ids\": %s}\n",
        whole ? "document" : "lines", mb, our_ids.size(), reps, mb / ours_s, mb / ref_s,
        ref_s / ours_s, same ? "true" : "false");
    if (!same) return 1;
  }
  return 0;
}
