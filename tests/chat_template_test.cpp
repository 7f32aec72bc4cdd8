// Chat templates as a table of {template, messages, expected string, expected ids}. The
// expected ids were computed independently: each text part encoded by Google's
// SentencePiece (spm_encode 0.1.97, --output_format=id) and joined with the special ids,
// and the model card's sequences are copied from the Starling-LM-7B-alpha card.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "core/error.h"
#include "tokenizer/load.h"

namespace starling {
namespace {

const Tokenizer& OpenChatTokenizer() {
  static const Tokenizer tokenizer =
      LoadTokenizer(std::string(STARLING_MODELS_DIR) + "/openchat-3.5-tokenizer");
  return tokenizer;
}

const Tokenizer& Llama2Tokenizer() {
  static const Tokenizer tokenizer =
      LoadTokenizer(std::string(STARLING_TEST_DATA_DIR) + "/tokenizers/llama-2/tokenizer.model");
  return tokenizer;
}

struct Case {
  const char* name;
  const char* template_name;
  std::vector<ChatMessage> messages;
  bool generation_prompt;
  std::string expected_text;
  std::vector<int32_t> expected_ids;
};

std::vector<Case> Cases() {
  return {
      {"card_single_turn",
       "openchat",
       {{"user", "Hello"}},
       true,
       "<s>GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant:",
       {1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 22557, 32000, 420, 6316, 28781, 3198, 3123,
        21631, 28747}},
      {"card_multi_turn",
       "openchat",
       {{"user", "Hello"}, {"assistant", "Hi"}, {"user", "How are you today?"}},
       true,
       "<s>GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant: Hi<|end_of_turn|>"
       "GPT4 Correct User: How are you today?<|end_of_turn|>GPT4 Correct Assistant:",
       {1,    420,  6316,  28781, 3198,  3123,  1247, 28747, 22557, 32000, 420,  6316,  28781,
        3198, 3123, 21631, 28747, 15359, 32000, 420,  6316,  28781, 3198,  3123, 1247,  28747,
        1602, 460,  368,   3154,  28804, 32000, 420,  6316,  28781, 3198,  3123, 21631, 28747}},
      {"card_code",
       "openchat-code",
       {{"user", "Implement quicksort using C++"}},
       true,
       "<s>Code User: Implement quicksort using C++<|end_of_turn|>Code Assistant:",
       {1, 7596, 1247, 28747, 26256, 2936, 7653, 1413, 334, 1680, 32000, 7596, 21631, 28747}},
      {"system_message",
       "openchat",
       {{"system", "You are a helpful assistant."}, {"user", "Hi"}},
       true,
       "<s>You are a helpful assistant.<|end_of_turn|>GPT4 Correct User: Hi<|end_of_turn|>"
       "GPT4 Correct Assistant:",
       {1,    995,  460,   264,   10865, 13892, 28723, 32000, 420,  6316, 28781, 3198,
        3123, 1247, 28747, 15359, 32000, 420,   6316,  28781, 3198, 3123, 21631, 28747}},
      {"closed_conversation",
       "openchat",
       {{"user", "Hi"}, {"assistant", "Hello there"}},
       false,
       "<s>GPT4 Correct User: Hi<|end_of_turn|>GPT4 Correct Assistant: Hello there<|end_of_turn|>",
       {1,   420,  6316,  28781, 3198, 3123,  1247,  28747, 15359, 32000,
        420, 6316, 28781, 3198,  3123, 21631, 28747, 22557, 736,   32000}},
      {"special_text_in_content_is_plain",
       "openchat",
       {{"user", "<|end_of_turn|>"}},
       true,
       "<s>GPT4 Correct User: <|end_of_turn|><|end_of_turn|>GPT4 Correct Assistant:",
       {1,     420, 6316,  28781, 3198,  3123, 1247, 28747, 523,  28766, 416,   28730, 1009,
        28730, 499, 28766, 28767, 32000, 420,  6316, 28781, 3198, 3123,  21631, 28747}},
      {"bos_text_in_content_is_plain",
       "openchat",
       {{"user", "Say <s> please"}},
       false,
       "<s>GPT4 Correct User: Say <s> please<|end_of_turn|>",
       {1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 15753, 523, 28713, 28767, 4665, 32000}},
      {"empty_content",
       "openchat",
       {{"user", ""}},
       true,
       "<s>GPT4 Correct User: <|end_of_turn|>GPT4 Correct Assistant:",
       {1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 32000, 420, 6316, 28781, 3198, 3123, 21631,
        28747}},
      {"code_multi_turn",
       "openchat-code",
       {{"user", "Write hello world in C"}, {"assistant", "Hi"}},
       false,
       "<s>Code User: Write hello world in C<|end_of_turn|>Code Assistant: Hi<|end_of_turn|>",
       {1, 7596, 1247, 28747, 12018, 6312, 28709, 1526, 297, 334, 32000, 7596, 21631, 28747, 15359,
        32000}},
      {"llama2_card",
       "llama-2",
       {{"user", "Hello?"}, {"assistant", "Hi, how can I help?"}},
       false,
       "<s>[INST] Hello? </s> [/INST] Hi, how can I help?</s>",
       {1,     518,   25580, 29962, 15043, 29973, 29871, 2,    29871, 518, 29914,
        25580, 29962, 6324,  29892, 920,   508,   306,   1371, 29973, 2}},
      {"llama2_multi_turn",
       "llama-2",
       {{"user", "Hello?"},
        {"assistant", "Hi, how can I help?"},
        {"user", "What is 2+2?"},
        {"assistant", "4"}},
       false,
       "<s>[INST] Hello? </s> [/INST] Hi, how can I help?</s><s>[INST] What is 2+2? </s> "
       "[/INST] 4</s>",
       {1,     518,   25580, 29962, 15043, 29973, 29871, 2,     29871, 518,   29914,
        25580, 29962, 6324,  29892, 920,   508,   306,   1371,  29973, 2,     1,
        518,   25580, 29962, 1724,  338,   29871, 29906, 29974, 29906, 29973, 29871,
        2,     29871, 518,   29914, 25580, 29962, 29871, 29946, 2}},
      {"llama2_generation_prompt",
       "llama-2",
       {{"user", "Hello?"}},
       true,
       "<s>[INST] Hello? </s> [/INST]",
       {1, 518, 25580, 29962, 15043, 29973, 29871, 2, 29871, 518, 29914, 25580, 29962}},
  };
}

TEST(ChatTemplate, GoldenTable) {
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    const ChatTemplate& t = ChatTemplate::ByName(c.template_name);
    const Tokenizer& tokenizer = t.name() == "llama-2" ? Llama2Tokenizer() : OpenChatTokenizer();
    const RenderedChat rendered = t.Render(tokenizer, c.messages, c.generation_prompt);
    EXPECT_EQ(rendered.text, c.expected_text);
    EXPECT_EQ(rendered.ids, c.expected_ids);
  }
}

TEST(ChatTemplate, DisplayStringEncodesToTheSameIdsWhenNoPartBoundaryMatters) {
  // The display string, tokenized the Hugging Face way (special tokens parsed), gives the
  // same ids for these conversations: the chat_template path and ours agree.
  for (const Case& c : Cases()) {
    if (std::string(c.name).find("plain") != std::string::npos) continue;  // injection cases
    if (std::string(c.name) == "empty_content") continue;  // HF would encode the lone space
    SCOPED_TRACE(c.name);
    const ChatTemplate& t = ChatTemplate::ByName(c.template_name);
    const Tokenizer& tokenizer = t.name() == "llama-2" ? Llama2Tokenizer() : OpenChatTokenizer();
    const RenderedChat rendered = t.Render(tokenizer, c.messages, c.generation_prompt);
    EXPECT_EQ(tokenizer.Encode(rendered.text, {.add_bos = false}), rendered.ids);
  }
}

// "raw" (base models): BOS, each message's text as its own piece (the dummy prefix makes the
// word boundary), an answer closed by EOS; the generation prompt adds nothing. The ids are the
// tokenizer's own encodings of the parts, so the whole equals encoding the display text.
TEST(ChatTemplate, RawJoinsTheTextsAndClosesAnswersWithEos) {
  const Tokenizer& tok = Llama2Tokenizer();
  const ChatTemplate& raw = ChatTemplate::ByName("raw");
  const std::vector<ChatMessage> prompt = {{"user", "Once upon a time"}};
  const RenderedChat open = raw.Render(tok, prompt, true);
  std::vector<int32_t> expected = {tok.bos_id()};
  tok.EncodeText("Once upon a time", &expected);
  EXPECT_EQ(open.ids, expected);
  EXPECT_EQ(open.text, "<s> Once upon a time");
  const std::vector<ChatMessage> answered = {{"user", "Once upon a time"},
                                             {"assistant", "there was a dog."}};
  const RenderedChat closed = raw.Render(tok, answered, false);
  tok.EncodeText("there was a dog.", &expected);
  const size_t answer_begin = open.ids.size();
  expected.push_back(tok.eos_id());
  EXPECT_EQ(closed.ids, expected);
  for (size_t i = 0; i < closed.ids.size(); ++i) {
    EXPECT_EQ(closed.assistant[i], i >= answer_begin ? 1 : 0) << i;
  }
}

TEST(ChatTemplate, Llama2SystemMessageGoesInsideTheFirstInst) {
  const std::vector<ChatMessage> messages = {{"system", "Be brief."}, {"user", "Hello?"}};
  const RenderedChat r = ChatTemplate::ByName("llama-2").Render(Llama2Tokenizer(), messages, true);
  EXPECT_EQ(r.text, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello? </s> [/INST]");
  std::vector<int32_t> expected = {1};
  Llama2Tokenizer().EncodeText("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello? ", &expected);
  expected.push_back(2);
  Llama2Tokenizer().EncodeText(" [/INST]", &expected);
  EXPECT_EQ(r.ids, expected);
}

TEST(ChatTemplate, AssistantMaskCoversExactlyTheAnswersAndTheirEndOfTurn) {
  const std::vector<ChatMessage> messages = {{"system", "Be brief."},
                                             {"user", "What is 2 + 3?"},
                                             {"assistant", "It is 5."},
                                             {"user", "And 2 + 4?"},
                                             {"assistant", "6, of course."}};
  auto masked = [](const RenderedChat& r) {
    EXPECT_EQ(r.assistant.size(), r.ids.size());
    std::vector<int32_t> out;
    for (size_t i = 0; i < r.ids.size(); ++i) {
      if (r.assistant[i]) out.push_back(r.ids[i]);
    }
    return out;
  };
  // openchat: the content's own encoding and <|end_of_turn|> (32000), per assistant turn;
  // role prefixes, user and system turns are not in the mask.
  const RenderedChat oc =
      ChatTemplate::ByName("openchat").Render(OpenChatTokenizer(), messages, false);
  std::vector<int32_t> want;
  OpenChatTokenizer().EncodeText("It is 5.", &want);
  want.push_back(32000);
  OpenChatTokenizer().EncodeText("6, of course.", &want);
  want.push_back(32000);
  EXPECT_EQ(masked(oc), want);
  // llama-2: the reply shares one text run with " [/INST]"; the masked tokens decode to the
  // answers and </s> alone.
  const RenderedChat l2 =
      ChatTemplate::ByName("llama-2").Render(Llama2Tokenizer(), messages, false);
  // (Decode drops the dummy-prefix space at the start of each segment.)
  EXPECT_EQ(Llama2Tokenizer().Decode(masked(l2)), "It is 5.</s>6, of course.</s>");
  // A generation prompt and a trailing user turn add nothing to train.
  const RenderedChat open = ChatTemplate::ByName("openchat")
                                .Render(OpenChatTokenizer(), std::span(messages).first(4), true);
  std::vector<int32_t> first_answer;
  OpenChatTokenizer().EncodeText("It is 5.", &first_answer);
  EXPECT_EQ(masked(open).size(), first_answer.size() + 1);
}

TEST(ChatTemplate, RejectsBadConversations) {
  const ChatTemplate& t = ChatTemplate::ByName("openchat");
  const Tokenizer& tok = OpenChatTokenizer();
  auto expect_error = [&](std::vector<ChatMessage> messages, bool gen, const char* needle) {
    try {
      t.Render(tok, messages, gen);
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({{"robot", "x"}}, false, "message 0: unknown role 'robot'");
  expect_error({{"assistant", "x"}}, false, "message 0: expected a 'user' turn");
  expect_error({{"user", "a"}, {"user", "b"}}, false, "message 1: expected a 'assistant' turn");
  expect_error({{"user", "a"}, {"system", "b"}}, false, "message 1");
  expect_error({{"user", "a"}, {"assistant", "b"}}, true, "ends with a user message");
  expect_error({}, true, "ends with a user message");
}

TEST(ChatTemplate, UnknownNameListsTheKnownOnes) {
  try {
    ChatTemplate::ByName("chatml");
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "unknown chat template 'chatml' (known: openchat, openchat-code, llama-2, raw)");
  }
}

TEST(ChatTemplate, TemplateNeedsItsSpecialToken) {
  // The bare Llama-2 tokenizer has no <|end_of_turn|>: a clear error, not wrong ids.
  try {
    ChatTemplate::ByName("openchat").Render(Llama2Tokenizer(), {{{"user", "x"}}}, true);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs the special token '<|end_of_turn|>'"),
              std::string::npos);
  }
}

TEST(ChatTemplate, RecognisesOnlyExactJinjaTemplates) {
  const std::string jinja =
      R"({{ bos_token }}{% for message in messages %}{{ 'GPT4 Correct ' + message['role'].title() + ': ' + message['content'] + '<|end_of_turn|>'}}{% endfor %}{% if add_generation_prompt %}{{ 'GPT4 Correct Assistant:' }}{% endif %})";
  ASSERT_NE(ChatTemplate::FromJinja(jinja), nullptr);
  EXPECT_EQ(ChatTemplate::FromJinja(jinja)->name(), "openchat");
  EXPECT_EQ(ChatTemplate::FromJinja(jinja + " "), nullptr);
  EXPECT_EQ(ChatTemplate::FromJinja("GPT4 Correct"), nullptr);
}

TEST(ChatTemplate, ParsesMessagesJson) {
  const auto m = ParseChatMessages(R"([{"role":"user","content":"a\u00e9"}])", "m.json");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].content, "a\xC3\xA9");
  for (const char* bad :
       {"{", "{}", "[1]", R"([{"role":"user"}])", R"([{"role":1,"content":"x"}])"}) {
    EXPECT_THROW(ParseChatMessages(bad, "m.json"), Error) << bad;
  }
}

}  // namespace
}  // namespace starling
