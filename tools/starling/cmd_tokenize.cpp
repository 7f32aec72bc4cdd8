// `starling tokenize` and `starling detokenize`.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "commands.h"
#include "core/error.h"
#include "core/file.h"
#include "tokenizer/load.h"

namespace starling::cli {
namespace {

// A piece made readable on one line: control bytes and backslashes escaped.
std::string Escape(std::string_view piece) {
  std::string out;
  for (const char c : piece) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (byte < 0x20 || byte == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", byte);
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

void WriteStdout(std::string_view text) {
  if (!text.empty() && std::fwrite(text.data(), 1, text.size(), stdout) != text.size()) {
    Fail("cannot write to standard output");
  }
}

// Prints ids as they come, in one of three formats; what `tokenize` prints is the same whether
// the ids come at once or in pieces. JSON keeps the ids (4 bytes a token) to write the pieces
// after them; the other formats keep nothing but a buffer.
class TokenPrinter {
 public:
  TokenPrinter(const Tokenizer& tokenizer, bool json, bool ids_only)
      : tokenizer_(tokenizer), json_(json), ids_only_(ids_only) {}

  // A rendered conversation: printed first as text, or last as JSON's "text".
  void SetRendered(const std::string& text) {
    if (json_) {
      rendered_json_ = Json(text);
    } else {
      Write(text + "\n");
    }
  }

  void Add(std::span<const int32_t> ids) {
    if (json_) {
      json_ids_.insert(json_ids_.end(), ids.begin(), ids.end());
      return;
    }
    for (const int32_t id : ids) {
      if (ids_only_) {
        if (count_++ > 0) buffer_ += ' ';
        buffer_ += std::to_string(id);
      } else {
        buffer_ += std::to_string(id) + "\t" + Escape(tokenizer_.Piece(id)) + "\n";
      }
      if (buffer_.size() >= kFlushBytes) Flush();
    }
  }

  // {"ids":[...],"pieces":[...]} as nlohmann's compact dump writes it (keys sorted).
  void Finish() {
    if (json_) {
      buffer_ += "{\"ids\":[";
      for (size_t k = 0; k < json_ids_.size(); ++k) {
        if (k > 0) buffer_ += ',';
        buffer_ += std::to_string(json_ids_[k]);
        if (buffer_.size() >= kFlushBytes) Flush();
      }
      buffer_ += "],\"pieces\":[";
      for (size_t k = 0; k < json_ids_.size(); ++k) {
        if (k > 0) buffer_ += ',';
        buffer_ += Json(tokenizer_.Piece(json_ids_[k]));
        if (buffer_.size() >= kFlushBytes) Flush();
      }
      buffer_ += "]";
      if (!rendered_json_.empty()) buffer_ += ",\"text\":" + rendered_json_;
      buffer_ += "}\n";
    } else if (ids_only_) {
      buffer_ += "\n";
    }
    Flush();
  }

 private:
  static constexpr size_t kFlushBytes = 1 << 16;

  static std::string Json(const std::string& text) {
    return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  void Write(std::string_view text) {
    buffer_ += text;
    Flush();
  }
  void Flush() {
    WriteStdout(buffer_);
    buffer_.clear();
  }

  const Tokenizer& tokenizer_;
  bool json_, ids_only_;
  size_t count_ = 0;
  std::string buffer_;
  std::vector<int32_t> json_ids_;
  std::string rendered_json_;
};

// Encodes a file ("-": stdin) a block at a time, cut where Tokenizer::StreamCut allows, so
// that memory is bounded by the block size (plus the longest stretch with no place to cut)
// and the output, not by the file: the ids are exactly those of encoding the whole at once.
void EncodeFileInPieces(const Tokenizer& tokenizer, const std::string& path,
                        const EncodeOptions& options, TokenPrinter& printer) {
  constexpr size_t kPieceBytes = 1 << 20;
  std::string pending;
  size_t searched = 0;  // candidates below this were refused by an earlier StreamCut
  bool first = true;
  auto encode = [&](std::string_view text) {
    EncodeOptions o = options;
    o.add_bos = options.add_bos && first;
    o.continuation = !first;
    printer.Add(tokenizer.Encode(text, o));
    first = false;
  };
  ReadFileInBlocks(path, kPieceBytes, [&](std::string_view block) {
    pending.append(block);
    if (pending.size() < kPieceBytes) return;
    // Candidates near the old end are looked at again: text read since may change them.
    const size_t cut = tokenizer.StreamCut(pending, options.parse_special,
                                           searched > kPieceBytes ? searched - kPieceBytes : 1);
    if (cut == 0) {
      searched = pending.size();
      return;
    }
    encode(std::string_view(pending).substr(0, cut));
    pending.erase(0, cut);
    searched = 0;
  });
  if (!pending.empty() || first) encode(pending);
}

struct TokenizeOptions {
  std::string tokenizer_path;
  std::string text;
  std::string file;
  bool json = false;
  bool ids_only = false;
  bool no_bos = false;
  bool plain = false;
  std::string template_name;
  std::string messages;
  std::vector<std::string> ids;
  bool generation_prompt = false;
  bool render = false;
};

void RunTokenize(const TokenizeOptions& o) {
  const Tokenizer tokenizer = LoadTokenizer(o.tokenizer_path);
  TokenPrinter printer(tokenizer, o.json, o.ids_only);
  const int inputs = !o.text.empty() + !o.file.empty() + !o.messages.empty() + !o.ids.empty();
  if (inputs > 1) Fail("give one of TEXT, -f FILE, --messages or --ids");
  if (!o.ids.empty()) {
    if (!o.template_name.empty()) Fail("--template renders --messages; --ids are used as given");
    std::vector<int32_t> ids;
    try {
      ids = ParseIds(o.ids);
    } catch (const Error& e) {
      Fail(e.what(),
           " (--ids takes token ids and shows their pieces; --ids-only prints the ids of "
           "a text alone)");
    }
    for (const int32_t id : ids) {
      if (id < 0 || id >= tokenizer.vocab_size()) {
        Fail("--ids: ", id, " is not a token id of this tokenizer (", tokenizer.vocab_size(),
             " tokens)");
      }
    }
    printer.Add(ids);
    printer.Finish();
    return;
  }
  if (!o.messages.empty() || !o.template_name.empty()) {
    if (o.messages.empty() || o.template_name.empty()) {
      Fail("--template and --messages go together");
    }
    const ChatTemplate& chat_template = ChatTemplate::ByName(o.template_name);
    const std::vector<ChatMessage> messages = ReadMessages(o.messages);
    const RenderedChat chat = chat_template.Render(tokenizer, messages, o.generation_prompt);
    if (o.render || o.json) printer.SetRendered(chat.text);
    printer.Add(chat.ids);
    printer.Finish();
    return;
  }
  if (!o.text.empty() && !o.file.empty()) Fail("give either TEXT or -f FILE, not both");
  const EncodeOptions options{.add_bos = tokenizer.add_bos_token() && !o.no_bos,
                              .parse_special = !o.plain};
  if (o.file.empty()) {
    printer.Add(tokenizer.Encode(o.text, options));
  } else {
    EncodeFileInPieces(tokenizer, o.file, options, printer);
  }
  printer.Finish();
}

}  // namespace

void RegisterTokenize(CLI::App& app) {
  auto options = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize",
      "Print the token ids and pieces of a text, or of a conversation rendered with a chat "
      "template");
  cmd->add_option("--tokenizer", options->tokenizer_path,
                  "tokenizer.model, a model directory (tokenizer.model + Hugging Face "
                  "added-token files) or a GGUF file")
      ->required();
  cmd->add_option("text", options->text, "the text to tokenize");
  cmd->add_option("-f,--file", options->file, "read the text byte for byte from FILE ('-': stdin)");
  cmd->add_flag("--json", options->json, "print one JSON object with \"ids\" and \"pieces\"");
  cmd->add_flag("--ids-only", options->ids_only, "print only the ids, on one line");
  cmd->add_option("--ids", options->ids, std::string(kIdsHelp) + ": show their pieces");
  cmd->add_flag("--no-bos", options->no_bos, "do not prepend the BOS token");
  cmd->add_flag("--plain", options->plain,
                "treat all text as plain text: special-token text is not recognised");
  cmd->add_option("--template,--chat-template", options->template_name,
                  "render --messages with this chat template (openchat, openchat-code, llama-2, "
                  "raw)");
  cmd->add_option("--messages", options->messages, kMessagesHelp);
  cmd->add_flag("--generation-prompt", options->generation_prompt,
                "end with the open assistant turn");
  cmd->add_flag("--render", options->render, "also print the rendered conversation text");
  cmd->footer(
      "Examples:\n"
      "  starling tokenize --tokenizer models/openchat-3.5-tokenizer \"Hello<|end_of_turn|>\"\n"
      "  starling tokenize --tokenizer model.gguf --ids-only -f prompt.txt\n"
      "  starling tokenize --tokenizer model.gguf --ids 1 22557 32000     # the pieces of ids\n"
      "  starling tokenize --tokenizer models/openchat-3.5-tokenizer --template openchat "
      "--messages chat.json --generation-prompt --render");
  cmd->callback([options] { RunTokenize(*options); });
}

void RegisterDetokenize(CLI::App& app) {
  auto tokenizer_path = std::make_shared<std::string>();
  auto id_args = std::make_shared<std::vector<std::string>>();
  auto skip_special = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("detokenize",
                                     "Print the text of token ids, exactly (no newline is added)");
  cmd->add_option("--tokenizer", *tokenizer_path,
                  "tokenizer.model, a model directory or a GGUF file")
      ->required();
  cmd->add_option("ids", *id_args, "token ids: separate arguments or one list ('1 2 3', '1,2,3')")
      ->required();
  cmd->add_flag("--skip-special", *skip_special, "leave out special tokens such as <s>");
  cmd->footer(
      "Examples:\n"
      "  starling detokenize --tokenizer models/openchat-3.5-tokenizer 1 22557 32000\n"
      "  starling detokenize --tokenizer model.gguf --skip-special \"$(starling tokenize "
      "--tokenizer model.gguf --ids-only hello)\"");
  cmd->callback([=] {
    const Tokenizer tokenizer = LoadTokenizer(*tokenizer_path);
    WriteStdout(tokenizer.Decode(ParseIds(*id_args), *skip_special));
  });
}

std::vector<ChatMessage> ReadMessages(const std::string& value) {
  const size_t first = value.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && value[first] == '[') {
    return ParseChatMessages(value, "--messages");
  }
  return ParseChatMessages(value == "-" ? ReadStdin() : ReadFile(value),
                           value == "-" ? "<stdin>" : value);
}

// Ids given as separate arguments, or as one argument "1 2 3" or "1,2,3" or "[1, 2, 3]".
std::vector<int32_t> ParseIds(const std::vector<std::string>& args) {
  std::vector<int32_t> ids;
  for (const std::string& arg : args) {
    std::string token;
    bool after_comma = false;  // a comma with no id after it yet
    auto flush = [&] {
      if (token.empty()) return;
      after_comma = false;
      char* end = nullptr;
      errno = 0;
      const long long value = std::strtoll(token.c_str(), &end, 10);
      if (*end != '\0' || errno != 0 || value < INT32_MIN || value > INT32_MAX) {
        Fail("'", token, "' is not a token id");
      }
      ids.push_back(static_cast<int32_t>(value));
      token.clear();
    };
    for (const char c : arg) {
      if (c == ' ' || c == ',' || c == '\t' || c == '\n' || c == '[' || c == ']') {
        if (c == ',' && token.empty() && after_comma) {
          Fail("'", PrintableForError(arg), "' has an empty token id between two commas");
        }
        flush();
        if (c == ',') after_comma = true;
      } else {
        token.push_back(c);
      }
    }
    flush();
  }
  return ids;
}

}  // namespace starling::cli
