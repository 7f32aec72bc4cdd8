#!/usr/bin/env bash
# Builds the starling CLI and the tests of the CLI and the server with AddressSanitizer and
# UndefinedBehaviorSanitizer (gcc, -O1 -g1, as ASan's docs advise: a third of the -O2 -g compile
# time) into build-asan/ and runs them: a use-after-free, an
# overflow, a leak or undefined behaviour in what the CLI and the server do fails the run.
# The subset keeps CI's time down (2 cores): the CLI's end-to-end tests (cli_test), the
# OpenAI request parser (openai_api_test), the tokenizer, the checkpoint readers, and the
# server's end-to-end scripts (server_e2e, server_manners). Training, kernels and the browser
# test run only in the Release build; valgrind's memcheck cannot run an ASan binary.
#   [JOBS=N] scripts/sanitize.sh [CTEST_ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [ ! -f build-asan/CMakeCache.txt ]; then
  cmake -S . -B build-asan "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -DNDEBUG" -DSTARLING_SANITIZE=ON -DSTARLING_WERROR=ON -DSTARLING_BUILD_BENCH=OFF
fi
tests=(starling cli_test openai_api_test tokenizer_test torch_checkpoint_test gguf_test)
cmake --build build-asan -j "${JOBS:-$(nproc)}" --target "${tests[@]}"
# halt_on_error: the first report fails the test; detect_leaks: leaks are failures too.
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd build-asan
# Left to the Release suite: Cli.ThreadsThatCannotStart... and Cli.ContextBeyondUlimit... run
# starling under `ulimit -v`, which leaves no room for ASan's shadow memory; server_limits
# checks response bytes of floods that race the server's close at ASan's speed (2 of its checks
# saw a cut response, with no sanitizer report).
ctest --output-on-failure -j "${JOBS:-$(nproc)}" \
  -R '^(Cli\.|OpenAi|Tokenizer|TorchCheckpoint|Gguf\.|server_e2e$|server_manners$)' \
  -E '^Cli\.(ThreadsThatCannotStartAreAnErrorNotACrash|ContextBeyondUlimitIsRefusedBeforeAllocating)$' "$@"
