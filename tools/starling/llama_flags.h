// llama.cpp's flags on starling's command line. The common ones that CLI11 cannot spell
// (`-np`, `-sys`: a single dash before several letters) become their long names; flags that
// only llama.cpp has (`-ngl`, `-fa`, `-cnv`, `-ctk`, ...) are refused with a line naming the
// flag and what to do instead. CLI11 would read `-ngl 99` as `-n gl` and complain about "gl",
// or read `-ps 0.5` as the prompt "s"; no such guess survives this pass.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace starling::cli {

// Rewrites `args` (argv without the program name) in place, before app.parse. Throws Error
// for a llama.cpp-only flag, and for a single dash before several letters that is no option of
// the chosen subcommand but starts with one of its short options that takes a value.
void TranslateLlamaCppFlags(const CLI::App& app, std::vector<std::string>* args);

}  // namespace starling::cli
