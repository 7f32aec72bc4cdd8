#include "formats/torch_checkpoint.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "error_message.h"
#include "formats/zip_reader.h"
#include "test_dir.h"

namespace starling {
namespace {

// ---------------------------------------------------------------------------------------------
// Builders: little-endian fields, a pickle writer, a zip writer laid out the way torch.save does.

void Put16(std::string* out, uint64_t v) {
  out->append(reinterpret_cast<const char*>(&v), 2);
}
void Put32(std::string* out, uint64_t v) {
  out->append(reinterpret_cast<const char*>(&v), 4);
}
void Put64(std::string* out, uint64_t v) {
  out->append(reinterpret_cast<const char*>(&v), 8);
}

std::string Floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}
std::string Halves(const std::vector<uint16_t>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(uint16_t));
}

std::string FromHex(std::string_view hex) {
  std::string out;
  for (size_t k = 0; k + 1 < hex.size(); k += 2) {
    out += static_cast<char>(std::stoi(std::string(hex.substr(k, 2)), nullptr, 16));
  }
  return out;
}

// Pickle opcodes, written by hand (torch.save's pickler, protocol 2, emits the same ones).
class Pickle {
 public:
  Pickle& Raw(std::string_view bytes) {
    bytes_ += bytes;
    return *this;
  }
  Pickle& Op(uint8_t code) {
    bytes_ += static_cast<char>(code);
    return *this;
  }
  Pickle& Proto() { return Op(0x80).Op(2); }
  Pickle& Mark() { return Op('('); }
  Pickle& Tuple() { return Op('t'); }
  Pickle& EmptyTuple() { return Op(')'); }
  Pickle& EmptyDict() { return Op('}'); }
  Pickle& Reduce() { return Op('R'); }
  Pickle& SetItem() { return Op('s'); }
  Pickle& SetItems() { return Op('u'); }
  Pickle& Build() { return Op('b'); }
  Pickle& False() { return Op(0x89); }
  Pickle& PersId() { return Op('Q'); }
  Pickle& Stop() { return Op('.'); }
  Pickle& Put(uint8_t index) { return Op('q').Op(index); }
  Pickle& Get(uint8_t index) { return Op('h').Op(index); }
  Pickle& Str(std::string_view text) {
    Op('X');
    Put32(&bytes_, text.size());
    return Raw(text);
  }
  Pickle& Int(int64_t v) {
    if (v >= 0 && v < 256) return Op('K').Op(static_cast<uint8_t>(v));
    if (v >= 0 && v < 65536) {
      Op('M');
      Put16(&bytes_, static_cast<uint64_t>(v));
      return *this;
    }
    if (v >= INT32_MIN && v <= INT32_MAX) {
      Op('J');
      Put32(&bytes_, static_cast<uint64_t>(v));
      return *this;
    }
    Op(0x8a).Op(8);
    Put64(&bytes_, static_cast<uint64_t>(v));
    return *this;
  }
  Pickle& Global(std::string_view module, std::string_view name) {
    return Op('c').Raw(module).Raw("\n").Raw(name).Raw("\n");
  }
  Pickle& IntTuple(const std::vector<int64_t>& values) {
    Mark();
    for (const int64_t v : values) Int(v);
    return Tuple();
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

// One state dict entry: _rebuild_tensor_v2(('storage', torch.<cls>, key, 'cpu', numel),
// offset, shape, stride, False, OrderedDict()).
struct Spec {
  std::string name;
  std::string cls = "FloatStorage";
  std::string key;
  int64_t numel = 0;
  int64_t offset = 0;
  std::vector<int64_t> shape;
  std::optional<std::vector<int64_t>> stride;  // contiguous when absent
};

std::vector<int64_t> ContiguousStride(const std::vector<int64_t>& shape) {
  std::vector<int64_t> stride(shape.size());
  int64_t step = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    stride[d] = step;
    step *= shape[d];
  }
  return stride;
}

void EmitTensor(Pickle& p, const Spec& s) {
  p.Global("torch._utils", "_rebuild_tensor_v2").Mark();
  p.Mark()
      .Str("storage")
      .Global("torch", s.cls)
      .Str(s.key)
      .Str("cpu")
      .Int(s.numel)
      .Tuple()
      .PersId();
  p.Int(s.offset).IntTuple(s.shape).IntTuple(s.stride ? *s.stride : ContiguousStride(s.shape));
  p.False().Global("collections", "OrderedDict").EmptyTuple().Reduce();
  p.Tuple().Reduce();
}

// A whole state dict pickle: {name: tensor, ...} as one SETITEMS, then STOP.
std::string StateDict(const std::vector<Spec>& specs) {
  Pickle p;
  p.Proto().EmptyDict().Mark();
  for (const Spec& s : specs) {
    p.Str(s.name);
    EmitTensor(p, s);
  }
  return p.SetItems().Stop().bytes();
}

struct ZipLayout {
  uint64_t align = 64;        // torch pads the local extra field so that data starts aligned
  bool descriptors = true;    // flag bit 3: local sizes 0, a data descriptor after the data
  bool zip64_end = true;      // the zip64 end record and locator (torch always writes them)
  bool zip64_extras = false;  // central sizes/offsets saturated, real ones in zip64 extra fields
  uint64_t skew = 0;          // data starts `skew` bytes after a multiple of `align`
};

// zlib's CRC-32, as zip writers (and torch.save) compute it.
uint32_t Crc(std::string_view data) {
  return static_cast<uint32_t>(
      crc32_z(0, reinterpret_cast<const Bytef*>(data.data()), data.size()));
}

class ZipWriter {
 public:
  void Add(std::string name, std::string data, uint16_t method = 0) {
    entries_.push_back(Entry{std::move(name), std::move(data), method, std::nullopt});
  }
  // A central directory entry whose local header is at `local_offset` (written by nobody).
  void AddCentralOnly(std::string name, uint64_t local_offset, uint64_t size) {
    entries_.push_back(Entry{std::move(name), std::string(size, '\0'), 0, local_offset});
  }

  std::string Finish(const ZipLayout& layout = {}) {
    std::string out;
    const uint16_t flags = layout.descriptors ? 0x0808 : 0x0800;
    std::vector<uint64_t> locals;
    data_offsets_.clear();
    for (const Entry& e : entries_) {
      if (e.central_only) {
        locals.push_back(*e.central_only);
        data_offsets_.push_back(0);
        continue;
      }
      locals.push_back(out.size());
      std::string extra;
      if (layout.align > 1) {
        const uint64_t start = out.size() + 30 + e.name.size() + 4;
        const uint64_t pad = (layout.align - start % layout.align) % layout.align + layout.skew;
        extra = "FB";
        Put16(&extra, pad);
        extra += std::string(pad, 'Z');
      }
      Put32(&out, 0x04034b50);
      Put16(&out, 20);
      Put16(&out, flags);
      Put16(&out, e.method);
      Put32(&out, 0);  // time, date
      Put32(&out, layout.descriptors ? 0 : Crc(e.data));
      Put32(&out, layout.descriptors ? 0 : e.data.size());
      Put32(&out, layout.descriptors ? 0 : e.data.size());
      Put16(&out, e.name.size());
      Put16(&out, extra.size());
      out += e.name;
      out += extra;
      data_offsets_.push_back(out.size());
      out += e.data;
      if (layout.descriptors) {
        Put32(&out, 0x08074b50);
        Put32(&out, Crc(e.data));
        Put32(&out, e.data.size());
        Put32(&out, e.data.size());
      }
    }
    const uint64_t cd_offset = out.size();
    const bool sat = layout.zip64_extras;
    for (size_t k = 0; k < entries_.size(); ++k) {
      const Entry& e = entries_[k];
      std::string extra;
      if (sat) {
        Put16(&extra, 1);
        Put16(&extra, 24);
        Put64(&extra, e.data.size());
        Put64(&extra, e.data.size());
        Put64(&extra, locals[k]);
      }
      Put32(&out, 0x02014b50);
      Put16(&out, 45);
      Put16(&out, 45);
      Put16(&out, flags);
      Put16(&out, e.method);
      Put32(&out, 0);  // time, date
      Put32(&out, Crc(e.data));
      Put32(&out, sat ? 0xFFFFFFFF : e.data.size());
      Put32(&out, sat ? 0xFFFFFFFF : e.data.size());
      Put16(&out, e.name.size());
      Put16(&out, extra.size());
      Put16(&out, 0);  // comment
      Put16(&out, 0);  // disk
      Put16(&out, 0);  // internal attributes
      Put32(&out, 0);  // external attributes
      Put32(&out, sat ? 0xFFFFFFFF : locals[k]);
      out += e.name;
      out += extra;
    }
    const uint64_t cd_size = out.size() - cd_offset;
    const uint64_t n = entries_.size();
    if (layout.zip64_end) {
      const uint64_t record = out.size();
      Put32(&out, 0x06064b50);
      Put64(&out, 44);
      Put16(&out, 45);
      Put16(&out, 45);
      Put32(&out, 0);
      Put32(&out, 0);
      Put64(&out, n);
      Put64(&out, n);
      Put64(&out, cd_size);
      Put64(&out, cd_offset);
      Put32(&out, 0x07064b50);
      Put32(&out, 0);
      Put64(&out, record);
      Put32(&out, 1);
    }
    Put32(&out, 0x06054b50);
    Put32(&out, 0);  // disks
    Put16(&out, sat ? 0xFFFF : n);
    Put16(&out, sat ? 0xFFFF : n);
    Put32(&out, sat ? 0xFFFFFFFF : cd_size);
    Put32(&out, sat ? 0xFFFFFFFF : cd_offset);
    Put16(&out, 0);
    return out;
  }

  // Where entry `k`'s data starts in the last Finish().
  uint64_t data_offset(size_t k) const { return data_offsets_[k]; }

 private:
  struct Entry {
    std::string name;
    std::string data;
    uint16_t method;
    std::optional<uint64_t> central_only;
  };
  std::vector<Entry> entries_;
  std::vector<uint64_t> data_offsets_;
};

struct Storage {
  std::string key;
  std::string bytes;
};

// A checkpoint as torch.save lays it out: <archive>/data.pkl, the storages, <archive>/version.
std::string Checkpoint(const std::string& pickle, const std::vector<Storage>& storages,
                       const ZipLayout& layout = {}, const std::string& archive = "archive",
                       std::optional<std::string> byteorder = std::nullopt) {
  ZipWriter zip;
  zip.Add(archive + "/data.pkl", pickle);
  if (byteorder) zip.Add(archive + "/byteorder", *byteorder);
  for (const Storage& s : storages) zip.Add(archive + "/data/" + s.key, s.bytes);
  zip.Add(archive + "/version", "3\n");
  return zip.Finish(layout);
}

// A small checkpoint with every dtype, a storage offset, a scalar, an empty tensor and two
// tensors over one storage.
std::vector<Spec> SmallSpecs() {
  return {
      {"w", "FloatStorage", "0", 6, 0, {2, 3}, std::nullopt},
      {"half", "HalfStorage", "1", 8, 2, {4}, std::nullopt},
      {"scalar", "BFloat16Storage", "2", 1, 0, {}, std::nullopt},
      {"empty", "FloatStorage", "0", 6, 6, {0, 3}, std::nullopt},
      {"w.flat", "FloatStorage", "0", 6, 0, {6}, std::nullopt},
  };
}
std::vector<Storage> SmallStorages() {
  return {{"0", Floats({0.5f, -1, 2, 3.25f, -4, 8})},
          {"1", Halves({0x3c00, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600, 0x4700, 0x4800})},
          {"2", Halves({0x3f80})}};
}
std::string SmallCheckpoint(const ZipLayout& layout = {}) {
  return Checkpoint(StateDict(SmallSpecs()), SmallStorages(), layout);
}

// The message of the Error that parsing `bytes` throws ("" if it parses).
std::string ParseError(const std::string& bytes) {
  return testing::ErrorMessage([&] { TorchCheckpoint::Parse(bytes, "test.bin"); });
}

// Asserts that parsing `bytes` fails with a message naming the file and containing every part.
void ExpectParseError(const std::string& bytes, std::initializer_list<std::string_view> parts) {
  testing::ExpectErrorNaming(ParseError(bytes), "test.bin", parts);
}

// A checkpoint whose pickle is `pickle` and whose storages are the small ones.
std::string WithPickle(const std::string& pickle) {
  return Checkpoint(pickle, SmallStorages());
}

void ExpectPickleError(const Pickle& pickle, std::initializer_list<std::string_view> parts) {
  ExpectParseError(WithPickle(pickle.bytes()), parts);
}

uint32_t U32At(const void* data, size_t index) {
  uint32_t v;
  std::memcpy(&v, static_cast<const char*>(data) + 4 * index, 4);
  return v;
}
uint16_t U16At(const void* data, size_t index) {
  uint16_t v;
  std::memcpy(&v, static_cast<const char*>(data) + 2 * index, 2);
  return v;
}

// ---------------------------------------------------------------------------------------------
// The real fixtures (tests/data/tiny-rm): vocab 32000, hidden 64, 2 layers, intermediate 172.

const std::string kTinyRm = std::string(STARLING_TEST_DATA_DIR) + "/tiny-rm";

// The decoder's parameter names in state dict order, without the module prefix.
std::vector<std::string> DecoderNames() {
  std::vector<std::string> names = {"embed_tokens.weight", "norm.weight"};
  for (int layer = 0; layer < 2; ++layer) {
    const std::string l = "layers." + std::to_string(layer) + ".";
    for (const char* n :
         {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
          "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
      names.push_back(l + n);
    }
  }
  return names;
}

std::vector<int64_t> ExpectedShape(std::string_view name) {
  if (name.ends_with("embed_tokens.weight") || name.ends_with("lm_head.weight")) return {32000, 64};
  if (name.ends_with("layernorm.weight") || name.ends_with("norm.weight")) return {64};
  if (name.ends_with("_proj.weight")) {
    if (name.ends_with("gate_proj.weight") || name.ends_with("up_proj.weight")) return {172, 64};
    if (name.ends_with("down_proj.weight")) return {64, 172};
    return {64, 64};
  }
  if (name == "v_head.weight") return {1, 64};
  return {};
}

void ExpectLayout(const TorchCheckpoint& c, const std::vector<std::string>& names, DType dtype) {
  ASSERT_EQ(c.tensors().size(), names.size());
  for (size_t k = 0; k < names.size(); ++k) {
    const TorchTensor& t = c.tensors()[k];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, names[k]);
    EXPECT_EQ(t.dtype, dtype);
    EXPECT_EQ(t.shape, ExpectedShape(names[k]));
    uint64_t numel = 1;
    for (const int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    EXPECT_EQ(t.size_bytes, numel * DTypeSize(dtype));
    EXPECT_EQ(t.storage_offset, 0u);
    // torch.save starts every entry 64-byte aligned, and the mapping is page aligned.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 64, 0u);
    EXPECT_EQ(c.Find(t.name), &t);
  }
}

TEST(TorchCheckpoint, RealFloat32RewardModel) {
  const TorchCheckpoint c = TorchCheckpoint::Open(kTinyRm + "/rm-a/pytorch_model.bin");
  EXPECT_EQ(c.archive_name(), "pytorch_model");
  EXPECT_EQ(c.source(), kTinyRm + "/rm-a/pytorch_model.bin");
  std::vector<std::string> names;
  for (const std::string& n : DecoderNames()) {
    names.push_back("transformer." + n);
    names.push_back("model.model." + n);
  }
  names.push_back("model.lm_head.weight");
  names.push_back("v_head.weight");
  ExpectLayout(c, names, DType::kF32);

  // transformer.* and model.model.* are one module under two names: the same storages.
  for (const std::string& n : DecoderNames()) {
    const TorchTensor* a = c.Find("transformer." + n);
    const TorchTensor* b = c.Find("model.model." + n);
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(a->storage, b->storage) << n;
    EXPECT_EQ(a->data, b->data) << n;
    EXPECT_EQ(a->bytes(), b->bytes()) << n;
  }
  // The LM head is not tied to the embedding.
  EXPECT_NE(c.Find("model.lm_head.weight")->storage,
            c.Find("transformer.embed_tokens.weight")->storage);
  EXPECT_EQ(c.Find("no.such.tensor"), nullptr);

  // Bit patterns read independently at authoring time, with Python's zipfile + struct on
  // pytorch_model/data/<key> (keys from pickletools.dis of data.pkl; the pickle never loaded):
  // struct.unpack_from('<I', zf.read('pytorch_model/data/0'), 4 * index).
  const TorchTensor* embed = c.Find("transformer.embed_tokens.weight");
  EXPECT_EQ(U32At(embed->data, 0), 0x3f52d593u);                // [0, 0] = 0.82357138
  EXPECT_EQ(U32At(embed->data, 66), 0xbf0f9248u);               // [1, 2] = -0.56082582
  EXPECT_EQ(U32At(embed->data, 31999 * 64 + 63), 0x3ef2a3f7u);  // [31999, 63] = 0.47390720
  const TorchTensor* v_head = c.Find("v_head.weight");
  EXPECT_EQ(U32At(v_head->data, 0), 0x3dd02b15u);   // [0, 0] = 0.10164467
  EXPECT_EQ(U32At(v_head->data, 63), 0x3d4b1562u);  // [0, 63] = 0.04958094
  EXPECT_EQ(U32At(c.Find("model.model.layers.1.mlp.down_proj.weight")->data, 63 * 172 + 171),
            0xbd78cf27u);  // [63, 171] = -0.06074443
  EXPECT_EQ(U32At(c.Find("model.lm_head.weight")->data, 12345 * 64 + 7), 0x3ea3f2ebu);
  EXPECT_EQ(U32At(c.Find("transformer.norm.weight")->data, 5), 0x3f8c0bbfu);  // 1.09410846
}

TEST(TorchCheckpoint, RealBFloat16RewardModel) {
  const TorchCheckpoint c = TorchCheckpoint::Open(kTinyRm + "/rm-b/pytorch_model.bin");
  EXPECT_EQ(c.archive_name(), "pytorch_model");
  std::vector<std::string> names;
  for (const std::string& n : DecoderNames()) names.push_back("transformer." + n);
  names.push_back("v_head.weight");
  ExpectLayout(c, names, DType::kBF16);
  // As above, with struct.unpack_from('<H', ..., 2 * index).
  const TorchTensor* embed = c.Find("transformer.embed_tokens.weight");
  EXPECT_EQ(U16At(embed->data, 0), 0x3f91);                     // 1.1328125
  EXPECT_EQ(U16At(embed->data, 66), 0x3fc8);                    // 1.5625
  EXPECT_EQ(U16At(embed->data, 31999 * 64 + 63), 0x3f04);       // 0.515625
  EXPECT_EQ(U16At(c.Find("v_head.weight")->data, 0), 0x3e71);   // 0.2353515625
  EXPECT_EQ(U16At(c.Find("v_head.weight")->data, 63), 0x3e0d);  // 0.1376953125
  EXPECT_EQ(U16At(c.Find("transformer.layers.1.mlp.down_proj.weight")->data, 63 * 172 + 171),
            0x3d07);                                                     // 0.032958984375
  EXPECT_EQ(U16At(c.Find("transformer.norm.weight")->data, 5), 0x3f76);  // 0.9609375
}

// ---------------------------------------------------------------------------------------------
// Synthetic checkpoints

TEST(TorchCheckpoint, SmallCheckpointEveryLayout) {
  for (const ZipLayout& layout :
       {ZipLayout{}, ZipLayout{64, false, true, false}, ZipLayout{64, true, false, false},
        ZipLayout{64, true, true, true}, ZipLayout{8, false, false, false}}) {
    SCOPED_TRACE(::testing::Message()
                 << "align " << layout.align << " descriptors " << layout.descriptors
                 << " zip64 end " << layout.zip64_end << " zip64 extras " << layout.zip64_extras);
    const std::string bytes = SmallCheckpoint(layout);
    const TorchCheckpoint c = TorchCheckpoint::Parse(bytes, "small.bin");
    EXPECT_EQ(c.source(), "small.bin");
    EXPECT_EQ(c.archive_name(), "archive");
    ASSERT_EQ(c.tensors().size(), 5u);
    const std::vector<Storage> storages = SmallStorages();

    const TorchTensor& w = c.tensors()[0];
    EXPECT_EQ(w.name, "w");
    EXPECT_EQ(w.dtype, DType::kF32);
    EXPECT_EQ(w.shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(w.bytes(), storages[0].bytes);
    EXPECT_EQ(w.storage, "0");

    const TorchTensor& half = c.tensors()[1];
    EXPECT_EQ(half.dtype, DType::kF16);
    EXPECT_EQ(half.shape, (std::vector<int64_t>{4}));
    EXPECT_EQ(half.storage_offset, 2u);
    EXPECT_EQ(half.bytes(), storages[1].bytes.substr(4, 8));

    const TorchTensor& scalar = c.tensors()[2];
    EXPECT_EQ(scalar.dtype, DType::kBF16);
    EXPECT_TRUE(scalar.shape.empty());
    EXPECT_EQ(scalar.bytes(), storages[2].bytes);

    const TorchTensor& empty = c.tensors()[3];
    EXPECT_EQ(empty.shape, (std::vector<int64_t>{0, 3}));
    EXPECT_EQ(empty.size_bytes, 0u);

    const TorchTensor& flat = c.tensors()[4];
    EXPECT_EQ(flat.data, w.data);
    EXPECT_EQ(flat.bytes(), w.bytes());
    // Data points into the parsed buffer.
    for (const TorchTensor& t : c.tensors()) {
      EXPECT_GE(static_cast<const char*>(t.data), bytes.data());
      EXPECT_LE(static_cast<const char*>(t.data) + t.size_bytes, bytes.data() + bytes.size());
    }
  }
}

// CPython's own pickler (dump only, nothing loaded), given stand-ins for torch's globals and a
// persistent_id that returns the storage tuples, writes exactly what torch.save writes for
// an OrderedDict state dict with _metadata (BUILD), one tensor under two names (BINGET) and
// single-item batches (SETITEM). Generated at authoring time with pickle.Pickler(protocol=2).dump
// of OrderedDict(lin.weight=T('0', 6, (2, 3)), half=T(HalfStorage '1', 8, offset 2, (4,)),
// scalar=T(BFloat16Storage '2', 1, ()), alias.weight=<lin.weight again>) with
// _metadata = OrderedDict([('', {'version': 1}), ('lin', {'version': 1})]).
constexpr std::string_view kCPythonPickle =
    "800263636f6c6c656374696f6e730a4f726465726564446963740a71002952710128580a0000006c696e2e77"
    "6569676874710263746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a71032828"
    "580700000073746f72616765710463746f7263680a466c6f617453746f726167650a71055801000000307106"
    "580300000063707571074b06747108514b004b024b038671094b034b0186710a8968002952710b74710c5271"
    "0d580400000068616c66710e68032828680463746f7263680a48616c6653746f726167650a710f5801000000"
    "31711068074b08747111514b024b048571124b01857113896800295271147471155271165806000000736361"
    "6c6172711768032828680463746f7263680a42466c6f6174313653746f726167650a71185801000000327119"
    "68074b0174711a514b0029298968002952711b74711c52711d580c000000616c6961732e776569676874711e"
    "680d757d711f58090000005f6d65746164617461712068002952712128580000000071227d71235807000000"
    "76657273696f6e71244b017358030000006c696e71257d712668244b01737573622e";

TEST(TorchCheckpoint, CPythonPicklerOutputWithMetadata) {
  const std::string pickle = FromHex(kCPythonPickle);
  ASSERT_EQ(pickle.size(), 430u);
  const std::string bytes =
      Checkpoint(pickle, SmallStorages(), {}, "pytorch_model", std::string("little"));
  const TorchCheckpoint c = TorchCheckpoint::Parse(bytes, "cpython.bin");
  EXPECT_EQ(c.archive_name(), "pytorch_model");
  ASSERT_EQ(c.tensors().size(), 4u);
  EXPECT_EQ(c.tensors()[0].name, "lin.weight");
  EXPECT_EQ(c.tensors()[1].name, "half");
  EXPECT_EQ(c.tensors()[2].name, "scalar");
  EXPECT_EQ(c.tensors()[3].name, "alias.weight");
  EXPECT_EQ(c.tensors()[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(c.tensors()[0].bytes(), SmallStorages()[0].bytes);
  EXPECT_EQ(c.tensors()[1].dtype, DType::kF16);
  EXPECT_EQ(c.tensors()[1].bytes(), SmallStorages()[1].bytes.substr(4, 8));
  EXPECT_EQ(c.tensors()[2].dtype, DType::kBF16);
  EXPECT_EQ(c.tensors()[3].data, c.tensors()[0].data);
}

TEST(TorchCheckpoint, OpenFromFile) {
  const testing::TempDir dir("torch_open");
  dir.Write("small.bin", SmallCheckpoint());
  TorchCheckpoint c = TorchCheckpoint::Open(dir.File("small.bin"));
  TorchCheckpoint moved = std::move(c);  // the mapping moves with it; pointers stay valid
  ASSERT_NE(moved.Find("w"), nullptr);
  EXPECT_EQ(moved.Find("w")->bytes(), SmallStorages()[0].bytes);
  EXPECT_EQ(moved.source(), dir.File("small.bin"));
  EXPECT_THROW(TorchCheckpoint::Open(dir.File("missing.bin")), Error);
}

TEST(TorchCheckpoint, SizeOneDimensionsAndEmptyTensorsAreContiguousWhateverTheirStride) {
  // As torch's is_contiguous(): a stride of a size-1 dimension addresses nothing.
  const std::string bytes = WithPickle(StateDict({
      {"row", "FloatStorage", "0", 6, 0, {1, 6}, std::vector<int64_t>{1, 1}},
      {"empty", "FloatStorage", "0", 6, 0, {3, 0}, std::vector<int64_t>{7, 9}},
  }));
  const TorchCheckpoint c = TorchCheckpoint::Parse(bytes, "test.bin");
  EXPECT_EQ(c.Find("row")->size_bytes, 24u);
  EXPECT_EQ(c.Find("empty")->size_bytes, 0u);
}

// ---------------------------------------------------------------------------------------------
// Hostile and broken pickles

TEST(TorchCheckpoint, ForbiddenGlobals) {
  ExpectPickleError(Pickle().Proto().Global("os", "system").Str("ls").Op(0x85).Reduce().Stop(),
                    {"data.pkl offset 2: global 'os system' is not allowed in a state dict",
                     "allowed: collections.OrderedDict"});
  ExpectPickleError(Pickle().Proto().Global("builtins", "eval").Str("1").Op(0x85).Reduce().Stop(),
                    {"data.pkl offset 2: global 'builtins eval' is not allowed"});
  ExpectPickleError(Pickle().Proto().Global("torch", "DoubleStorage"),
                    {"global 'torch DoubleStorage' is not allowed"});
  ExpectPickleError(Pickle().Proto().Global("torch._utils", "_rebuild_parameter"),
                    {"global 'torch._utils _rebuild_parameter' is not allowed"});
  ExpectPickleError(Pickle().Proto().Op('c').Raw("os"), {"GLOBAL module has no end of line"});
}

TEST(TorchCheckpoint, ForbiddenOpcodes) {
  // STACK_GLOBAL would take the module and name from strings on the stack.
  ExpectPickleError(Pickle().Proto().Str("builtins").Str("eval").Op(0x93),
                    {"data.pkl offset 24: pickle opcode 0x93 (STACK_GLOBAL) is not allowed in a "
                     "state dict"});
  ExpectPickleError(Pickle().Proto().Op(0xff), {"offset 2: pickle opcode 0xff (unknown)"});
  ExpectPickleError(Pickle().Proto().Op('i').Raw("os\nsystem\n"), {"0x69 (INST)"});
  ExpectPickleError(Pickle().Proto().Op('P').Raw("0\n"), {"0x50 (PERSID)"});
  ExpectPickleError(Pickle().Proto().EmptyDict().Op(0x81), {"0x81 (NEWOBJ)"});
  ExpectPickleError(Pickle().Proto().Op(']'), {"0x5d (EMPTY_LIST)"});
  ExpectPickleError(Pickle().Proto().Op('G'), {"0x47 (BINFLOAT)"});
  ExpectPickleError(Pickle().Proto().Op(0x82).Op(1), {"0x82 (EXT1)"});
}

TEST(TorchCheckpoint, ReduceOnlyCallsTheTwoAllowedCallables) {
  ExpectPickleError(Pickle().Proto().Global("torch", "FloatStorage").EmptyTuple().Reduce(),
                    {"REDUCE calls global torch.FloatStorage; only collections.OrderedDict and "
                     "torch._utils._rebuild_tensor_v2 may be called"});
  ExpectPickleError(Pickle().Proto().Str("abc").EmptyTuple().Reduce(),
                    {"REDUCE calls string 'abc'"});
  ExpectPickleError(Pickle().Proto().Global("collections", "OrderedDict").Int(1).Reduce(),
                    {"REDUCE arguments must be a tuple"});
  ExpectPickleError(
      Pickle().Proto().Global("collections", "OrderedDict").Mark().Int(1).Tuple().Reduce(),
      {"OrderedDict must be called without arguments, found 1"});
  ExpectPickleError(
      Pickle().Proto().Global("torch._utils", "_rebuild_tensor_v2").EmptyTuple().Reduce(),
      {"_rebuild_tensor_v2 takes 6 arguments", "found 0"});
  ExpectPickleError(Pickle()
                        .Proto()
                        .Global("torch._utils", "_rebuild_tensor_v2")
                        .Mark()
                        .Str("x")
                        .Int(0)
                        .IntTuple({})
                        .IntTuple({})
                        .False()
                        .EmptyDict()
                        .Tuple()
                        .Reduce(),
                    {"_rebuild_tensor_v2: storage is string 'x', not a storage"});
}

// A tensor pickle with its pieces replaced one at a time.
TEST(TorchCheckpoint, BadTensorArguments) {
  auto with_storage = [](Pickle& p) -> Pickle& {
    return p.Mark()
        .Str("storage")
        .Global("torch", "FloatStorage")
        .Str("0")
        .Str("cpu")
        .Int(6)
        .Tuple()
        .PersId();
  };
  auto tensor = [&](auto&& fill) {
    Pickle p;
    p.Proto().EmptyDict().Str("t").Global("torch._utils", "_rebuild_tensor_v2").Mark();
    with_storage(p);
    fill(p);
    p.Tuple().Reduce().SetItem().Stop();
    return p;
  };
  ExpectPickleError(
      tensor([](Pickle& p) { p.Int(-1).IntTuple({6}).IntTuple({1}).False().EmptyDict(); }),
      {"storage_offset is int -1, not a non-negative int"});
  ExpectPickleError(
      tensor([](Pickle& p) { p.Int(0).IntTuple({-6}).IntTuple({1}).False().EmptyDict(); }),
      {"size[0] is int -6, not a non-negative int"});
  ExpectPickleError(tensor([](Pickle& p) { p.Int(0).Int(6).IntTuple({1}).False().EmptyDict(); }),
                    {"size is int 6, not a tuple"});
  ExpectPickleError(tensor([](Pickle& p) {
                      p.Int(0).IntTuple({6}).IntTuple({1, 1}).False().EmptyDict();
                    }),
                    {"size [6] and stride [1, 1] differ in length"});
  ExpectPickleError(
      tensor([](Pickle& p) { p.Int(0).IntTuple({6}).IntTuple({1}).Int(0).EmptyDict(); }),
      {"requires_grad is int 0, not a bool"});
  ExpectPickleError(
      tensor([](Pickle& p) {
        p.Int(0).IntTuple({6}).IntTuple({1}).False().EmptyDict().Str("k").Int(1).SetItem();
      }),
      {"backward_hooks must be an empty OrderedDict, found a dict of 1"});
  ExpectPickleError(tensor([](Pickle& p) {
                      p.Int(0)
                          .IntTuple(std::vector<int64_t>(33, 1))
                          .IntTuple(std::vector<int64_t>(33, 1))
                          .False()
                          .EmptyDict();
                    }),
                    {"size has 33 dimensions, more than 32"});
  // This one is well formed: the tensor builder is right.
  EXPECT_EQ(ParseError(WithPickle(tensor([](Pickle& p) {
                                    p.Int(0).IntTuple({6}).IntTuple({1}).False().EmptyDict();
                                  }).bytes())),
            "");
}

TEST(TorchCheckpoint, BadPersistentIds) {
  auto pid = [](auto&& fill) {
    Pickle p;
    p.Proto().Mark();
    fill(p);
    p.Tuple().PersId();
    return p;
  };
  ExpectPickleError(
      pid([](Pickle& p) { p.Str("storage").Global("torch", "FloatStorage").Str("0").Str("cpu"); }),
      {"BINPERSID: a persistent id must be ('storage', <storage class>, key, "
       "location, numel); found a tuple of 4"});
  ExpectPickleError(pid([](Pickle& p) {
                      p.Str("module").Global("torch", "FloatStorage").Str("0").Str("cpu").Int(6);
                    }),
                    {"element 0 is string 'module'"});
  ExpectPickleError(
      pid([](Pickle& p) {
        p.Str("storage").Global("collections", "OrderedDict").Str("0").Str("cpu").Int(6);
      }),
      {"element 1 (the storage class) is global collections.OrderedDict"});
  ExpectPickleError(pid([](Pickle& p) {
                      p.Str("storage").Global("torch", "FloatStorage").Int(0).Str("cpu").Int(6);
                    }),
                    {"element 2 (the key) is int 0"});
  ExpectPickleError(pid([](Pickle& p) {
                      p.Str("storage").Global("torch", "FloatStorage").Str("0").Str("cpu").Int(-6);
                    }),
                    {"element 4 (the element count) is int -6"});
  ExpectPickleError(pid([](Pickle& p) {
                      p.Str("storage").Global("torch", "FloatStorage").Str("9").Str("cpu").Int(6);
                    }),
                    {"storage '9' has no zip entry 'archive/data/9'"});
  ExpectPickleError(pid([](Pickle& p) {
                      p.Str("storage").Global("torch", "FloatStorage").Str("0").Str("cpu").Int(5);
                    }),
                    {"storage '0' of 5 F32 elements needs 20 bytes, but its entry holds 24"});
  // Storage "1" holds 16 bytes: 8 halves, or 8 bfloat16s, but not both.
  Pickle both;
  both.Proto().Mark().Str("storage").Global("torch", "HalfStorage").Str("1").Str("cpu").Int(8);
  both.Tuple().PersId().Mark().Str("storage").Global("torch", "BFloat16Storage").Str("1");
  both.Str("cpu").Int(8).Tuple().PersId();
  ExpectPickleError(both, {"storage '1' is used as both F16 and BF16"});
}

TEST(TorchCheckpoint, StackMemoAndStructureErrors) {
  ExpectPickleError(Pickle().Proto().EmptyDict(), {"the pickle ends without STOP"});
  ExpectPickleError(Pickle().Proto().EmptyDict().Stop().Op('N'), {"1 bytes follow STOP"});
  ExpectPickleError(Pickle().Proto().EmptyDict().EmptyDict().Stop(),
                    {"STOP with 2 values on the stack"});
  ExpectPickleError(Pickle().Proto().EmptyDict().Mark().Stop(), {"STOP with 1 MARK(s) still open"});
  ExpectPickleError(Pickle().Proto().Stop(), {"STOP with 0 values on the stack"});
  ExpectPickleError(Pickle().Proto().Op('N').Stop(), {"data.pkl holds None, not a state dict"});
  ExpectPickleError(Pickle().Proto().Get(3), {"BINGET of memo entry 3, which is not set"});
  ExpectPickleError(Pickle().Proto().Put(0), {"BINPUT needs a value on the stack"});
  ExpectPickleError(Pickle().Proto().Op('N').Mark().Op(0x85),
                    {"TUPLE1 needs a value on the stack above the last MARK"});
  ExpectPickleError(Pickle().Proto().Tuple(), {"TUPLE without a MARK"});
  ExpectPickleError(Pickle().Proto().EmptyDict().Mark().Str("a").SetItems(),
                    {"SETITEMS with an odd number (1) of keys and values"});
  ExpectPickleError(
      Pickle().Proto().EmptyDict().Str("a").Op('N').SetItem().Str("a").Op('N').SetItem(),
      {"SETITEM: duplicate key 'a'"});
  ExpectPickleError(Pickle().Proto().EmptyDict().Int(1).Op('N').SetItem(),
                    {"SETITEM: keys must be strings, found int 1"});
  ExpectPickleError(Pickle().Proto().EmptyTuple().Str("a").Op('N').SetItem(),
                    {"SETITEM on a tuple of 0, not a dict"});
  ExpectPickleError(Pickle().Proto().EmptyDict().Str("a").Op('N').SetItem().Stop(),
                    {"test.bin: state dict entry 'a' is None, not a tensor"});
  // A dict cannot be changed once inside another container, so no value can contain itself.
  ExpectPickleError(Pickle().Proto().EmptyDict().Put(0).Str("me").Get(0).SetItem(),
                    {"SETITEM: a dict cannot contain itself"});
  ExpectPickleError(Pickle().Proto().EmptyDict().Put(0).Op(0x85).Get(0).Str("k").Get(0).SetItem(),
                    {"SETITEM on a dict that is already inside another container"});
  ExpectPickleError(Pickle().Proto().EmptyDict().EmptyDict().Build(),
                    {"BUILD on a dict; only an OrderedDict's state"});
  ExpectPickleError(
      Pickle().Proto().Global("collections", "OrderedDict").EmptyTuple().Reduce().Int(1).Build(),
      {"BUILD state must be a dict, found int 1"});
  ExpectPickleError(Pickle().Proto().Op(0x80).Op(6), {"pickle protocol 6 is not supported"});
  ExpectPickleError(Pickle().Proto().Op(0x8a).Op(9).Raw(std::string(9, '\0')),
                    {"LONG1 of 9 bytes does not fit in 64 bits"});
  ExpectPickleError(Pickle().Proto().Op('X').Raw("\xff\xff\xff\x7f"),
                    {"BINUNICODE string needs 2147483647 bytes, only 0 remain"});
  ExpectPickleError(Pickle().Proto().Str("caf\xc3"), {"BINUNICODE string is not valid UTF-8"});
  ExpectPickleError(Pickle().Proto().Op(0x95).Raw(std::string("\xff\0\0\0\0\0\0\0", 8)),
                    {"FRAME of 255 bytes runs past the end"});
}

TEST(TorchCheckpoint, PickleIntegersStringsAndMemoOfEveryWidth) {
  // FRAME, MEMOIZE, SHORT_BINUNICODE, BINUNICODE8, LONG_BINPUT/LONG_BINGET, LONG1 (1 and 0
  // bytes), BININT2, BININT and NEWTRUE in an otherwise ordinary two-entry state dict.
  Pickle p;
  p.Proto().Op(0x95).Raw(std::string(8, '\0')).EmptyDict().Op(0x94);
  p.Op(0x8c).Op(1).Raw("t").Global("torch._utils", "_rebuild_tensor_v2").Mark();
  p.Mark().Op(0x8d).Raw(std::string("\x07\0\0\0\0\0\0\0", 8)).Raw("storage");
  p.Global("torch", "FloatStorage").Str("0").Str("cpu").Op(0x8a).Op(1).Op(6).Tuple().PersId();
  p.Op(0x8a).Op(0);  // offset 0
  p.Mark().Op('M').Raw(std::string("\x02\0", 2)).Op('J').Raw(std::string("\x03\0\0\0", 4));
  p.Tuple().IntTuple({3, 1}).Op(0x88).Global("collections", "OrderedDict").EmptyTuple();
  p.Reduce().Tuple().Reduce().Op('r').Raw(std::string("\x70\x11\x01\0", 4)).SetItem();
  p.Op(0x8c).Op(5).Raw("again").Op('j').Raw(std::string("\x70\x11\x01\0", 4)).SetItem().Stop();
  const TorchCheckpoint c = TorchCheckpoint::Parse(WithPickle(p.bytes()), "test.bin");
  ASSERT_EQ(c.tensors().size(), 2u);
  EXPECT_EQ(c.tensors()[0].name, "t");
  EXPECT_EQ(c.tensors()[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(c.tensors()[1].name, "again");
  EXPECT_EQ(c.tensors()[1].data, c.tensors()[0].data);
}

TEST(TorchCheckpoint, PickleLimits) {
  Pickle deep;
  deep.Proto().EmptyTuple();
  for (int k = 0; k < 20; ++k) deep.Op(0x85);
  ExpectPickleError(deep, {"containers nest deeper than 16"});
  Pickle wide;
  wide.Proto();
  for (int k = 0; k < 70000; ++k) wide.Op('N');
  ExpectPickleError(wide, {"the stack grows past 65536 entries"});
  Pickle marks;
  marks.Proto();
  for (int k = 0; k < 70000; ++k) marks.Mark();
  ExpectPickleError(marks, {"the stack grows past 65536 entries"});
  Pickle memo;
  memo.Proto().Op('N');
  for (uint64_t k = 0; k <= kTorchMaxPickleMemo; ++k) {
    std::string index;
    Put32(&index, k * 7);  // LONG_BINPUT takes any index; each new one is an entry
    memo.Op('r').Raw(index);
  }
  ExpectPickleError(memo, {"the memo grows past 1048576 entries"});
}

// ---------------------------------------------------------------------------------------------
// Tensors that do not fit their storage, or cannot be read in place

TEST(TorchCheckpoint, TensorChecks) {
  ExpectParseError(
      WithPickle(StateDict({{"t", "FloatStorage", "0", 6, 0, {3, 2}, std::vector<int64_t>{1, 3}}})),
      {"tensor 't' (data.pkl offset ",
       "stride [1, 3] is not row-major contiguous for "
       "shape [3, 2] (expected [2, 1])"});
  ExpectParseError(WithPickle(StateDict({{"t", "FloatStorage", "0", 6, 4, {3}, std::nullopt}})),
                   {"tensor 't'",
                    "elements [4, 7) of shape [3] run past the end of storage '0' "
                    "(6 F32 elements)"});
  ExpectParseError(WithPickle(StateDict({{"t", "FloatStorage", "0", 6, 7, {0}, std::nullopt}})),
                   {"elements [7, 7)"});
  ExpectParseError(
      WithPickle(StateDict({{"t",
                             "FloatStorage",
                             "0",
                             6,
                             0,
                             {1 << 30, 1 << 30, 1 << 30},
                             std::vector<int64_t>{1, 1, 1}}})),
      {"tensor 't'", "the element count of shape [1073741824, 1073741824, 1073741824] overflows"});
  ExpectParseError(
      WithPickle(StateDict({{"t", "FloatStorage", "0", 6, INT64_MAX, {2}, std::nullopt}})),
      {"elements [9223372036854775807, "});
}

TEST(TorchCheckpoint, MisalignedDataIsRefused) {
  // An archive rewritten without torch's padding: float data at an odd offset.
  ExpectParseError(SmallCheckpoint({64, true, true, false, 2}),
                   {"tensor 'w'", "is not aligned in memory to its 4-byte F32 elements"});
  // A well-padded file in a buffer that is itself misaligned.
  const std::string bytes = SmallCheckpoint();
  const std::unique_ptr<char[]> buffer(new char[bytes.size() + 1]);
  std::memcpy(buffer.get() + 1, bytes.data(), bytes.size());
  try {
    TorchCheckpoint::Parse(std::string_view(buffer.get() + 1, bytes.size()), "shifted.bin");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not aligned in memory"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Broken and hostile archives

TEST(TorchCheckpoint, ArchiveErrors) {
  const std::string pickle = StateDict(SmallSpecs());
  {
    ZipWriter zip;  // deflated: refused, whatever the bytes are
    zip.Add("archive/data.pkl", pickle, 8);
    ExpectParseError(zip.Finish(), {"zip central directory entry 0", "'archive/data.pkl'",
                                    "compression method 8 (deflate) is not supported"});
  }
  {
    ZipWriter zip;
    zip.Add("archive/data.pkl", pickle);
    zip.Add("archive/data.pkl", pickle);
    ExpectParseError(zip.Finish(), {"entry 1", "duplicate name (also entry 0)"});
  }
  {
    ZipWriter zip;
    zip.Add(std::string("archive/data.pkl\0x", 18), pickle);
    ExpectParseError(zip.Finish(), {"the name holds a NUL byte"});
  }
  {
    ZipWriter zip;
    zip.Add("archive/other.pkl", pickle);
    ExpectParseError(zip.Finish(), {"no '<archive>/data.pkl' among its 1 zip entries"});
  }
  {
    ZipWriter zip;
    zip.Add("a/data.pkl", pickle);
    zip.Add("b/data.pkl", pickle);
    ExpectParseError(zip.Finish(), {"two pickles, 'a/data.pkl' and 'b/data.pkl'"});
  }
  {
    ZipWriter zip;
    zip.Add("archive/data.pkl", pickle);
    zip.Add("../evil", "x");
    ExpectParseError(zip.Finish(),
                     {"zip entry '../evil' is outside the archive directory 'archive/'"});
  }
  ExpectParseError(Checkpoint(pickle, SmallStorages(), {}, "archive", std::string("big")),
                   {"'archive/byteorder' is 'big': only little-endian checkpoints"});
  EXPECT_EQ(ParseError(Checkpoint(pickle, SmallStorages(), {}, "archive", std::string("little"))),
            "");
  {
    std::vector<Storage> storages = SmallStorages();
    storages.erase(storages.begin() + 1);
    ExpectParseError(Checkpoint(pickle, storages),
                     {"storage '1' has no zip entry 'archive/data/1'"});
  }
  {
    ZipLayout layout;
    layout.zip64_end = false;
    layout.zip64_extras = true;  // saturated end record without the zip64 one
    ExpectParseError(SmallCheckpoint(layout), {"the zip central directory (4294967295 bytes at "
                                               "offset 4294967295) does not end before"});
  }
  ExpectParseError("", {"file is 0 bytes long, too short for a zip archive"});
  ExpectParseError(std::string(100, 'x'),
                   {"no zip end-of-central-directory record in the last 100 bytes"});
  ExpectParseError(std::string("\x80\x02\x8a\x0alegacy", 10), {"legacy torch.save format"});
}

TEST(TorchCheckpoint, ZipStructureErrors) {
  const std::string good = SmallCheckpoint();
  const size_t eocd = good.size() - 22;
  const size_t locator = eocd - 20;
  const size_t record = locator - 56;
  auto patched = [&](size_t offset, uint64_t value, int bytes) {
    std::string s = good;
    std::memcpy(s.data() + offset, &value, static_cast<size_t>(bytes));
    return s;
  };
  uint32_t cd_offset;
  std::memcpy(&cd_offset, good.data() + eocd + 16, 4);
  ExpectParseError(patched(eocd + 10, 7, 2), {"the zip end record says entry count = 7, the zip64 "
                                              "end record says 5"});
  ExpectParseError(patched(record + 32, 7, 8), {"entry count = 5, the zip64 end record says 7"});
  ExpectParseError(patched(eocd + 4, 1, 2), {"multi-disk archives are not supported"});
  ExpectParseError(patched(locator + 16, 3, 4),
                   {"multi-disk archives are not supported (3 disks)"});
  ExpectParseError(patched(locator + 8, locator, 8),
                   {"leaves no room for the 56-byte zip64 end record"});
  ExpectParseError(patched(record, 0, 4), {"zip64 end record at offset", "bad signature 0x0"});
  ExpectParseError(patched(cd_offset, 0x12345678, 4),
                   {"central directory entry 0", "bad signature 0x12345678"});
  ExpectParseError(patched(cd_offset + 42, 3, 4), {"'archive/data.pkl' (local header at offset 3): "
                                                   "bad local header signature"});
  // Entry 0's size grows past its data, into the next local header.
  ExpectParseError(patched(cd_offset + 20, 100000, 4), {"compressed size 100000 differs"});
  {
    std::string s = patched(cd_offset + 20, 100000, 4);
    std::memcpy(s.data() + cd_offset + 24, s.data() + cd_offset + 20, 4);
    ExpectParseError(s, {"its 100000 bytes at offset 64 run into the central directory"});
  }
  {
    // A size that stays before the central directory but reaches the next entry.
    std::string s = patched(cd_offset + 20, cd_offset - 64, 4);
    std::memcpy(s.data() + cd_offset + 24, s.data() + cd_offset + 20, 4);
    ExpectParseError(s, {Concat("zip entries 'archive/data.pkl' (bytes 0..", cd_offset,
                                ") and 'archive/data/0' (local header at offset "),
                         "overlap"});
  }
  // The local header's name differs from the central directory's.
  ExpectParseError(patched(30, 'X', 1), {"the local header names it 'Xrchive/data.pkl'"});
  // Sizes saturated without a zip64 extra field.
  ExpectParseError(patched(cd_offset + 24, 0xFFFFFFFF, 4), {"there is no zip64 extra field"});
}

TEST(TorchCheckpoint, OverlappingEntriesAreRefused) {
  // Entry "archive/data/9" is listed in the central directory with its local header inside
  // the data of "archive/data/0" (which holds a valid local header for it).
  std::string inner;
  Put32(&inner, 0x04034b50);
  Put16(&inner, 20);
  Put16(&inner, 0);
  Put16(&inner, 0);
  Put32(&inner, 0);
  Put32(&inner, 0);
  Put32(&inner, 4);
  Put32(&inner, 4);
  Put16(&inner, 14);
  Put16(&inner, 0);
  inner += "archive/data/9";
  inner += "abcd";
  ZipWriter zip;
  zip.Add("archive/data.pkl", StateDict({}));
  zip.Add("archive/data/0", inner);
  zip.Finish();
  const uint64_t inner_offset = zip.data_offset(1);
  zip.AddCentralOnly("archive/data/9", inner_offset, 4);
  ExpectParseError(zip.Finish(),
                   {"zip entries 'archive/data/0'", "and 'archive/data/9'", "overlap"});
}

TEST(TorchCheckpoint, TruncatedAtEveryPrefixThrows) {
  const std::string bytes = SmallCheckpoint();
  ASSERT_NO_THROW(TorchCheckpoint::Parse(bytes, "full"));
  for (size_t n = 0; n < bytes.size(); ++n) {
    // An exactly sized heap copy, so that AddressSanitizer sees any read past the end.
    const std::unique_ptr<char[]> copy(new char[n == 0 ? 1 : n]);
    std::memcpy(copy.get(), bytes.data(), n);
    try {
      TorchCheckpoint::Parse(std::string_view(copy.get(), n), "cut.bin");
      ADD_FAILURE() << "prefix of " << n << " bytes parsed";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("cut.bin: ", 0), 0u) << e.what();
    }
  }
}

TEST(TorchCheckpoint, Crc32OfTheStandardCheckString) {
  // The check value of CRC-32/ISO-HDLC (zip's), and the empty string's.
  EXPECT_EQ(Crc32("123456789"), 0xCBF43926u);
  EXPECT_EQ(Crc32(""), 0u);
}

TEST(TorchCheckpoint, EveryChangedDataByteIsCaughtByTheCrc) {
  // A flipped bit in a storage would change a weight (and the reward) silently; in data.pkl
  // it could still unpickle. Each entry's CRC-32 catches both, naming the entry.
  ZipWriter zip;
  const std::vector<Storage> storages = SmallStorages();
  zip.Add("archive/data.pkl", StateDict(SmallSpecs()));
  for (const Storage& s : storages) zip.Add("archive/data/" + s.key, s.bytes);
  const std::string bytes = zip.Finish();
  ASSERT_NO_THROW(TorchCheckpoint::Parse(bytes, "intact"));
  const std::vector<std::pair<std::string, size_t>> entries = {
      {"archive/data.pkl", StateDict(SmallSpecs()).size()},
      {"archive/data/0", storages[0].bytes.size()},
      {"archive/data/1", storages[1].bytes.size()},
      {"archive/data/2", storages[2].bytes.size()}};
  for (size_t e = 0; e < entries.size(); ++e) {
    for (size_t k = 0; k < entries[e].second; ++k) {
      std::string mutated = bytes;
      mutated[zip.data_offset(e) + k] ^= 0x10;
      SCOPED_TRACE(Concat(entries[e].first, " byte ", k));
      ExpectParseError(mutated, {Concat("zip entry '", entries[e].first, "'"), "its CRC-32 is",
                                 "the central directory says", "corrupt"});
      // Without the check the bytes are taken as they are (what the fuzz target relies on).
      if (e > 0) {
        EXPECT_NO_THROW(TorchCheckpoint::Parse(mutated, "unchecked", false));
      }
    }
  }
  // A wrong CRC in the central directory (the first entry's, at byte 16 of its record).
  const size_t cd = bytes.find(std::string("PK\x01\x02", 4));
  ASSERT_NE(cd, std::string::npos);
  std::string wrong = bytes;
  wrong[cd + 16] ^= 1;
  ExpectParseError(wrong, {"zip entry 'archive/data.pkl'", "its CRC-32 is"});
}

TEST(TorchCheckpoint, CorruptedBytesNeverCrash) {
  // Every single-byte change either parses or throws Error; a parsed file's tensors stay
  // inside the buffer and are aligned. The CRC check is off, so that changes to data.pkl and
  // the storages reach the unpickler and the tensor checks (with it on they stop at the CRC).
  for (const ZipLayout& layout : {ZipLayout{}, ZipLayout{64, false, true, true}}) {
    const std::string bytes = SmallCheckpoint(layout);
    for (size_t k = 0; k < bytes.size(); ++k) {
      for (const char c : {'\0', '\x01', '\x7f', '\x80', '\xff'}) {
        if (bytes[k] == c) continue;
        std::string mutated = bytes;
        mutated[k] = c;
        try {
          const TorchCheckpoint f = TorchCheckpoint::Parse(mutated, "mutated", false);
          for (const TorchTensor& t : f.tensors()) {
            const char* data = static_cast<const char*>(t.data);
            EXPECT_GE(data, mutated.data());
            EXPECT_LE(data + t.size_bytes, mutated.data() + mutated.size());
            EXPECT_EQ(reinterpret_cast<uintptr_t>(data) % DTypeSize(t.dtype), 0u);
          }
        } catch (const Error& e) {
          EXPECT_EQ(std::string(e.what()).rfind("mutated: ", 0), 0u) << e.what();
        }
      }
    }
  }
}

}  // namespace
}  // namespace starling
