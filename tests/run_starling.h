// Runs the starling executable as a real process, with stdin, stdout, stderr and the exit code.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "test_dir.h"

namespace {

const std::string kStarling = STARLING_BINARY;

struct RunStarlingResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};

inline RunStarlingResult RunStarling(const std::string& args, const std::string& stdin_text = "") {
  // ctest runs tests in parallel processes: give each its own files.
  const std::string dir = ::testing::TempDir() + "/cli_" + std::to_string(::getpid());
  const std::string in = dir + "_in", out = dir + "_out", err = dir + "_err";
  std::ofstream(in, std::ios::binary) << stdin_text;
  const std::string command = kStarling + " " + args + " <" + in + " >" + out + " 2>" + err;
  const int status = std::system(command.c_str());
  auto slurp = [](const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  RunStarlingResult result{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
  for (const std::string& path : {in, out, err}) std::remove(path.c_str());
  return result;
}

// A file in the temp dir, removed when the test program exits.
inline std::string WriteTemp(const std::string& name, const std::string& content) {
  const std::string path = ::testing::TempDir() + "/" + std::to_string(::getpid()) + "_" + name;
  std::ofstream(path, std::ios::binary) << content;
  starling::testing::RemoveAtExit(path);
  return path;
}

}  // namespace
