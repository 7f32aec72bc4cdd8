#include "chat/chat_template.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/json.h"
#include "tokenizer/load.h"

namespace starling {
namespace {

// Builds a rendering from parts: special tokens by their text, and text parts, each of
// which is encoded on its own (with its own dummy-prefix space), never parsed for
// special tokens.
class Builder {
 public:
  Builder(const Tokenizer& tokenizer, std::string_view template_name)
      : tokenizer_(tokenizer), template_name_(template_name) {}

  // `assistant`: the part is (part of) an assistant turn's trained tokens (RenderedChat).
  void Special(std::string_view content, bool assistant = false) {
    const std::optional<int32_t> id = tokenizer_.FindAddedToken(content);
    if (!id) {
      Fail("chat template '", template_name_, "' needs the special token '", content,
           "', which tokenizer ", tokenizer_.source(), " does not have");
    }
    out_.ids.push_back(*id);
    out_.text += content;
    Mark(assistant);
  }

  // `display` is how the part reads in the display string (it may add the space that the
  // dummy prefix stands for); `text` is what is encoded.
  void Text(std::string_view text, std::string_view display, bool assistant = false) {
    tokenizer_.EncodeText(text, &out_.ids);
    out_.text += display;
    Mark(assistant);
  }

  // A run of text right after a special token, as Hugging Face's LlamaTokenizer encodes it
  // (without the dummy prefix when the tokenizer is not legacy). Tokens from character
  // `assistant_from` of `text` on are assistant content: the run is encoded whole (as the
  // reference does), and its leading tokens that equal the encoding of text[0, assistant_from)
  // alone are the prefix; should a merge cross the boundary, that token counts as prefix.
  void TextAfterSpecial(std::string_view text, std::string_view display,
                        size_t assistant_from = std::string_view::npos) {
    const size_t begin = out_.ids.size();
    tokenizer_.EncodeTextAfterAddedToken(text, &out_.ids);
    out_.text += display;
    Mark(false);
    if (assistant_from >= text.size()) return;
    std::vector<int32_t> prefix;
    tokenizer_.EncodeTextAfterAddedToken(text.substr(0, assistant_from), &prefix);
    size_t same = 0;
    while (same < prefix.size() && begin + same < out_.ids.size() &&
           out_.ids[begin + same] == prefix[same]) {
      ++same;
    }
    // A token that merged across the boundary was cut short in `prefix`: it stays prefix.
    if (same < prefix.size()) ++same;
    for (size_t i = begin + same; i < out_.ids.size(); ++i) out_.assistant[i] = 1;
  }

  RenderedChat Take() { return std::move(out_); }

 private:
  void Mark(bool assistant) { out_.assistant.resize(out_.ids.size(), assistant ? 1 : 0); }

  const Tokenizer& tokenizer_;
  std::string_view template_name_;
  RenderedChat out_;
};

// The OpenChat 3.5 Hugging Face chat_template, as in Starling-LM-7B-alpha's
// tokenizer_config.json.
constexpr std::string_view kOpenChatJinja =
    "{{ bos_token }}{% for message in messages %}{{ 'GPT4 Correct ' + message['role'].title() + "
    "': ' + message['content'] + '<|end_of_turn|>'}}{% endfor %}{% if add_generation_prompt "
    "%}{{ 'GPT4 Correct Assistant:' }}{% endif %}";

const std::vector<ChatTemplate>& AllTemplates() {
  static const std::vector<ChatTemplate> templates = {
      ChatTemplate("openchat", ChatTemplate::Style::kOpenChat, "GPT4 Correct User:",
                   "GPT4 Correct Assistant:", "<|end_of_turn|>", {std::string(kOpenChatJinja)}),
      ChatTemplate("openchat-code", ChatTemplate::Style::kOpenChat,
                   "Code User:", "Code Assistant:", "<|end_of_turn|>", {}),
      ChatTemplate("llama-2", ChatTemplate::Style::kLlama2, "[INST]", "[/INST]", "</s>", {}),
      ChatTemplate("raw", ChatTemplate::Style::kRaw, "", "", "</s>", {}),
  };
  return templates;
}

}  // namespace

const ChatTemplate* ChatTemplate::OfModel(const std::string& path) {
  const std::string jinja = LoadChatTemplateJinja(path);
  return jinja.empty() ? nullptr : FromJinja(jinja);
}

ChatTemplate::ChatTemplate(std::string name, Style style, std::string user_prefix,
                           std::string assistant_prefix, std::string end_of_turn,
                           std::vector<std::string> jinja)
    : name_(std::move(name)),
      style_(style),
      user_prefix_(std::move(user_prefix)),
      assistant_prefix_(std::move(assistant_prefix)),
      end_of_turn_(std::move(end_of_turn)),
      jinja_(std::move(jinja)) {}

const ChatTemplate& ChatTemplate::ByName(std::string_view name) {
  for (const ChatTemplate& t : AllTemplates()) {
    if (t.name() == name) return t;
  }
  std::string known;
  for (const std::string_view n : Names()) known += (known.empty() ? "" : ", ") + std::string(n);
  Fail("unknown chat template '", name, "' (known: ", known, ")");
}

std::vector<std::string_view> ChatTemplate::Names() {
  std::vector<std::string_view> names;
  for (const ChatTemplate& t : AllTemplates()) names.push_back(t.name());
  return names;
}

const ChatTemplate* ChatTemplate::FromJinja(std::string_view jinja) {
  for (const ChatTemplate& t : AllTemplates()) {
    for (const std::string& known : t.jinja_) {
      if (known == jinja) return &t;
    }
  }
  return nullptr;
}

RenderedChat ChatTemplate::Render(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                  bool add_generation_prompt) const {
  // Validate roles and order first, so a bad conversation fails before any work.
  size_t first_turn = 0;
  const ChatMessage* system = nullptr;
  if (!messages.empty() && messages[0].role == "system") {
    system = &messages[0];
    first_turn = 1;
  }
  for (size_t i = first_turn; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    const char* expected = (i - first_turn) % 2 == 0 ? "user" : "assistant";
    if (role != "user" && role != "assistant" && role != "system") {
      Fail("message ", i, ": unknown role '", role, "' (use system, user or assistant)");
    }
    if (role != expected) {
      Fail("message ", i, ": expected a '", expected, "' turn, got '", role,
           "' (a system message may only come first; user and assistant alternate)");
    }
  }
  const bool ends_with_user = messages.size() > first_turn && messages.back().role == "user";
  if (add_generation_prompt && !ends_with_user) {
    Fail("a generation prompt needs a conversation that ends with a user message");
  }

  Builder out(tokenizer, name_);
  if (style_ == Style::kRaw) {
    // No chat markup, for base models: BOS, then each message's text in turn (each encoded as
    // its own piece, so the dummy prefix puts a word boundary between them), an assistant
    // message closed by EOS. The generation prompt adds nothing: the answer continues the text.
    out.Special(tokenizer.Piece(tokenizer.bos_id()));
    for (const ChatMessage& m : messages) {
      const bool assistant = m.role == "assistant";
      out.Text(m.content, " " + m.content, assistant);
      if (assistant) out.Special(tokenizer.Piece(tokenizer.eos_id()), true);
    }
    return out.Take();
  }
  if (style_ == Style::kOpenChat) {
    // OpenChat's own tokenization (ochat's ConversationTemplate): BOS, the system text
    // and <|end_of_turn|>, then per turn the role prefix and the content encoded
    // separately, each followed by <|end_of_turn|>; the open turn is the bare prefix.
    const std::string bos = tokenizer.Piece(tokenizer.bos_id());
    out.Special(bos);
    if (system != nullptr) {
      out.Text(system->content, system->content);
      out.Special(end_of_turn_);
    }
    for (size_t i = first_turn; i < messages.size(); ++i) {
      const ChatMessage& m = messages[i];
      const std::string& prefix = m.role == "user" ? user_prefix_ : assistant_prefix_;
      const bool assistant = m.role == "assistant";
      out.Text(prefix, prefix);
      out.Text(m.content, " " + m.content, assistant);
      out.Special(end_of_turn_, assistant);
    }
    if (add_generation_prompt) out.Text(assistant_prefix_, assistant_prefix_);
    return out.Take();
  }

  // llama-2, as Starling-RM's card writes it: each exchange is
  //   <s>[INST] {user} </s> [/INST] {assistant}</s>
  // and the ids are what Hugging Face's Llama tokenizer makes of that string: each run of text
  // between special tokens is encoded as one piece (with its own dummy prefix only in legacy
  // mode; see Tokenizer::legacy()). A system message goes
  // inside the first [INST] as Llama-2-chat does: "<<SYS>>\n{system}\n<</SYS>>\n\n".
  for (size_t i = first_turn; i < messages.size(); i += 2) {
    std::string user = messages[i].content;
    if (i == first_turn && system != nullptr) {
      user = "<<SYS>>\n" + system->content + "\n<</SYS>>\n\n" + user;
    }
    out.Special(tokenizer.Piece(tokenizer.bos_id()));
    const std::string prompt = user_prefix_ + " " + user + " ";
    out.TextAfterSpecial(prompt, prompt);
    out.Special(end_of_turn_);
    if (i + 1 < messages.size()) {
      const std::string reply = " " + assistant_prefix_ + " " + messages[i + 1].content;
      out.TextAfterSpecial(reply, reply, assistant_prefix_.size() + 1);
      out.Special(end_of_turn_, /*assistant=*/true);
    } else if (add_generation_prompt) {
      const std::string open = " " + assistant_prefix_;
      out.TextAfterSpecial(open, open);
    }
  }
  return out.Take();
}

std::vector<ChatMessage> ParseChatMessages(std::string_view json, const std::string& source) {
  const nlohmann::json list = ParseStrictJson(json, source, "", /*allow_duplicate_keys=*/true);
  if (!list.is_array()) Fail(source, ": expected a JSON list of {\"role\", \"content\"} objects");
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < list.size(); ++i) {
    const nlohmann::json& m = list[i];
    if (!m.is_object()) Fail(source, ": message ", i, " is not an object");
    for (const char* key : {"role", "content"}) {
      if (!m.contains(key) || !m[key].is_string()) {
        Fail(source, ": message ", i, ": \"", key, "\" must be a string");
      }
    }
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return messages;
}

RenderedChat RenderWithin(const ChatTemplate& chat_template, const Tokenizer& tokenizer,
                          std::vector<ChatMessage>* messages, size_t max_ids, int* dropped) {
  *dropped = 0;
  const size_t first = !messages->empty() && messages->front().role == "system" ? 1 : 0;
  while (true) {
    RenderedChat r = chat_template.Render(tokenizer, *messages, true);
    if (r.ids.size() <= max_ids) return r;
    if (messages->size() <= first + 1) {
      Fail("the message is ", r.ids.size(), " tokens with the template",
           first == 1 ? " and the system message" : "", ", more than the ", max_ids,
           " the context leaves for it");
    }
    // One turn: the user message and, when there is one before the last message, its reply.
    const size_t n =
        messages->size() - first > 2 && (*messages)[first + 1].role == "assistant" ? 2 : 1;
    messages->erase(messages->begin() + static_cast<std::ptrdiff_t>(first),
                    messages->begin() + static_cast<std::ptrdiff_t>(first + n));
    *dropped += static_cast<int>(n);
  }
}

}  // namespace starling
