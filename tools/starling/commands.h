// The starling CLI: one executable, one file per subcommand. Each Register* function adds
// its subcommand to the app and sets the callback that runs it.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "core/dtype.h"
#include "generate/loaded_model.h"

namespace starling::cli {

void RegisterTokenize(CLI::App& app);
void RegisterDetokenize(CLI::App& app);
void RegisterGenerate(CLI::App& app);
void RegisterChat(CLI::App& app);
void RegisterPerplexity(CLI::App& app);
void RegisterInfo(CLI::App& app);
void RegisterBench(CLI::App& app);
void RegisterConvert(CLI::App& app);  // quantize, make-model, add-tokens
void RegisterReward(CLI::App& app);   // score, rank
void RegisterServe(CLI::App& app);
void RegisterTrain(CLI::App& app);  // train pretrain/sft, bench-train
void RegisterPlot(CLI::App& app);
void RegisterEval(CLI::App& app);
void RegisterPull(CLI::App& app);

// A model reference given as ORG/NAME[@REVISION][/FILE] resolved in the local Hugging Face
// cache (hub/hf_cache.h) while the command line is parsed; a path that exists stays as it is.
void AddModelResolution(CLI::Option* option);
// AddModelResolution on every --model, --rm and --tokenizer option of every subcommand: called
// once after all are registered, so that each subcommand that takes a model takes an id too.
void ResolveModelOptions(CLI::App& app);

// Shared option helpers.
// -t/--threads for the compute thread pool, set before any kernel runs. The value goes
// straight to ThreadPool::SetGlobalThreads: no storage that must outlive the parse.
void AddThreadsOption(CLI::App* cmd);
// A value that must not be empty: `-m ''` once ran the embedded model without a word.
CLI::Validator NonEmpty();
// -c/--ctx checked before anything is allocated: positive, at most the model's
// max_position_embeddings, and `sequences` KV caches of that length within the machine's memory.
void CheckContext(const LoadedModel& m, int64_t context, int64_t sequences, DType kv_type);
// --kv-type f32|f16: the KV cache element type (Session's kv_type); f32 unless given.
void AddKvTypeOption(CLI::App* cmd, DType* kv_type);
// Ids given as separate arguments, or as one argument "1 2 3" or "1,2,3" or "[1, 2, 3]".
std::vector<int32_t> ParseIds(const std::vector<std::string>& args);

// --ids and --messages mean the same in every subcommand that takes them (tokenize, score):
// token ids used exactly as given (ParseIds), and a conversation.
inline constexpr const char* kIdsHelp =
    "token ids, used exactly as given (no BOS added): separate arguments or one list ('1 2 3', "
    "'1,2,3', '[1, 2, 3]')";
inline constexpr const char* kMessagesHelp =
    "a conversation: a JSON list of {\"role\", \"content\"} messages, written out (starting "
    "with '[') or in a file ('-': stdin)";
// --messages' value: the JSON itself when it starts with '[', else a file ("-": stdin).
std::vector<ChatMessage> ReadMessages(const std::string& value);

}  // namespace starling::cli
