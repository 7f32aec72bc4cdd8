// `starling tokenize` and `starling detokenize`.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
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

void PrintTokens(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool json,
                 bool ids_only, const std::string* rendered) {
  if (json) {
    nlohmann::json out;
    out["ids"] = ids;
    std::vector<std::string> pieces;
    for (const int32_t id : ids) pieces.push_back(tokenizer.Piece(id));
    out["pieces"] = pieces;
    if (rendered != nullptr) out["text"] = *rendered;
    WriteStdout(out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
    return;
  }
  std::string text;
  if (rendered != nullptr) text += *rendered + "\n";
  if (ids_only) {
    for (size_t i = 0; i < ids.size(); ++i) text += (i ? " " : "") + std::to_string(ids[i]);
    text += "\n";
  } else {
    for (const int32_t id : ids) {
      text += std::to_string(id) + "\t" + Escape(tokenizer.Piece(id)) + "\n";
    }
  }
  WriteStdout(text);
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
  std::string messages_file;
  bool generation_prompt = false;
  bool render = false;
};

void RunTokenize(const TokenizeOptions& o) {
  const Tokenizer tokenizer = LoadTokenizer(o.tokenizer_path);
  if (!o.messages_file.empty() || !o.template_name.empty()) {
    if (o.messages_file.empty() || o.template_name.empty()) {
      Fail("--template and --messages go together");
    }
    if (!o.text.empty() || !o.file.empty()) Fail("give either TEXT/-f or --messages, not both");
    const ChatTemplate& chat_template = ChatTemplate::ByName(o.template_name);
    const std::string json = o.messages_file == "-" ? ReadStdin() : ReadFile(o.messages_file);
    const std::vector<ChatMessage> messages = ParseChatMessages(json, o.messages_file);
    const RenderedChat chat = chat_template.Render(tokenizer, messages, o.generation_prompt);
    PrintTokens(tokenizer, chat.ids, o.json, o.ids_only, o.render || o.json ? &chat.text : nullptr);
    return;
  }
  if (!o.text.empty() && !o.file.empty()) Fail("give either TEXT or -f FILE, not both");
  std::string text = o.text;
  if (!o.file.empty()) text = o.file == "-" ? ReadStdin() : ReadFile(o.file);
  const std::vector<int32_t> ids = tokenizer.Encode(
      text, {.add_bos = tokenizer.add_bos_token() && !o.no_bos, .parse_special = !o.plain});
  PrintTokens(tokenizer, ids, o.json, o.ids_only, nullptr);
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
  cmd->add_flag("--ids", options->ids_only, "print only the ids, on one line");
  cmd->add_flag("--no-bos", options->no_bos, "do not prepend the BOS token");
  cmd->add_flag("--plain", options->plain,
                "treat all text as plain text: special-token text is not recognised");
  cmd->add_option("--template", options->template_name,
                  "render --messages with this chat template (openchat, openchat-code, llama-2)");
  cmd->add_option("--messages", options->messages_file,
                  "a JSON list of {\"role\", \"content\"} messages ('-': stdin)");
  cmd->add_flag("--generation-prompt", options->generation_prompt,
                "end with the open assistant turn");
  cmd->add_flag("--render", options->render, "also print the rendered conversation text");
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
  cmd->callback([=] {
    const Tokenizer tokenizer = LoadTokenizer(*tokenizer_path);
    WriteStdout(tokenizer.Decode(ParseIds(*id_args), *skip_special));
  });
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
