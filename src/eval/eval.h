// `starling eval`: the evaluations people run on chat models, as JSON and a markdown table.
//   exact    task accuracy with the checker of the synthetic chat tasks (task_check.h), per
//            task and difficulty, greedy answers from the batched engine;
//   mc       multiple choice by the log-likelihood of each choice's letter after the question,
//            on MMLU-format records, as lm-evaluation-harness scores MMLU (zero-shot);
//   winrate  the responses of model A and model B to the same prompts judged by a reward model
//            (in process or /v1/rewards), AlpacaEval style: A's win rate (ties count half) with
//            a 95% confidence interval, and both mean lengths beside it;
//   multiturn  MT-Bench-format questions (two or more turns), each turn answered in the
//            conversation so far and the conversation up to it judged by the reward model.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "reward/reward_source.h"

namespace starling {

struct EvalOptions {
  std::string task;     // exact | mc | winrate
  std::string model;    // -m: model A
  std::string model_b;  // --model-b (winrate)
  std::string data;     // --data: tasks (exact), questions (mc), prompts (winrate)
  std::string chat_template, chat_template_b;  // default: each model's own known template
  std::string out;                             // --out: the JSON results (also printed as a table)
  // --responses (exact): every answer as JSON Lines {"line", "record", "response", "correct",
  // "true_reward"}, chit-chat too (correct null): samples for a judge to rank.
  std::string responses;
  int32_t max_new_tokens = 64;
  int64_t batch = 16;        // sequences decoded together
  float temperature = 0.0f;  // 0: greedy
  uint64_t seed = 1;
  int64_t limit = 0;           // the first N records only (0: all)
  RewardSourceOptions reward;  // winrate's judge
};

// Runs the evaluation, prints its markdown table to stdout, writes --out, returns the JSON.
nlohmann::json RunEval(const EvalOptions& options);

// The Wilson score interval of k successes in n at 95%: {low, high}.
std::pair<double, double> WilsonInterval(int64_t k, int64_t n);

}  // namespace starling
