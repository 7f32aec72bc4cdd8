#include "train/loop.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>

#include "core/error.h"
#include "core/file.h"
#include "core/signals.h"
#include "formats/safetensors.h"
#include "train/checkpoint.h"
#include "train/distributed.h"

namespace starling {
namespace {

namespace fs = std::filesystem;

// "eval 1.2345  acc 0.6100  tau 0.2200": the headline metrics for the progress line (the log
// has them all).
std::string MetricsText(const nlohmann::json& metrics) {
  std::string text;
  for (const auto& [key, label] : {std::pair<const char*, const char*>{"eval_loss", "eval"},
                                   {"eval_pair_accuracy", "acc"},
                                   {"eval_reward_accuracy", "acc"},
                                   {"eval_kendall_tau", "tau"}}) {
    if (!metrics.contains(key) || !metrics[key].is_number()) continue;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%s %.4f", text.empty() ? "" : "  ", label,
                  metrics[key].get<double>());
    text += buf;
  }
  return text;
}

std::string Duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buf;
}

int64_t Trained(const TokenBatch& b) {
  int64_t n = 0;
  for (const float w : b.weights) n += w != 0.0f;
  return n;
}

int64_t StepOf(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind("checkpoint-", 0) != 0) return -1;
  try {
    return std::stoll(name.substr(11));
  } catch (const std::exception&) {
    return -1;
  }
}

// out/checkpoint-STEP: the model, AdamW's moments and trainer_state.json, written into a
// temporary directory, synced, then renamed into place; older checkpoints beyond the last two
// are removed.
}  // namespace

void WriteMoments(const TrainModel& m, const std::string& path) {
  SafetensorsWriter moments;
  for (const Parameter& p : m.parameters()) {
    if (p.m.empty()) continue;  // no step taken yet
    const auto bytes = [](const std::vector<float>& v) {
      return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
    };
    moments.AddTensor("m." + p.spec.name, DType::kF32, p.spec.shape, bytes(p.m));
    moments.AddTensor("v." + p.spec.name, DType::kF32, p.spec.shape, bytes(p.v));
  }
  moments.WriteTo(path);
}

void ReadMoments(TrainModel& m, const std::string& path) {
  if (!FileExists(path)) return;  // a checkpoint taken before the first step
  const SafetensorsFile moments = SafetensorsFile::Open(path);
  auto read = [&](const std::string& name, std::vector<float>& into) {
    const SafetensorsTensor* t = moments.Find(name);
    if (t == nullptr || t->dtype != DType::kF32 || t->size_bytes != into.size() * sizeof(float)) {
      Fail(path, ": no float32 tensor '", name, "' of ", into.size(), " elements");
    }
    std::memcpy(into.data(), moments.Data(*t).data(), t->size_bytes);
  };
  for (Parameter& p : m.parameters()) {
    if (moments.Find("m." + p.spec.name) == nullptr) continue;
    p.m.resize(p.value.size());
    p.v.resize(p.value.size());
    read("m." + p.spec.name, p.m);
    read("v." + p.spec.name, p.v);
  }
}

void SaveCheckpoint(const TrainModel& m, const TrainLoopOptions& o, int64_t step, int64_t position,
                    const nlohmann::json& extra,
                    const std::function<void(const std::string&)>& write_files) {
  const fs::path out(o.out);
  fs::create_directories(out);
  const fs::path final_dir = out / ("checkpoint-" + std::to_string(step));
  const fs::path temp = out / (".checkpoint-" + std::to_string(step) + ".tmp");
  fs::remove_all(temp);
  SaveHuggingFace(m, temp.string(), o.tokenizer_source);
  WriteMoments(m, (temp / "optimizer.safetensors").string());
  if (write_files) write_files(temp.string());
  nlohmann::json state = {{"format", "starling-trainer-state-1"},
                          {"step", step},
                          {"position", position},
                          {"run", o.run_config}};
  if (extra.is_object()) state.update(extra);
  const std::string text = state.dump(2) + "\n";
  WriteFileAtomically((temp / "trainer_state.json").string(),
                      [&](const ByteSink& sink) { sink(text); });
  for (const auto& entry : fs::directory_iterator(temp)) SyncPath(entry.path().string());
  SyncPath(temp.string());
  fs::remove_all(final_dir);
  fs::rename(temp, final_dir);
  SyncPath(out.string());
  std::vector<std::pair<int64_t, fs::path>> all;
  for (const auto& entry : fs::directory_iterator(out)) {
    const int64_t s = StepOf(entry.path());
    if (s >= 0 && entry.is_directory()) all.emplace_back(s, entry.path());
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + 2 < all.size(); ++i) fs::remove_all(all[i].second);
}

// Loads a checkpoint into `m` (parameters and moments by name) and returns its state.
nlohmann::json LoadCheckpoint(TrainModel& m, const std::string& dir,
                              const nlohmann::json& run_config) {
  const std::string state_path = dir + "/trainer_state.json";
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(ReadFile(state_path));
  } catch (const nlohmann::json::exception& e) {
    Fail(state_path, ": ", e.what());
  }
  if (state.value("format", "") != "starling-trainer-state-1" || !state.contains("run")) {
    Fail(state_path, ": not a starling trainer state");
  }
  for (const auto& [key, value] : run_config.items()) {
    if (!state["run"].contains(key) || state["run"][key] != value) {
      Fail("--resume ", dir, ": the checkpoint's ", key, " is ",
           state["run"].contains(key) ? state["run"][key].dump() : "absent", ", this run's ",
           value.dump(), " (resume with the same settings)");
    }
  }
  LoadParameters(m, dir + "/model.safetensors");
  ReadMoments(m, dir + "/optimizer.safetensors");
  return state;
}

StopSignals::StopSignals() {
  StartSignalThread();  // no-op when main() started it, as the CLI does
  SetSignalHandler([this](int signal) { signal_.store(signal); });
}

StopSignals::~StopSignals() {
  SetSignalHandler({});
}

std::string FindCheckpoint(const std::string& dir) {
  if (FileExists(dir + "/trainer_state.json")) return dir;
  if (!IsDirectory(dir)) Fail("--resume ", dir, ": no such directory");
  int64_t best = -1;
  std::string found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const int64_t s = StepOf(entry.path());
    if (s > best && FileExists((entry.path() / "trainer_state.json").string())) {
      best = s;
      found = entry.path().string();
    }
  }
  if (found.empty()) Fail("--resume ", dir, ": no complete checkpoint (checkpoint-STEP) in it");
  return found;
}

double EvaluateLoss(TrainStep& step, const std::vector<TokenBatch>& batches) {
  double sum = 0.0;
  int64_t count = 0;
  for (TokenBatch b : batches) {
    b.normalizer = 1.0;  // the sum of weighted losses
    sum += step.LanguageModelLoss(b, /*backward=*/false);
    count += Trained(b);
  }
  return count > 0 ? sum / static_cast<double>(count) : 0.0;
}

TrainObjective::Size LanguageModelObjective::Read(int64_t slot, int64_t* position) {
  if (static_cast<int64_t>(slots_.size()) <= slot) slots_.resize(static_cast<size_t>(slot + 1));
  slots_[slot] = source_.Next(position);
  return {Trained(slots_[slot]), static_cast<int64_t>(slots_[slot].inputs.size())};
}

double LanguageModelObjective::Backward(TrainStep& step, int64_t slot, double units) {
  TokenBatch& b = slots_[slot];
  if (units <= 0) return 0.0;  // nothing trained in the whole step
  b.normalizer = units;
  return step.LanguageModelLoss(b);
}

nlohmann::json LanguageModelObjective::Evaluate(TrainStep& step) {
  if (eval_.empty()) return nlohmann::json::object();
  return {{"eval_loss", EvaluateLoss(step, eval_)}};
}

void RunTrainLoop(TrainModel& m, TrainObjective& objective, const TrainLoopOptions& o) {
  if (o.accum < 1) Fail("--accum must be at least 1, not ", o.accum);
  if (o.steps < 1) Fail("the run needs at least one step, not ", o.steps);
  const bool root = Ranks::root();  // evaluates, logs, prints and writes
  int64_t first_step = 0, position = 0;
  if (!o.resume.empty()) {
    const std::string dir = FindCheckpoint(o.resume);
    const nlohmann::json state = LoadCheckpoint(m, dir, o.run_config);
    first_step = state["step"].get<int64_t>();
    position = state["position"].get<int64_t>();
    if (root) {
      std::fprintf(stderr, "resuming from %s (step %lld)\n", dir.c_str(),
                   static_cast<long long>(first_step));
    }
  }
  Ranks::set_timeout(o.rank_timeout);
  std::ofstream log;
  if (!o.log.empty() && root) {
    log.open(o.log, o.resume.empty() ? std::ios::trunc : std::ios::app);
    if (!log) Fail(o.log, ": cannot open the log for writing");
  }
  // Extra keys of a fresh run's first line (the data's counts, the eval loss before training):
  // the log stays one line per step.
  nlohmann::json first_extra = o.log_header.is_object() ? o.log_header : nlohmann::json::object();
  if (Ranks::size() > 1) first_extra["ranks"] = Ranks::size();
  TrainStep step(m, o.recompute);
  GradientSum gradient_sum(m, o.deterministic_reduce);
  StopSignals signals;
  const bool quiet = o.quiet || !root;
  const bool terminal = isatty(fileno(stderr)) != 0;
  const auto start = std::chrono::steady_clock::now();
  double smoothed = NAN;
  nlohmann::json metrics = nlohmann::json::object();  // the latest evaluation
  if (first_step == 0 && root) {                      // where the run starts from
    metrics = objective.Evaluate(step);
    for (const auto& [key, value] : metrics.items()) first_extra[key + "_before"] = value;
    if (!quiet && !metrics.empty()) {
      std::fprintf(stderr, "before training: %s\n", MetricsText(metrics).c_str());
    }
  }
  int64_t k = first_step;
  for (; k < o.steps; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    int64_t units = 0, tokens = 0;
    for (int64_t a = 0; a < o.accum; ++a) {
      const TrainObjective::Size size = objective.Read(a, &position);
      units += size.units;
      tokens += size.tokens;
    }
    // This rank's share of the micro-batches; the gradients summed over ranks. `sums`: each
    // slot's loss (0 for the other ranks' slots: adding zeros is exact, so the total is the
    // one-process run's sum in slot order), the stop request, the objective's step sums.
    gradient_sum.BeginStep(o.accum, k + 1);
    std::vector<double> sums(static_cast<size_t>(o.accum) + 1, 0.0);
    for (int64_t a = gradient_sum.first_slot(), e = a + gradient_sum.own_slots(); a < e; ++a) {
      gradient_sum.BeginSlot(a + 1 == e);
      sums[static_cast<size_t>(a)] = objective.Backward(step, a, static_cast<double>(units));
      gradient_sum.EndSlot();
    }
    gradient_sum.Finish();
    sums[static_cast<size_t>(o.accum)] = signals.signal() != 0 ? 1.0 : 0.0;
    // Each rank's wait for the gradient sum, at its own index: the slowest rank waits least
    // (about the sum's own time), the fastest also waits for it.
    const size_t waits = sums.size();
    sums.resize(waits + static_cast<size_t>(Ranks::size()), 0.0);
    sums[waits + static_cast<size_t>(Ranks::rank())] = gradient_sum.wait_seconds();
    const std::vector<double> objective_sums = objective.TakeStepSums();
    sums.insert(sums.end(), objective_sums.begin(), objective_sums.end());
    Ranks::SumDoubles(sums, "the step's loss sum");
    double loss = 0.0;
    for (int64_t a = 0; a < o.accum; ++a) loss += sums[static_cast<size_t>(a)];
    const bool stop = sums[static_cast<size_t>(o.accum)] != 0.0;
    const nlohmann::json step_metrics = objective.StepMetrics(
        std::span<const double>(sums).subspan(waits + static_cast<size_t>(Ranks::size())));
    const auto rank_waits =
        std::span<const double>(sums).subspan(waits, static_cast<size_t>(Ranks::size()));
    const double norm = GradNorm(m.parameters());
    if (!std::isfinite(loss) || !std::isfinite(norm)) {
      Fail("step ", k + 1, ": the loss is ", loss, " and the gradient norm ", norm,
           "; stopping before the update (the last checkpoint in ", o.out,
           " is intact); try a lower --lr or --grad-clip");
    }
    if (o.grad_clip > 0) ClipGrads(m.parameters(), norm, o.grad_clip);
    const double lr = LearningRate(o.lr, k);
    AdamWStep(m.parameters(), k + 1, lr, o.adam);
    const auto t1 = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(t1 - t0).count();
    const bool last = k + 1 == o.steps;
    nlohmann::json evaluated;
    if (root && (last || (o.eval_every > 0 && (k + 1) % o.eval_every == 0))) {
      evaluated = objective.Evaluate(step);
      if (!evaluated.empty()) metrics = evaluated;
    }
    const bool evaluate = evaluated.is_object() && !evaluated.empty();
    smoothed = std::isnan(smoothed) ? loss : 0.9 * smoothed + 0.1 * loss;
    const double epoch = static_cast<double>(position) / static_cast<double>(objective.examples());
    if (log) {
      nlohmann::json line = {{"step", k + 1},
                             {"loss", loss},
                             {"lr", lr},
                             {"grad_norm", norm},
                             {objective.unit_name(), units},
                             {"epoch", epoch},
                             {"tokens_per_s", static_cast<double>(tokens) / seconds},
                             {"seconds", seconds}};
      if (Ranks::size() > 1) {
        line["allreduce_seconds"] = gradient_sum.wait_seconds();
        line["allreduce_seconds_min"] = *std::min_element(rank_waits.begin(), rank_waits.end());
        line["allreduce_seconds_max"] = *std::max_element(rank_waits.begin(), rank_waits.end());
        line["allreduce_bytes"] = gradient_sum.bytes();
      }
      line.update(step_metrics);
      if (evaluate) line.update(evaluated);
      if (k == 0) line.update(first_extra);
      log << line.dump() << "\n" << std::flush;
    }
    if (!quiet && (terminal || last || stop || evaluate ||
                   (k + 1) % std::max<int64_t>(1, o.steps / 20) == 0)) {
      const double elapsed = std::chrono::duration<double>(t1 - start).count();
      const double eta =
          elapsed / static_cast<double>(k + 1 - first_step) * static_cast<double>(o.steps - k - 1);
      const std::string eval_text = metrics.empty() ? "" : "  " + MetricsText(metrics);
      std::fprintf(
          stderr,
          "%sstep %lld/%lld  epoch %.2f  loss %.4f (smoothed %.4f)%s  lr %.3g  %.0f tok/s  "
          "ETA %s%s",
          terminal ? "\r" : "", static_cast<long long>(k + 1), static_cast<long long>(o.steps),
          epoch, loss, smoothed, eval_text.c_str(), lr, static_cast<double>(tokens) / seconds,
          Duration(eta).c_str(), terminal && !last && !stop ? "   " : "\n");
    }
    if (stop) {
      if (!root) return;
      SaveCheckpoint(m, o, k + 1, position);
      std::fprintf(stderr, "%s: saved %s/checkpoint-%lld; resume with --resume %s\n",
                   signals.reason().c_str(), o.out.c_str(), static_cast<long long>(k + 1),
                   o.out.c_str());
      return;
    }
    if (root && !last && o.save_every > 0 && (k + 1) % o.save_every == 0) {
      SaveCheckpoint(m, o, k + 1, position);
    }
  }
  if (!root) return;
  const uint64_t param_bytes = m.parameter_count() * sizeof(float);
  const auto mib = [](uint64_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); };
  std::fprintf(stderr,
               "memory: parameters %.1f MiB + gradients %.1f MiB + AdamW moments %.1f MiB + "
               "activations %.1f MiB%s\n",
               mib(param_bytes), mib(param_bytes), mib(2 * param_bytes),
               mib(step.activation_bytes()), o.recompute ? " (recomputed per block)" : "");
  SaveCheckpoint(m, o, o.steps, position);
  SaveHuggingFace(m, o.out, o.tokenizer_source);
  std::fprintf(stderr, "wrote %s (and %s/checkpoint-%lld)\n", o.out.c_str(), o.out.c_str(),
               static_cast<long long>(o.steps));
}

}  // namespace starling
