// The starling CLI: one executable, one file per subcommand. Each Register* function adds
// its subcommand to the app and sets the callback that runs it.
#pragma once

#include <CLI/CLI.hpp>

namespace starling::cli {

void RegisterTokenize(CLI::App& app);
void RegisterDetokenize(CLI::App& app);
void RegisterGenerate(CLI::App& app);
void RegisterChat(CLI::App& app);
void RegisterPerplexity(CLI::App& app);
void RegisterInfo(CLI::App& app);
void RegisterBench(CLI::App& app);
void RegisterConvert(CLI::App& app);  // quantize, make-model

}  // namespace starling::cli
