// starling: run, serve and tune Starling/OpenChat-style chat models. Thin: parses the
// command line and calls the library; every error reaches the user as one clear line.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "core/signals.h"
#include "llama_flags.h"

int main(int argc, char** argv) {
  // First, before any thread (the compute pool starts while a model loads): SIGINT/SIGTERM go
  // to one thread, so that `serve` can shut down in order whatever started before it.
  starling::StartSignalThread();
  CLI::App app{"starling: a native toolchain for Starling/OpenChat-style chat models"};
  app.set_version_flag("--version", "starling 0.1.0");
  app.require_subcommand(1);
  starling::cli::RegisterTokenize(app);
  starling::cli::RegisterDetokenize(app);
  starling::cli::RegisterGenerate(app);
  starling::cli::RegisterChat(app);
  starling::cli::RegisterPerplexity(app);
  starling::cli::RegisterInfo(app);
  starling::cli::RegisterBench(app);
  starling::cli::RegisterConvert(app);
  starling::cli::RegisterReward(app);
  starling::cli::RegisterServe(app);
  starling::cli::RegisterTrain(app);
  starling::cli::RegisterPlot(app);
  starling::cli::RegisterEval(app);
  starling::cli::RegisterPull(app);
  starling::cli::ResolveModelOptions(app);
  try {
    // llama.cpp's spellings first (llama_flags.h), then CLI11 on the result.
    std::vector<std::string> args(argv + 1, argv + argc);
    starling::cli::TranslateLlamaCppFlags(app, &args);
    std::vector<char*> translated = {argv[0]};
    for (std::string& arg : args) translated.push_back(arg.data());
    app.parse(static_cast<int>(translated.size()), translated.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const starling::Error& e) {
    std::fprintf(stderr, "starling: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "starling: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
