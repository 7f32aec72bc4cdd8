// Chat templates, chosen by explicit name (never by sniffing a Jinja string):
//   openchat       OpenChat 3.5 / Starling-LM-7B-alpha ("GPT4 Correct User: ...")
//   openchat-code  the same models' coding mode ("Code User: ...")
//   llama-2        Starling-RM-7B-alpha's reward-model input ("<s>[INST] ... </s> [/INST] ...</s>")
// A conversation renders to token ids the way the model's own code builds them, and to a
// display string. Message content is always plain text: special-token text typed by a
// user is never turned into special tokens.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace starling {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct RenderedChat {
  std::vector<int32_t> ids;
  std::string text;  // what the ids decode to with special tokens shown
  // [ids.size()]: 1 where the token belongs to an assistant message's content or to the
  // end-of-turn token that closes it (what supervised fine-tuning trains on), else 0.
  std::vector<uint8_t> assistant;
};

class ChatTemplate {
 public:
  // Throws starling::Error listing the known names when `name` is not one of them.
  static const ChatTemplate& ByName(std::string_view name);
  static std::vector<std::string_view> Names();
  // The template whose Hugging Face `chat_template` (tokenizer_config.json) or GGUF
  // `tokenizer.chat_template` is exactly `jinja`, if we know it.
  static const ChatTemplate* FromJinja(std::string_view jinja);
  // The template a model or tokenizer at `path` names in its files (a Hugging Face directory's
  // tokenizer_config.json, a trainer's tokenizer.gguf, a GGUF file's metadata), if we know it.
  static const ChatTemplate* OfModel(const std::string& path);

  std::string_view name() const { return name_; }
  // The Hugging Face `chat_template` this template reproduces (empty when none is known), to
  // write into a model's files so that loaders pick this template.
  std::string_view jinja() const { return jinja_.empty() ? std::string_view() : jinja_[0]; }
  // The text of the token that ends every turn and stops generation.
  std::string_view end_of_turn() const { return end_of_turn_; }

  // Renders `messages` (an optional leading system message, then user and assistant turns
  // alternating, starting with user). With `add_generation_prompt`, the conversation must
  // end with a user turn and the open assistant turn follows. Throws starling::Error naming
  // the message index for an unknown role or a turn out of order, and when the tokenizer
  // lacks a token the template needs.
  RenderedChat Render(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                      bool add_generation_prompt) const;

  enum class Style { kOpenChat, kLlama2, kRaw };
  ChatTemplate(std::string name, Style style, std::string user_prefix, std::string assistant_prefix,
               std::string end_of_turn, std::vector<std::string> jinja);

 private:
  std::string name_;
  Style style_;
  std::string user_prefix_;       // openchat: "GPT4 Correct User:"
  std::string assistant_prefix_;  // openchat: "GPT4 Correct Assistant:"
  std::string end_of_turn_;
  std::vector<std::string> jinja_;  // known chat_template strings for this template
};

// Parses a JSON list of {"role": ..., "content": ...} objects. `source` names the file.
std::vector<ChatMessage> ParseChatMessages(std::string_view json, const std::string& source);

// Renders `*messages` with the generation prompt within `max_ids` tokens, for a chat that
// outgrows its context: the oldest turns (a user message and the reply after it) are removed
// from `*messages` until the rendering fits; a leading system message and the last message
// stay. `*dropped` counts the messages removed. Throws starling::Error when the system message
// and the last message alone do not fit.
RenderedChat RenderWithin(const ChatTemplate& chat_template, const Tokenizer& tokenizer,
                          std::vector<ChatMessage>* messages, size_t max_ids, int* dropped);

}  // namespace starling
