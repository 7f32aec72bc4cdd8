// Quantizes one GGUF file with llama.cpp's own quantizer, llama_model_quantize() in a
// prebuilt libllama.so, with llama-quantize's default parameters (no importance matrix, the
// type mixes of the *_M types, the output tensor quantized): the files people download are
// written this way. tools/make_llama_quantize_fixture.sh builds it against the npm package's
// libllama and runs it once per type to make tests/data/llama-quantize/; nothing of llama.cpp
// is committed (its llama.h comes from the package at build time).
//
// Usage: llama_quantize_fixture INPUT.gguf OUTPUT.gguf TYPE [BACKEND_DIR]
//   TYPE: q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "ggml-backend.h"
#include "llama.h"

struct TypeName {
  const char* name;
  enum llama_ftype ftype;
};

static const struct TypeName kTypes[] = {
    {"q4_0", LLAMA_FTYPE_MOSTLY_Q4_0},     {"q4_1", LLAMA_FTYPE_MOSTLY_Q4_1},
    {"q5_0", LLAMA_FTYPE_MOSTLY_Q5_0},     {"q5_1", LLAMA_FTYPE_MOSTLY_Q5_1},
    {"q8_0", LLAMA_FTYPE_MOSTLY_Q8_0},     {"q2_k", LLAMA_FTYPE_MOSTLY_Q2_K},
    {"q3_k_s", LLAMA_FTYPE_MOSTLY_Q3_K_S}, {"q3_k_m", LLAMA_FTYPE_MOSTLY_Q3_K_M},
    {"q3_k_l", LLAMA_FTYPE_MOSTLY_Q3_K_L}, {"q4_k_s", LLAMA_FTYPE_MOSTLY_Q4_K_S},
    {"q4_k_m", LLAMA_FTYPE_MOSTLY_Q4_K_M}, {"q5_k_s", LLAMA_FTYPE_MOSTLY_Q5_K_S},
    {"q5_k_m", LLAMA_FTYPE_MOSTLY_Q5_K_M}, {"q6_k", LLAMA_FTYPE_MOSTLY_Q6_K},
};

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    fprintf(stderr, "usage: %s INPUT.gguf OUTPUT.gguf TYPE [BACKEND_DIR]\n", argv[0]);
    return 2;
  }
  const struct TypeName* type = NULL;
  for (size_t i = 0; i < sizeof kTypes / sizeof kTypes[0]; ++i) {
    if (strcasecmp(argv[3], kTypes[i].name) == 0) type = &kTypes[i];
  }
  if (!type) {
    fprintf(stderr, "llama_quantize_fixture: unknown type %s\n", argv[3]);
    return 2;
  }
  // llama-quantize loads the backends first; the quantizer itself runs on the CPU in
  // ggml-base (ggml_quantize_chunk), whichever CPU variant is loaded.
  if (argc == 5)
    ggml_backend_load_all_from_path(argv[4]);
  else
    ggml_backend_load_all();
  llama_backend_init();
  llama_model_quantize_params params = llama_model_quantize_default_params();
  params.ftype = type->ftype;
  params.nthread = 1;  // the bytes do not depend on it; one thread keeps the run quiet
  const uint32_t rc = llama_model_quantize(argv[1], argv[2], &params);
  llama_backend_free();
  if (rc != 0) {
    fprintf(stderr, "llama_quantize_fixture: llama_model_quantize failed (%u)\n", rc);
    return 1;
  }
  return 0;
}
