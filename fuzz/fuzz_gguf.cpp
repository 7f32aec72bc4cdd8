// libFuzzer target for the GGUF reader. A starling::Error from Parse is the expected answer to bad
// input; any other exception, a crash or a sanitizer report is a bug. Once a file has parsed,
// nothing may throw at all: the accessors and a writer round trip must accept what Parse accepted.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.h"
#include "formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::optional<starling::GgufFile> file;
  try {
    file.emplace(starling::GgufFile::Parse(bytes, "fuzz.gguf"));
  } catch (const starling::Error&) {
    return 0;  // rejected input: the expected outcome for most mutations
  }
  for (const starling::GgufKeyValue& kv : file->metadata()) {
    (void)starling::GgufDescribeType(kv.value);
    (void)starling::GgufValueToString(kv.value, 4);
  }
  for (const starling::GgufTensorInfo& tensor : file->tensors()) {
    if (file->TensorData(tensor).size() != tensor.size_bytes) __builtin_trap();
    if (file->FindTensor(tensor.name) != &tensor) __builtin_trap();
  }
  starling::GgufWriter writer;
  for (const starling::GgufKeyValue& kv : file->metadata()) writer.AddValue(kv.key, kv.value);
  const std::string copy = writer.Finish();
  const starling::GgufFile again = starling::GgufFile::Parse(copy, "copy.gguf");
  if (again.metadata().size() != file->metadata().size()) __builtin_trap();
  return 0;
}
