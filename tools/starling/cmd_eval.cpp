// `starling eval`: exact task accuracy, multiple choice by log-likelihood, win rates judged by
// a reward model (src/eval/eval.h).
#include <memory>
#include <string>

#include "commands.h"
#include "eval/eval.h"

namespace starling::cli {

void RegisterEval(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* e = app.add_subcommand(
      "eval",
      "Evaluate a chat model: --task exact (the synthetic tasks of tools/chat_tasks.py, checked), "
      "mc (multiple choice by log-likelihood, MMLU format) or winrate (A against B, judged by a "
      "reward model) or multiturn (MT-Bench-format questions, each turn judged by a reward model). "
      "Prints a markdown table; --out writes the JSON.\n"
      "Examples:\n"
      "  starling eval --task exact -m runs/sft --data eval.jsonl --template openchat\n"
      "  starling eval --task mc -m model/ --data mmlu.jsonl\n"
      "  starling eval --task winrate -m runs/apa --model-b runs/sft --data prompts.jsonl "
      "--rm runs/rm");
  e->add_option("--task", o->task, "exact, mc, winrate or multiturn")
      ->required()
      ->check(CLI::IsMember({"exact", "mc", "winrate", "multiturn"}));
  e->add_option("-m,--model", o->model, "the model (A for winrate)")->required();
  e->add_option("--model-b", o->model_b, "winrate: the model A is compared with");
  e->add_option("--data", o->data,
                "JSON Lines: task records (exact), {\"question\", \"choices\", \"answer\"} (mc), "
                "prompts (winrate: {\"messages\"} or {\"prompt\"}), {\"turns\": [...]} (multiturn)")
      ->required();
  e->add_option("--template", o->chat_template,
                "chat template (default: the model's own known one)");
  e->add_option("--template-b", o->chat_template_b,
                "model B's chat template (default: --template)");
  e->add_option("--out", o->out, "write the results as JSON");
  e->add_option("--responses", o->responses,
                "exact: write every answer as JSON Lines {\"line\", \"record\", \"response\", "
                "\"correct\", \"true_reward\"} (chit-chat too), e.g. samples for a judge");
  e->add_option("-n,--max-new-tokens", o->max_new_tokens, "longest answer")->capture_default_str();
  e->add_option("--batch", o->batch, "answers decoded together")->capture_default_str();
  e->add_option("--temp", o->temperature, "sampling temperature (0: greedy)")
      ->capture_default_str();
  e->add_option("--seed", o->seed, "sampling seed of the first prompt (+i for prompt i)")
      ->capture_default_str();
  e->add_option("--limit", o->limit, "evaluate the first N records only")->capture_default_str();
  e->add_option("--rm", o->reward.rm, "winrate, multiturn: the judging reward model, in process");
  e->add_option("--rm-url", o->reward.rm_url, "winrate, multiturn: a /v1/rewards server instead");
  e->add_option("--rm-api-key", o->reward.rm_api_key, "bearer token for --rm-url");
  e->add_option("--rm-template", o->reward.rm_template, "the reward model's chat template")
      ->capture_default_str();
  AddThreadsOption(e);
  e->callback([o] { RunEval(*o); });
}

}  // namespace starling::cli
