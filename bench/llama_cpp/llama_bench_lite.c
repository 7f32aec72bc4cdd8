// llama_bench_lite: llama.cpp's speed on a GGUF file, measured the way its llama-bench
// measures it (tools/llama-bench/llama-bench.cpp at the release the npm package ships),
// over llama.cpp's C API only, so that it compiles with `cc` against a prebuilt libllama.so.
//
// What it copies from llama-bench, so the numbers are comparable with published tables:
//   - one context per test: n_ctx = n_prompt + n_gen, n_batch 2048, n_ubatch 512,
//     K/V cache F16 (--kv-type), flash attention "auto";
//   - a ggml threadpool (poll 50, the default) attached to the context;
//   - pp<N>: random token ids (BOS first when the vocabulary adds one) decoded as one batch;
//     tg<N>: N single-token decodes, each followed by llama_synchronize;
//   - one warm-up run before the repetitions (a whole prompt for pp, one token for tg), the
//     cache cleared before each repetition; rand() unseeded like llama-bench's std::rand().
// What it reports: mean and standard deviation of tokens/s (llama-bench's avg_ts, stddev_ts)
// and the median (what `starling bench` reports).
//
// It is not llama.cpp's code and includes only llama.cpp's public headers, which the
// build script takes from the npm package at build time (nothing of llama.cpp is committed).
//
// Usage: llama_bench_lite -m FILE [-p 512] [-n 128] [-t 2] [-r 5] [--kv-type f16|f32]
//                         [--backend-dir DIR] [--json]
//        llama_bench_lite -m FILE --greedy TEXT [--n-predict 16]   (prints token ids)

#define _GNU_SOURCE
#include <link.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"
#include "llama.h"

typedef struct ggml_threadpool* (*threadpool_new_fn)(struct ggml_threadpool_params*);
typedef void (*threadpool_free_fn)(struct ggml_threadpool*);

static uint64_t NowNs(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void QuietLog(enum ggml_log_level level, const char* text, void* user) {
  (void)level;
  (void)text;
  (void)user;
}

// The ggml CPU variant the loader picked (libggml-cpu-<variant>.so), found among the
// shared objects mapped into this process.
static int FindCpuVariant(struct dl_phdr_info* info, size_t size, void* out) {
  (void)size;
  const char* slash = strrchr(info->dlpi_name, '/');
  const char* base = slash ? slash + 1 : info->dlpi_name;
  const char* prefix = "libggml-cpu-";
  if (strncmp(base, prefix, strlen(prefix)) == 0) {
    snprintf((char*)out, 64, "%s", base + strlen(prefix));
    char* dot = strstr((char*)out, ".so");
    if (dot) *dot = '\0';
    return 1;
  }
  return 0;
}

static int CompareDouble(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static llama_token RandomToken(int32_t n_vocab) {
  return rand() % n_vocab;
}

// llama-bench's test_prompt: the prompt in batches of n_batch random tokens.
static bool RunPrompt(struct llama_context* ctx, int n_prompt, int n_batch) {
  const struct llama_vocab* vocab = llama_model_get_vocab(llama_get_model(ctx));
  const int32_t n_vocab = llama_vocab_n_tokens(vocab);
  llama_token* tokens = malloc(sizeof(llama_token) * (size_t)n_batch);
  int done = 0;
  bool ok = true;
  while (done < n_prompt) {
    int n = n_prompt - done < n_batch ? n_prompt - done : n_batch;
    tokens[0] =
        done == 0 && llama_vocab_get_add_bos(vocab) ? llama_vocab_bos(vocab) : RandomToken(n_vocab);
    for (int i = 1; i < n; ++i) tokens[i] = RandomToken(n_vocab);
    if (llama_decode(ctx, llama_batch_get_one(tokens, n)) != 0) {
      fprintf(stderr, "llama_bench_lite: llama_decode failed on a prompt batch\n");
      ok = false;
      break;
    }
    done += n;
  }
  llama_synchronize(ctx);
  free(tokens);
  return ok;
}

// llama-bench's test_gen: n_gen decodes of one token each.
static bool RunGen(struct llama_context* ctx, int n_gen) {
  const struct llama_vocab* vocab = llama_model_get_vocab(llama_get_model(ctx));
  const int32_t n_vocab = llama_vocab_n_tokens(vocab);
  llama_token token =
      llama_vocab_get_add_bos(vocab) ? llama_vocab_bos(vocab) : RandomToken(n_vocab);
  for (int i = 0; i < n_gen; ++i) {
    if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0) {
      fprintf(stderr, "llama_bench_lite: llama_decode failed on a generated token\n");
      return false;
    }
    llama_synchronize(ctx);
    token = RandomToken(n_vocab);
  }
  return true;
}

typedef struct {
  const char* model_path;
  int n_prompt, n_gen, n_threads, reps;
  enum ggml_type kv_type;
  const char* backend_dir;
  bool json;
  const char* greedy_prompt;
  int n_predict;
} Options;

static struct llama_context* NewContext(struct llama_model* model, const Options* o, int n_ctx) {
  struct llama_context_params cp = llama_context_default_params();
  cp.n_ctx = (uint32_t)n_ctx;
  cp.n_batch = 2048;
  cp.n_ubatch = 512;
  cp.type_k = o->kv_type;
  cp.type_v = o->kv_type;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
  cp.n_threads = o->n_threads;
  cp.n_threads_batch = o->n_threads;
  return llama_init_from_model(model, cp);
}

// One test (pp when n_gen == 0, tg when n_prompt == 0); prints a line or a table row.
static bool RunTest(struct llama_model* model, const Options* o, int n_prompt, int n_gen,
                    const char* cpu_variant, threadpool_new_fn tp_new, threadpool_free_fn tp_free) {
  struct llama_context* ctx = NewContext(model, o, n_prompt + n_gen);
  if (!ctx) {
    fprintf(stderr, "llama_bench_lite: cannot create a context\n");
    return false;
  }
  struct ggml_threadpool_params tpp = ggml_threadpool_params_default(o->n_threads);
  struct ggml_threadpool* tp = tp_new(&tpp);
  if (!tp) {
    fprintf(stderr, "llama_bench_lite: cannot create a threadpool of %d\n", o->n_threads);
    llama_free(ctx);
    return false;
  }
  llama_attach_threadpool(ctx, tp, NULL);
  llama_set_n_threads(ctx, o->n_threads, o->n_threads);

  const int n_batch = 2048;
  bool ok = n_prompt > 0 ? RunPrompt(ctx, n_prompt, n_batch) : RunGen(ctx, 1);  // warm-up
  double* ts = calloc((size_t)o->reps, sizeof(double));
  for (int r = 0; ok && r < o->reps; ++r) {
    llama_memory_clear(llama_get_memory(ctx), false);
    uint64_t t0 = NowNs();
    ok = n_prompt > 0 ? RunPrompt(ctx, n_prompt, n_batch) : RunGen(ctx, n_gen);
    uint64_t t1 = NowNs();
    ts[r] = (double)(n_prompt + n_gen) * 1e9 / (double)(t1 - t0);
  }
  if (ok) {
    double mean = 0, var = 0;
    for (int r = 0; r < o->reps; ++r) mean += ts[r];
    mean /= o->reps;
    for (int r = 0; r < o->reps; ++r) var += (ts[r] - mean) * (ts[r] - mean);
    double sd = o->reps > 1 ? sqrt(var / (o->reps - 1)) : 0.0;
    double* sorted = malloc(sizeof(double) * (size_t)o->reps);
    memcpy(sorted, ts, sizeof(double) * (size_t)o->reps);
    qsort(sorted, (size_t)o->reps, sizeof(double), CompareDouble);
    double median =
        o->reps % 2 ? sorted[o->reps / 2] : 0.5 * (sorted[o->reps / 2 - 1] + sorted[o->reps / 2]);
    char test[32], desc[128];
    snprintf(test, sizeof test, n_prompt > 0 ? "pp%d" : "tg%d", n_prompt > 0 ? n_prompt : n_gen);
    llama_model_desc(model, desc, sizeof desc);
    if (o->json) {
      printf(
          "{\"engine\":\"llama.cpp\",\"test\":\"%s\",\"model\":\"%s\",\"model_type\":\"%s\","
          "\"model_size\":%llu,\"n_params\":%llu,\"threads\":%d,\"reps\":%d,\"kv_type\":\"%s\","
          "\"cpu_variant\":\"%s\",\"tokens_per_s_median\":%.6f,\"avg_ts\":%.6f,"
          "\"stddev_ts\":%.6f,\"samples_ts\":[",
          test, o->model_path, desc, (unsigned long long)llama_model_size(model),
          (unsigned long long)llama_model_n_params(model), o->n_threads, o->reps,
          ggml_type_name(o->kv_type), cpu_variant, median, mean, sd);
      for (int r = 0; r < o->reps; ++r) printf("%s%.6f", r ? "," : "", ts[r]);
      printf("]}\n");
    } else {
      printf("| %-40s | %-6s | %7d | %8s | %10.2f | %10.2f ± %.2f |\n", desc, test, o->n_threads,
             cpu_variant, median, mean, sd);
    }
    fflush(stdout);
    free(sorted);
  }
  free(ts);
  llama_free(ctx);
  tp_free(tp);
  return ok;
}

// Greedy continuation of a prompt: prompt ids and generated ids on stdout, for comparing the
// two engines' forward passes on the same file.
static bool RunGreedy(struct llama_model* model, const Options* o) {
  const struct llama_vocab* vocab = llama_model_get_vocab(model);
  const int32_t n_vocab = llama_vocab_n_tokens(vocab);
  int n_max = (int)strlen(o->greedy_prompt) + 8;
  llama_token* ids = malloc(sizeof(llama_token) * (size_t)(n_max + o->n_predict));
  int n = llama_tokenize(vocab, o->greedy_prompt, (int32_t)strlen(o->greedy_prompt), ids, n_max,
                         true, false);
  if (n < 0) {
    fprintf(stderr, "llama_bench_lite: tokenize failed\n");
    return false;
  }
  struct llama_context* ctx = NewContext(model, o, n + o->n_predict + 1);
  if (!ctx) return false;
  printf("prompt ids:");
  for (int i = 0; i < n; ++i) printf(" %d", ids[i]);
  printf("\ngenerated ids:");
  struct llama_batch batch = llama_batch_get_one(ids, n);
  for (int k = 0; k < o->n_predict; ++k) {
    if (llama_decode(ctx, batch) != 0) return false;
    const float* logits = llama_get_logits_ith(ctx, -1);
    int best = 0;
    for (int v = 1; v < n_vocab; ++v)
      if (logits[v] > logits[best]) best = v;
    if (k == 0) {
      // the gap between the first and second logits: how robust the argmax is
      int second = best == 0 ? 1 : 0;
      for (int v = 0; v < n_vocab; ++v)
        if (v != best && logits[v] > logits[second]) second = v;
      fprintf(stderr, "first step: top %d (%.5f), second %d (%.5f)\n", best, logits[best], second,
              logits[second]);
    }
    printf(" %d", best);
    ids[n + k] = best;
    batch = llama_batch_get_one(&ids[n + k], 1);
  }
  printf("\n");
  llama_free(ctx);
  free(ids);
  return true;
}

static void Usage(void) {
  fprintf(stderr,
          "usage: llama_bench_lite -m FILE [-p 512] [-n 128] [-t 2] [-r 5] [--kv-type f16|f32]\n"
          "                        [--backend-dir DIR] [--json] [-v]\n"
          "       llama_bench_lite -m FILE --greedy TEXT [--n-predict 16]\n");
  exit(2);
}

int main(int argc, char** argv) {
  Options o = {NULL, 512, 128, 2, 5, GGML_TYPE_F16, NULL, false, NULL, 16};
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-v")) {
      verbose = true;
      continue;
    }
    if (!strcmp(a, "--json")) {
      o.json = true;
      continue;
    }
    if (!next) Usage();
    ++i;
    if (!strcmp(a, "-m"))
      o.model_path = next;
    else if (!strcmp(a, "-p"))
      o.n_prompt = atoi(next);
    else if (!strcmp(a, "-n"))
      o.n_gen = atoi(next);
    else if (!strcmp(a, "-t"))
      o.n_threads = atoi(next);
    else if (!strcmp(a, "-r"))
      o.reps = atoi(next);
    else if (!strcmp(a, "--backend-dir"))
      o.backend_dir = next;
    else if (!strcmp(a, "--greedy"))
      o.greedy_prompt = next;
    else if (!strcmp(a, "--n-predict"))
      o.n_predict = atoi(next);
    else if (!strcmp(a, "--kv-type")) {
      if (!strcmp(next, "f16"))
        o.kv_type = GGML_TYPE_F16;
      else if (!strcmp(next, "f32"))
        o.kv_type = GGML_TYPE_F32;
      else
        Usage();
    } else
      Usage();
  }
  if (!o.model_path || o.reps < 1 || o.n_threads < 1) Usage();

  if (!verbose) llama_log_set(QuietLog, NULL);
  // The CPU backend is one of several libggml-cpu-<variant>.so; the loader scores each
  // against this CPU's features and keeps the best.
  if (o.backend_dir)
    ggml_backend_load_all_from_path(o.backend_dir);
  else
    ggml_backend_load_all();
  ggml_backend_dev_t cpu_dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
  if (!cpu_dev) {
    fprintf(stderr, "llama_bench_lite: no CPU backend loaded (try --backend-dir)\n");
    return 1;
  }
  ggml_backend_reg_t cpu_reg = ggml_backend_dev_backend_reg(cpu_dev);
  threadpool_new_fn tp_new =
      (threadpool_new_fn)ggml_backend_reg_get_proc_address(cpu_reg, "ggml_threadpool_new");
  threadpool_free_fn tp_free =
      (threadpool_free_fn)ggml_backend_reg_get_proc_address(cpu_reg, "ggml_threadpool_free");
  char cpu_variant[64] = "builtin";
  dl_iterate_phdr(FindCpuVariant, cpu_variant);
  llama_backend_init();
  fprintf(stderr, "llama_bench_lite: ggml CPU variant %s; %s\n", cpu_variant,
          llama_print_system_info());

  struct llama_model_params mp = llama_model_default_params();
  struct llama_model* model = llama_model_load_from_file(o.model_path, mp);
  if (!model) {
    fprintf(stderr, "llama_bench_lite: cannot load %s (run with -v for llama.cpp's log)\n",
            o.model_path);
    return 1;
  }
  bool ok = true;
  if (o.greedy_prompt) {
    ok = RunGreedy(model, &o);
  } else {
    if (!o.json) {
      printf("| %-40s | %-6s | %7s | %8s | %10s | %19s |\n", "model", "test", "threads", "variant",
             "median t/s", "mean t/s");
      printf("|%s|%s|%s|%s|%s|%s|\n", "------------------------------------------", "--------",
             "---------", "----------", "------------", "---------------------");
    }
    if (o.n_prompt > 0) ok = RunTest(model, &o, o.n_prompt, 0, cpu_variant, tp_new, tp_free);
    if (ok && o.n_gen > 0) ok = RunTest(model, &o, 0, o.n_gen, cpu_variant, tp_new, tp_free);
  }
  llama_model_free(model);
  llama_backend_free();
  return ok ? 0 : 1;
}
