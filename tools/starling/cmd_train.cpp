// `starling train pretrain` (next-token training on text) and `starling bench-train` (the
// speed of a full training step on random data).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "core/file.h"
#include "core/thread_pool.h"
#include "kernels/dot.h"
#include "kernels/gemm.h"
#include "model/hf_config.h"
#include "train/distributed.h"
#include "train/dpo_train.h"
#include "train/optimizer.h"
#include "train/policy_train.h"
#include "train/pretrain.h"
#include "train/reward_train.h"
#include "train/step.h"

namespace starling::cli {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// llama2.c's Llama shapes (tied classifier), by name.
ModelConfig TrainPreset(const std::string& name) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.tie_word_embeddings = true;
  c.max_position_embeddings = 1024;
  c.eos_token_ids = {2};
  if (name == "stories260K") {
    c.vocab_size = 512, c.hidden_size = 64, c.num_layers = 5, c.num_heads = 8, c.num_kv_heads = 4;
    c.intermediate_size = 172;
  } else if (name == "stories15M") {
    c.vocab_size = 32000, c.hidden_size = 288, c.num_layers = 6, c.num_heads = 6;
    c.num_kv_heads = 6, c.intermediate_size = 768;
  } else if (name == "stories42M") {
    c.vocab_size = 32000, c.hidden_size = 512, c.num_layers = 8, c.num_heads = 8;
    c.num_kv_heads = 8, c.intermediate_size = 1376;
  } else {
    Fail("unknown preset '", name, "' (known: stories260K, stories15M, stories42M; or --config)");
  }
  c.head_dim = c.hidden_size / c.num_heads;
  c.rope_dim = c.head_dim;
  return c;
}

// GFLOP/s of GemmForward on square products large enough to run at the BLAS's full rate: the
// machine's practical float32 peak for the training step's products.
double MeasureGemmPeak() {
  const int64_t n = 768;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  GemmForward(a.data(), b.data(), n, n, n, c.data());  // warm up
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    const double t0 = Now();
    GemmForward(a.data(), b.data(), n, n, n, c.data());
    best = std::max(best, 2.0 * n * n * n / (Now() - t0) / 1e9);
  }
  return best;
}

struct BenchTrainFlags {
  std::string preset = "stories15M";
  std::string config;
  int64_t batch = 4;
  int64_t ctx = 256;
  int steps = 5;
  bool json = false;
  bool recompute = false;
};

void RunBenchTrain(const BenchTrainFlags& f) {
  ModelConfig c = f.config.empty() ? TrainPreset(f.preset)
                                   : ParseHuggingFaceConfig(ReadFile(f.config), "", f.config);
  c.Validate(f.config.empty() ? "preset " + f.preset : f.config);
  TrainModel tm(RandomModelFiles(c, 1), -1);
  TrainStep step(tm, f.recompute);
  std::mt19937 rng(1);
  TokenBatch b;
  for (int64_t s = 0; s < f.batch; ++s) {
    b.lengths.push_back(f.ctx);
    for (int64_t t = 0; t < f.ctx; ++t) {
      b.inputs.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size)));
      b.targets.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size)));
      b.weights.push_back(1.0f);
    }
  }
  b.normalizer = static_cast<double>(f.batch * f.ctx);
  const AdamWConfig adam;
  std::vector<double> rates;
  for (int s = 0; s < f.steps + 1; ++s) {  // the first step warms up (allocations, pages)
    const double t0 = Now();
    tm.ZeroGrads();
    step.LanguageModelLoss(b);
    const double norm = GradNorm(tm.parameters());
    ClipGrads(tm.parameters(), norm, 1.0);
    AdamWStep(tm.parameters(), s + 1, 1e-4, adam);
    if (s > 0) rates.push_back(static_cast<double>(f.batch * f.ctx) / (Now() - t0));
  }
  std::sort(rates.begin(), rates.end());
  const double median = rates[rates.size() / 2];
  const auto params = static_cast<double>(tm.parameter_count());
  const double gflops = 6.0 * params * median / 1e9;
  const double peak = MeasureGemmPeak();
  const double param_mib = params * 4 / (1024.0 * 1024.0);
  const double act_mib = static_cast<double>(step.activation_bytes()) / (1024.0 * 1024.0);
  const std::string name = f.config.empty() ? f.preset : f.config;
  if (f.json) {
    const nlohmann::json out = {{"model", name},
                                {"parameters", tm.parameter_count()},
                                {"batch", f.batch},
                                {"ctx", f.ctx},
                                {"threads", ThreadPool::Global().size()},
                                {"simd", DotRowImplementation()},
                                {"tokens_per_s_median", median},
                                {"tokens_per_s_min", rates.front()},
                                {"tokens_per_s_max", rates.back()},
                                {"gflops", gflops},
                                {"gemm_peak_gflops", peak},
                                {"memory_mib",
                                 {{"parameters", param_mib},
                                  {"gradients", param_mib},
                                  {"adamw", 2 * param_mib},
                                  {"activations", act_mib}}},
                                {"recompute", f.recompute}};
    std::printf("%s\n", out.dump().c_str());
    return;
  }
  std::printf("model %s: %.2fM parameters, batch %lld x %lld tokens, %d threads (%s)\n",
              name.c_str(), params / 1e6, static_cast<long long>(f.batch),
              static_cast<long long>(f.ctx), ThreadPool::Global().size(), DotRowImplementation());
  std::printf("train step: %.0f tokens/s median (min %.0f, max %.0f over %d steps)\n", median,
              rates.front(), rates.back(), f.steps);
  std::printf(
      "           %.1f GFLOP/s (6 x params x tokens/s) = %.0f%% of the measured sgemm "
      "peak %.1f GFLOP/s\n",
      gflops, 100.0 * gflops / peak, peak);
  std::printf("memory: parameters %.1f MiB + gradients %.1f + AdamW %.1f + activations %.1f%s\n",
              param_mib, param_mib, 2 * param_mib, act_mib, f.recompute ? " (recompute)" : "");
}

// The options every trainer shares (model, data shape, optimizer, schedule, checkpoints).
void AddTrainerOptions(CLI::App* p, TrainerOptions* o, bool* no_shuffle) {
  p->add_option("-m,--model", o->model, "initial model: Hugging Face directory or GGUF file");
  p->add_option("--config", o->config, "a config.json for a fresh, randomly initialised model");
  p->add_option("--tokenizer", o->tokenizer, "tokenizer (default: the -m model's)");
  p->add_option("--out", o->loop.out,
                "run directory: the final model (Hugging Face layout) and checkpoint-STEP/")
      ->required();
  p->add_option("--ctx", o->ctx, "tokens per sequence (T)")->capture_default_str();
  p->add_option("--batch", o->batch, "sequences per micro-batch (B)")->capture_default_str();
  p->add_option("--accum", o->loop.accum,
                "micro-batches per optimizer step (gradient accumulation)")
      ->capture_default_str();
  p->add_option("--steps", o->loop.steps, "optimizer steps");
  p->add_option("--epochs", o->epochs,
                "train for this many passes over the data (without --steps)");
  p->add_option("--lr", o->loop.lr.lr, "peak learning rate")->capture_default_str();
  p->add_option("--schedule", o->schedule, "constant, linear or cosine (as HF Trainer's)")
      ->capture_default_str();
  p->add_option("--warmup", o->loop.lr.warmup, "linear warmup steps from 0")->capture_default_str();
  p->add_option("--min-lr", o->loop.lr.min_lr, "where linear and cosine end")
      ->capture_default_str();
  p->add_option("--weight-decay", o->loop.adam.weight_decay,
                "AdamW decoupled weight decay (matrices and embeddings; not norms)")
      ->capture_default_str();
  p->add_option("--beta1", o->loop.adam.beta1, "AdamW beta1")->capture_default_str();
  p->add_option("--beta2", o->loop.adam.beta2, "AdamW beta2")->capture_default_str();
  p->add_option("--eps", o->loop.adam.eps, "AdamW epsilon")->capture_default_str();
  p->add_option("--grad-clip", o->loop.grad_clip,
                "clip the global gradient norm (torch's clip_grad_norm_); 0: no clipping")
      ->capture_default_str();
  p->add_option("--unfreeze-layers", o->unfreeze_layers,
                "train only the last N blocks plus the final norm and head (-1: everything)")
      ->capture_default_str();
  p->add_option("--seed", o->seed, "seed for the data order and a fresh model's weights")
      ->capture_default_str();
  p->add_flag("--no-shuffle", *no_shuffle, "visit the data in file order (see --help above)");
  p->add_flag("--recompute", o->loop.recompute,
              "recompute each block's activations in the backward instead of saving them");
  p->add_option("--save-every", o->loop.save_every,
                "write a checkpoint every N steps (and always at the end); the last two are kept")
      ->capture_default_str();
  p->add_option("--resume", o->loop.resume,
                "continue the run in this --out directory (its newest checkpoint) or checkpoint");
  p->add_option("--log", o->loop.log,
                "JSON Lines log: step, loss, lr, grad_norm, tokens, tokens_per_s, epoch, "
                "eval_loss");
  p->add_flag("-q,--quiet", o->loop.quiet, "no progress line");
  p->add_flag("--deterministic-reduce", o->loop.deterministic_reduce,
              "under mpirun: sum gradients in a fixed binary tree over the micro-batches, the "
              "same bits for any number of ranks (power-of-two ranks and --accum / ranks); "
              "the sum no longer overlaps the backward");
  p->add_option("--rank-timeout", o->loop.rank_timeout,
                "under mpirun: seconds a rank waits for the others before it stops the run")
      ->capture_default_str();
  AddThreadsOption(p);
}

// The options of a trainer with held-out data and line-oriented input.
void AddDataOptions(CLI::App* p, std::string* eval_data, const std::string& eval_what,
                    int64_t* eval_every, bool* skip_bad_lines) {
  p->add_option("--eval-data", *eval_data, eval_what);
  p->add_option("--eval-every", *eval_every, "evaluate every N steps (and at the end)")
      ->capture_default_str();
  p->add_flag("--skip-bad-lines", *skip_bad_lines,
              "count and skip malformed lines instead of stopping at the first");
}

}  // namespace

void RegisterTrain(CLI::App& app) {
  CLI::App* train = app.add_subcommand("train", "Train a model: pretrain, sft, rm, dpo, apa, ppo");
  train->require_subcommand(1);
  train->footer("`starling train SUBCOMMAND --help` shows each trainer's options and examples.");

  auto o = std::make_shared<TrainerOptions>();
  o->loop.steps = 0;
  auto no_shuffle = std::make_shared<bool>(false);
  CLI::App* p = train->add_subcommand(
      "pretrain",
      "Next-token training on a text file. The file is tokenized once as `starling tokenize` "
      "does (BOS, then the text) and cut into windows of --ctx + 1 tokens; --no-shuffle takes "
      "windows (k*B + j) mod n_windows at micro-batch k, else a seeded shuffle per epoch. The "
      "loss is the mean cross-entropy over the step's targets. AdamW as torch.optim.AdamW; "
      "weight decay applies to matrices and embeddings, not to norm weights.");
  p->add_option("--data", o->data, "UTF-8 text file")->required();
  AddTrainerOptions(p, o.get(), no_shuffle.get());
  p->footer(
      "Examples:\n"
      "  starling train pretrain -m models/stories260K.gguf --data stories.txt --out runs/s260 \\\n"
      "      --ctx 256 --batch 8 --steps 1000 --lr 1e-3 --grad-clip 1 --log runs/s260.jsonl\n"
      "  starling train pretrain --config config.json --tokenizer models/openchat-3.5-tokenizer "
      "\\\n"
      "      --data corpus.txt --out runs/fresh --ctx 512 --batch 4 --steps 200 --seed 7\n"
      "  starling train pretrain ... --resume runs/s260          # after a crash or Ctrl-C\n"
      "  mpirun -np 2 starling train pretrain ... --accum 2 -t 8  # data-parallel over 2 ranks\n"
      "docs/TRAINING.md has the data rules, checkpoints and running on several machines.");
  // The callbacks hold every flag's storage: CLI11 writes into it while parsing, after this
  // function has returned.
  p->callback([o, no_shuffle] {
    o->shuffle = !*no_shuffle;
    const DistributedScope ranks;
    RunPretrain(*o);
  });

  auto sft = std::make_shared<SftOptions>();
  sft->common.loop.steps = 0;
  auto sft_no_shuffle = std::make_shared<bool>(false);
  CLI::App* s = train->add_subcommand(
      "sft",
      "Supervised fine-tuning on conversations (JSON Lines: {\"messages\": [{\"role\", "
      "\"content\"}...], \"weight\": w} or ShareGPT's {\"conversations\": [{\"from\", "
      "\"value\"}...]}). Each conversation is rendered by --template; a token is trained iff "
      "it is an assistant message's content or the end-of-turn token closing it, with the "
      "conversation's weight. A step's loss is the sum of weighted token losses divided by the "
      "number of trained tokens in the step. --no-shuffle: micro-batch k takes conversations "
      "(k*B + j) mod N, each its own sequence; by default a seeded shuffle per epoch, packed "
      "into B rows of at most --ctx tokens (each conversation still attends only to itself).");
  s->add_option("--data", sft->common.data, "conversations, JSON Lines")->required();
  s->add_option("--template", sft->chat_template,
                "openchat, openchat-code, llama-2 or raw (default: the model's own, when starling "
                "knows it)");
  AddDataOptions(s, &sft->eval_data, "held-out conversations: mean masked loss",
                 &sft->common.loop.eval_every, &sft->skip_bad_lines);
  s->add_option("--long-conversations", sft->long_conversations,
                "conversations longer than --ctx + 1 tokens: skip, or truncate (drop the "
                "earliest tokens); both are counted")
      ->capture_default_str();
  AddTrainerOptions(s, &sft->common, sft_no_shuffle.get());
  s->footer(
      "Examples:\n"
      "  starling train sft -m Starling-LM-7B-alpha/ --data chats.jsonl --eval-data held.jsonl \\\n"
      "      --unfreeze-layers 4 --ctx 1024 --batch 4 --accum 8 --epochs 2 --lr 1e-5 \\\n"
      "      --schedule cosine --warmup 20 --save-every 50 --out runs/sft1 --log runs/sft1.jsonl\n"
      "  starling train sft -m models/stories260K.gguf --template raw --data chats.jsonl \\\n"
      "      --out runs/tiny --batch 8 --steps 200 --lr 3e-3\n"
      "  starling plot runs/sft1.jsonl -o curves.svg              # loss and eval loss");
  s->callback([sft, sft_no_shuffle] {
    sft->common.shuffle = !*sft_no_shuffle;
    const DistributedScope ranks;
    RunSft(*sft);
  });

  auto rm = std::make_shared<RewardTrainOptions>();
  rm->common.loop.steps = 0;
  rm->common.ctx = 0;  // the model's positions, at most 2048 (Starling-RM's max_length)
  auto rm_no_shuffle = std::make_shared<bool>(false);
  auto rm_loss = std::make_shared<std::string>();
  auto rm_no_sharing = std::make_shared<bool>(false);
  CLI::App* r = train->add_subcommand(
      "rm",
      "Reward-model training on ranked answers (JSON Lines): Nectar records {\"prompt\": "
      "\"\\n\\nHuman: ...\\n\\nAssistant: \", \"answers\": [{\"answer\", \"rank\"}...]} "
      "ordered by rank (1 = best), or pairs {\"prompt\", \"chosen\", \"rejected\"}. Each "
      "(prompt, answer) is rendered by --template as `starling score` renders it and scored at "
      "its last token; a prompt's answers share its tokens (computed once). --loss kwise: "
      "-sum_j [r_j - log sum_{k>=j} e^r_k] / (K-1) (Starling-RM's Plackett-Luce); pairwise: "
      "the mean over ranked pairs of -log sigmoid(r_i - r_j). A step's loss is the mean over "
      "its prompts. -m: a reward model (Starling-RM's layout, safetensors or "
      "*ForSequenceClassification) or a language model that gets a fresh v_head. --out is a "
      "reward model in Starling-RM's layout (transformer.*, v_head.weight) that score, rank and "
      "serve --rm load. --no-shuffle: step k takes records (k*B + j) mod N.");
  r->add_option("--data", rm->common.data, "rankings or pairs, JSON Lines")->required();
  r->add_option("--loss", *rm_loss, "kwise or pairwise")
      ->required()
      ->check(CLI::IsMember({"kwise", "pairwise"}));
  r->add_option("--template", rm->chat_template, "chat template the rewards are read under")
      ->capture_default_str();
  AddDataOptions(r, &rm->eval_data,
                 "held-out rankings: loss, adjacent-pair and pair accuracy, Kendall tau, top-1",
                 &rm->common.loop.eval_every, &rm->skip_bad_lines);
  r->add_option("--zero-sum-penalty", rm->loss.zero_sum_penalty,
                "add C * (sum of a prompt's rewards)^2 (centres the rewards)")
      ->capture_default_str();
  r->add_flag("--no-prefix-sharing", *rm_no_sharing,
              "run every (prompt, answer) sequence whole (to measure what sharing saves)");
  AddTrainerOptions(r, &rm->common, rm_no_shuffle.get());
  r->get_option("--ctx")->description(
      "longest sequence; longer ones keep their last tokens (truncation from the left); "
      "default: the model's max_position_embeddings, at most 2048 (Starling-RM's max_length)");
  r->get_option("--batch")->description("prompts per micro-batch (each with all its answers)");
  r->footer(
      "Examples:\n"
      "  starling train rm -m Starling-RM-7B-alpha/ --data nectar.jsonl --loss kwise \\\n"
      "      --eval-data held.jsonl --unfreeze-layers 4 --batch 4 --lr 1e-5 --out runs/rm1\n"
      "  starling train rm -m models/stories260K.gguf --data pairs.jsonl --loss pairwise \\\n"
      "      --out runs/rm2 --steps 300\n"
      "  starling rank -m runs/rm1 --data held.jsonl             # Kendall tau, pair accuracy");
  r->callback([rm, rm_no_shuffle, rm_loss, rm_no_sharing] {
    rm->common.shuffle = !*rm_no_shuffle;
    rm->prefix_sharing = !*rm_no_sharing;
    rm->loss.kind = *rm_loss == "kwise" ? RankingLossKind::kKWise : RankingLossKind::kPairwise;
    const DistributedScope ranks;
    RunRewardTraining(*rm);
  });

  auto dpo = std::make_shared<DpoOptions>();
  dpo->common.loop.steps = 0;
  dpo->common.ctx = 1024;
  auto dpo_no_shuffle = std::make_shared<bool>(false);
  CLI::App* dp = train->add_subcommand(
      "dpo",
      "Direct Preference Optimization on preference pairs or rankings (the data of `train rm`: "
      "Nectar records or {\"prompt\", \"chosen\", \"rejected\"}). Each (prompt, answer) is "
      "rendered by --template; log pi(y) sums the final answer's token log-probs (its content "
      "and end-of-turn). Per pair: -log sigmoid(beta ((log pi(y_w) - log pi_ref(y_w)) - (log "
      "pi(y_l) - log pi_ref(y_l)))); the reference is the initial model, its log-probs computed "
      "once before training. A step's loss is the mean over its pairs; --batch counts pairs. "
      "From a ranking, --pairs best takes (rank 1, each worse answer), all every ranked pair. "
      "--no-shuffle: step k takes pairs (k*B + j) mod N in file order.");
  dp->add_option("--data", dpo->common.data, "pairs or rankings, JSON Lines")->required();
  dp->add_option("--template", dpo->chat_template,
                 "the policy's chat template (default openchat: OpenChat 3.5 and Starling-LM)")
      ->capture_default_str();
  dp->add_option("--beta", dpo->beta, "DPO's beta (the KL penalty's inverse temperature)")
      ->capture_default_str();
  dp->add_option("--pairs", dpo->pairs, "pairs from a ranking: best or all")
      ->check(CLI::IsMember({"best", "all"}))
      ->capture_default_str();
  AddDataOptions(dp, &dpo->eval_data, "held-out pairs: DPO loss, reward accuracy and margin",
                 &dpo->common.loop.eval_every, &dpo->skip_bad_lines);
  AddTrainerOptions(dp, &dpo->common, dpo_no_shuffle.get());
  dp->get_option("--ctx")->description(
      "longest conversation (+1 token); longer pairs are skipped and counted");
  dp->get_option("--batch")->description("preference pairs per micro-batch");
  dp->footer(
      "Examples:\n"
      "  starling train dpo -m openchat-3.5/ --template openchat --data nectar.jsonl \\\n"
      "      --pairs best --beta 0.1 --unfreeze-layers 4 --lr 5e-7 --out runs/dpo1\n"
      "  starling train dpo -m runs/sft --data pairs.jsonl --batch 8 --steps 500 --out runs/dpo2");
  dp->callback([dpo, dpo_no_shuffle] {
    dpo->common.shuffle = !*dpo_no_shuffle;
    const DistributedScope ranks;
    RunDpo(*dpo);
  });

  // Policy tuning: `train apa` and `train ppo` share every option but the loss's own.
  auto add_policy = [&](const char* name, PolicyAlgorithm algorithm, const char* description) {
    auto po = std::make_shared<PolicyOptions>();
    po->algorithm = algorithm;
    po->common.ctx = 0;  // the model's positions, at most 2048
    po->common.loop.steps = 0;
    po->common.batch = 8;
    po->common.loop.lr.lr = 2e-7;  // Starling-LM-7B-alpha's AdamW
    po->common.loop.adam.beta1 = 0.9f;
    po->common.loop.adam.beta2 = 0.95f;
    po->common.loop.adam.weight_decay = 1e-6f;
    po->loss.cliprange_value = -1;  // the algorithm's default
    auto po_no_shuffle = std::make_shared<bool>(false);
    auto whiten = std::make_shared<bool>(false);
    auto no_whiten = std::make_shared<bool>(false);
    auto variant = std::make_shared<std::string>("paper");
    CLI::App* c = train->add_subcommand(name, description);
    c->add_option("--prompts", po->prompts,
                  "prompts, JSON Lines: {\"messages\": [...]} or {\"prompt\": \"...\"}")
        ->required();
    c->add_option("--rm", po->rm, "reward model directory, scored in this process");
    c->add_option("--rm-url", po->rm_url,
                  "a /v1/rewards server instead (starling serve --rm), e.g. http://127.0.0.1:8080");
    c->add_option("--rm-api-key", po->rm_api_key, "bearer token for --rm-url");
    c->add_option("--rm-template", po->rm_template,
                  "the reward model's chat template (Starling-RM: llama-2)")
        ->capture_default_str();
    c->add_option("--rm-tokenizer", po->rm_tokenizer,
                  "the reward model's tokenizer (default: --rm)");
    c->add_option("--rm-retries", po->rm_retries,
                  "retries of a failed or garbled --rm-url request before the run stops")
        ->capture_default_str();
    c->add_option("--rm-timeout", po->rm_timeout, "seconds per --rm-url request")
        ->capture_default_str();
    c->add_option("--template", po->chat_template,
                  "the policy's chat template (default: the model's own when starling knows it, "
                  "else openchat: OpenChat 3.5, Starling-LM)");
    c->add_option("--iterations", po->iterations, "rollout-and-update iterations")
        ->capture_default_str();
    c->add_option("--rollouts", po->rollouts, "responses sampled per iteration")
        ->capture_default_str();
    c->add_option("--ppo-epochs", po->ppo_epochs, "passes over each iteration's rollouts")
        ->capture_default_str();
    c->add_option("--gen-batch", po->gen_batch, "sequences decoded together while sampling")
        ->capture_default_str();
    c->add_option("--max-new-tokens", po->max_new_tokens, "longest response")
        ->capture_default_str();
    c->add_option("--temperature", po->temperature,
                  "sampling temperature (anything but 1 warns: the loss scores temperature 1)")
        ->capture_default_str();
    c->add_option("--top-k", po->top_k, "top-k sampling (0: off; warns)")->capture_default_str();
    c->add_option("--top-p", po->top_p, "nucleus sampling (1: off; warns)")->capture_default_str();
    c->add_option("--stop", po->stop,
                  "stop string (repeatable; default with openchat: \"GPT4 Correct User:\" and "
                  "\"GPT4 Correct Assistant:\", as Starling)");
    c->add_option("--gamma", po->gamma, "GAE discount")->capture_default_str();
    c->add_option("--lam", po->lam, "GAE lambda")->capture_default_str();
    // A flag, as the issue writes it; without either flag, the algorithm's default.
    c->add_flag("--whiten-advantages", *whiten,
                "whiten advantages over each minibatch (default: yes for PPO and APA paper, no "
                "for APA starling)");
    c->add_flag("--no-whiten-advantages", *no_whiten, "do not whiten advantages");
    c->add_option("--kl-coef", po->kl_coef,
                  "per-token KL penalty in the reward (default 0.01; APA paper: 0)");
    c->add_option("--target-kl", po->target_kl,
                  "adaptive KL controller's target (0: a fixed --kl-coef)")
        ->capture_default_str();
    c->add_option("--kl-horizon", po->kl_horizon, "adaptive KL controller's horizon")
        ->capture_default_str();
    c->add_option("--cliprange-value", po->loss.cliprange_value,
                  "value clip around the rollout's values (0: unclipped; default 0.2, APA "
                  "paper 0 as microsoft/RLHF-APA)");
    c->add_option("--vf-coef", po->loss.vf_coef, "the value loss's weight")->capture_default_str();
    c->add_option("--value-warmup", po->value_warmup,
                  "the first N iterations train the value only (OpenRLHF's "
                  "--freezing_actor_steps); with --separate-value-model the policy is untouched")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    c->add_option("--reward-scale", po->reward_scale,
                  "none, or running: divide scores by their running standard deviation")
        ->check(CLI::IsMember({"none", "running"}))
        ->capture_default_str();
    c->add_option("--reward-clip", po->reward_clip, "clip scores to [-C, C] (0: off)")
        ->capture_default_str();
    c->add_option("--max-kl", po->max_kl,
                  "stop the run when the mean per-token KL to the reference exceeds this")
        ->capture_default_str();
    c->add_option("--sample-every", po->sample_every,
                  "log a few sampled responses every N iterations (0: never)")
        ->capture_default_str();
    c->add_option("--samples", po->samples, "responses logged each time")->capture_default_str();
    c->add_flag("--separate-value-model", po->separate_value_model,
                "a value model of its own (the initial weights with a [1, D] head, the same "
                "blocks trained; saved in OUT/value_model) instead of a value head on the policy");
    if (algorithm == PolicyAlgorithm::kPpo) {
      c->add_option("--cliprange", po->loss.cliprange, "PPO's ratio clip")->capture_default_str();
    } else {
      c->add_option("--variant", *variant,
                    "paper (microsoft/RLHF-APA: anchored on the initial policy, adv-coeff, "
                    "whitened, no KL in the reward) or starling (the Starling trlx fork: anchored "
                    "on the rollout policy, KL penalty, clipped values)")
          ->check(CLI::IsMember({"paper", "starling"}))
          ->capture_default_str();
      c->add_option("--adv-coeff", po->loss.adv_coeff, "APA paper: 1/lambda")
          ->capture_default_str();
    }
    AddTrainerOptions(c, &po->common, po_no_shuffle.get());
    c->get_option("--ctx")->description(
        "prompt + response tokens (default: the model's positions, at most 2048); longer "
        "prompts are skipped and counted");
    c->get_option("--batch")->description("rollouts per micro-batch");
    c->footer(std::string("Examples:\n") + "  starling train " + name +
              " -m openchat-3.5/ --rm Starling-RM-7B-alpha/ --prompts prompts.jsonl \\\n"
              "      --unfreeze-layers 4 --iterations 50 --rollouts 64 --out runs/" +
              name + "1" + (algorithm == PolicyAlgorithm::kPpo ? "" : " --variant starling") +
              "\n  starling train " + name +
              " -m runs/sft --rm-url http://127.0.0.1:8081 --prompts prompts.jsonl \\\n"
              "      --iterations 60 --rollouts 128 --batch 16 --lr 5e-5 --out runs/" +
              name + "2 --log runs/" + name +
              "2.jsonl\n"
              "  starling plot runs/" +
              name + "2.jsonl --x iteration -o reward.svg --series reward_mean,kl");
    c->get_option("--save-every")
        ->description(
            "write a checkpoint every N iterations (and at the end; SIGINT/SIGTERM save too)");
    c->get_option("--log")->description(
        "JSON Lines log: a line per optimizer step (step, loss, policy_loss, value_loss, ...) and "
        "per iteration (iteration, reward_mean, kl, entropy, response_length, value_loss, ...)");
    c->callback([po, po_no_shuffle, whiten, no_whiten, variant, algorithm] {
      if (*whiten && *no_whiten) {
        throw CLI::ValidationError(
            "--whiten-advantages and --no-whiten-advantages exclude each other");
      }
      po->common.shuffle = !*po_no_shuffle;
      po->whiten = *whiten ? 1 : *no_whiten ? 0 : -1;
      if (algorithm != PolicyAlgorithm::kPpo) {
        po->algorithm =
            *variant == "paper" ? PolicyAlgorithm::kApaPaper : PolicyAlgorithm::kApaStarling;
      }
      const DistributedScope ranks;
      RunPolicyTraining(*po);
    });
  };
  add_policy("apa", PolicyAlgorithm::kApaPaper,
             "Advantage-Induced Policy Alignment (Zhu et al. 2023) against a reward model: per "
             "iteration, sample --rollouts responses with the batched engine, score them (--rm or "
             "--rm-url), then --ppo-epochs passes in minibatches minimizing, per response token, "
             "(log pi - A - log pi_anchor)^2 + vf_coef x value loss. Starling-LM-7B-alpha: "
             "--variant starling --unfreeze-layers 4.");
  add_policy("ppo", PolicyAlgorithm::kPpo,
             "PPO against a reward model (trlx's and TRL's: clipped surrogate, clipped value "
             "loss, per-token KL penalty with a fixed or adaptive coefficient), with the same "
             "rollout loop as `train apa`.");

  auto f = std::make_shared<BenchTrainFlags>();
  CLI::App* b = app.add_subcommand(
      "bench-train",
      "Tokens/s of a full training step (forward, backward, clipping, AdamW) on random data");
  b->add_option("--preset", f->preset, "stories260K, stories15M or stories42M (llama2.c shapes)")
      ->capture_default_str();
  b->add_option("--config", f->config, "a config.json instead of a preset");
  b->add_option("-b,--batch", f->batch, "sequences per step")->capture_default_str();
  b->add_option("-c,--ctx", f->ctx, "tokens per sequence")->capture_default_str();
  b->add_option("-r,--steps", f->steps, "timed steps (after one warm-up step)")
      ->capture_default_str();
  b->add_flag("--recompute", f->recompute, "recompute activations in the backward");
  b->add_flag("--json", f->json, "one JSON object");
  AddThreadsOption(b);
  b->footer(
      "Examples:\n"
      "  starling bench-train --preset stories15M -b 4 -c 256 -t 2        # tokens/s, GFLOP/s\n"
      "  starling bench-train --preset stories42M -r 5 --recompute --json\n"
      "  starling bench-train --config config.json -b 1 -c 1024");
  b->callback([f] { RunBenchTrain(*f); });
}

}  // namespace starling::cli
