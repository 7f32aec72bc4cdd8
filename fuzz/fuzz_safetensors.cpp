// libFuzzer target for the safetensors reader. A starling::Error from Parse is the expected answer
// to bad input; any other exception, a crash or a sanitizer report is a bug. Once a file has
// parsed, every tensor's bytes must be exactly size_bytes long, lie inside the input, not overlap
// another tensor's, and survive a writer round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::optional<starling::SafetensorsFile> file;
  try {
    file.emplace(starling::SafetensorsFile::Parse(bytes, "fuzz.safetensors"));
  } catch (const starling::Error&) {
    return 0;  // rejected input: the expected outcome for most mutations
  }
  starling::SafetensorsWriter writer;
  const char* previous_end = nullptr;
  for (const starling::SafetensorsTensor& tensor : file->tensors()) {
    const std::string_view view = file->Data(tensor);
    if (view.size() != tensor.size_bytes) __builtin_trap();
    if (view.data() < bytes.data() || view.data() + view.size() > bytes.data() + bytes.size()) {
      __builtin_trap();
    }
    if (tensor.offset < file->data_offset()) __builtin_trap();
    // tensors() is in data order, and non-empty tensors may not overlap.
    if (!view.empty()) {
      if (previous_end != nullptr && view.data() < previous_end) __builtin_trap();
      previous_end = view.data() + view.size();
    }
    if (file->Find(tensor.name) != &tensor) __builtin_trap();
    writer.AddTensor(tensor.name, tensor.dtype, tensor.shape, view);
  }
  for (const auto& [key, value] : file->metadata()) writer.SetMetadata(key, value);
  const std::string copy = writer.Finish();
  const starling::SafetensorsFile again = starling::SafetensorsFile::Parse(copy, "copy");
  if (again.tensors().size() != file->tensors().size()) __builtin_trap();
  if (again.metadata() != file->metadata()) __builtin_trap();
  for (const starling::SafetensorsTensor& tensor : file->tensors()) {
    const starling::SafetensorsTensor* other = again.Find(tensor.name);
    if (other == nullptr || other->shape != tensor.shape || other->dtype != tensor.dtype) {
      __builtin_trap();
    }
    if (again.Data(*other) != file->Data(tensor)) __builtin_trap();
  }
  return 0;
}
