// Helpers of the trainers' end-to-end tests: a run's JSON Lines log and a fixture's tensors.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "formats/safetensors.h"

namespace starling::testing {

// The log's lines (blank lines skipped), each expected to have every key of `required`.
inline std::vector<nlohmann::json> ReadLog(const std::string& path,
                                           std::initializer_list<const char*> required = {
                                               "step", "loss", "lr", "grad_norm", "tokens_per_s"}) {
  std::ifstream f(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(f, line);) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    lines.push_back(nlohmann::json::parse(line));
    for (const char* key : required) {
      EXPECT_TRUE(lines.back().contains(key)) << path << ": " << key << " in " << line;
    }
  }
  return lines;
}

// A float64 tensor of a fixture (empty, with a failure, when absent or of another type).
inline std::vector<double> ReadF64(const SafetensorsFile& f, const std::string& name) {
  const SafetensorsTensor* t = f.Find(name);
  EXPECT_NE(t, nullptr) << f.source() << ": no " << name;
  if (t == nullptr) return {};
  EXPECT_EQ(t->dtype, DType::kF64) << name;
  const std::string_view bytes = f.Data(*t);
  std::vector<double> out(bytes.size() / sizeof(double));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(double));
  return out;
}

// A fixture tensor's bytes as T (no dtype check); throws when the tensor is absent.
template <typename T>
std::vector<T> ReadTensor(const SafetensorsFile& f, const std::string& name) {
  const SafetensorsTensor* t = f.Find(name);
  if (t == nullptr) throw std::runtime_error(f.source() + ": no tensor " + name);
  const std::string_view bytes = f.Data(*t);
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

// Replaces every occurrence of `from` in `s` by `to`.
inline std::string ReplaceAll(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
  return s;
}

// A fixture's command ("starling train ... tests/data/... --out DIR --log LOG", written from the
// repository root) as arguments for RunStarling: data paths under `root`, DIR and LOG replaced.
inline std::string FixtureCommandArgs(const std::string& command, const std::string& root,
                                      const std::string& out, const std::string& log) {
  std::string args = command.substr(std::string("starling ").size());
  args = ReplaceAll(args, " tests/data/", " " + root + "/tests/data/");
  args = ReplaceAll(args, "--out DIR", "--out " + out);
  return ReplaceAll(args, "--log LOG", "--log " + log);
}

}  // namespace starling::testing
