#include "line_reader.h"

#include <fcntl.h>
#include <histedit.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <clocale>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cwchar>
#include <filesystem>
#include <iostream>

#include "core/error.h"

namespace starling::cli {

struct LineReader::Editor {
  EditLine* el = nullptr;
  History* history = nullptr;
  std::string history_file;
  std::string prompt;
  int wake[2] = {-1, -1};  // Interrupt() writes to [1]; ReadChar polls [0]
  bool interrupted = false;
  bool line_had_text = false;

  void Drain() const {
    char buf[64];
    while (::read(wake[0], buf, sizeof buf) > 0) {
    }
  }

  static char* Prompt(EditLine* el) {
    Editor* self = nullptr;
    el_get(el, EL_CLIENTDATA, &self);
    return self->prompt.data();
  }

  // libedit's character reader, replaced so that a wake-up ends el_gets(): polls the terminal
  // and the wake pipe, and decodes UTF-8 itself (what libedit's own reader does with mbrtowc).
  static int ReadChar(EditLine* el, wchar_t* out) {
    Editor* self = nullptr;
    el_get(el, EL_CLIENTDATA, &self);
    unsigned char bytes[4];
    int have = 0, need = 1;
    while (true) {
      pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {self->wake[0], POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return -1;
      }
      if (fds[1].revents != 0) {
        self->Drain();
        const LineInfo* line = el_line(el);
        self->line_had_text = line->lastchar != line->buffer;
        self->interrupted = true;
        return -1;
      }
      unsigned char c = 0;
      const ssize_t n = ::read(STDIN_FILENO, &c, 1);
      if (n == 0) return 0;
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return -1;
      }
      if (have == 0) {
        need = c < 0x80 ? 1 : c >= 0xF0 && c < 0xF8 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
      } else if ((c & 0xC0) != 0x80) {
        *out = L'\uFFFD';  // a broken sequence: drop it
        return 1;
      }
      bytes[have++] = c;
      if (have < need) continue;
      if (need == 1) {
        *out = static_cast<wchar_t>(c < 0x80 ? c : 0xFFFD);
        return 1;
      }
      uint32_t code = bytes[0] & (0x7F >> need);
      for (int k = 1; k < need; ++k) code = code << 6 | (bytes[k] & 0x3F);
      *out = static_cast<wchar_t>(code);
      return 1;
    }
  }
};

LineReader::LineReader(bool interactive, std::string history_file) : interactive_(interactive) {
  if (!interactive_) return;
  // libedit turns characters into bytes by the locale: UTF-8 unless the environment says else.
  if (std::setlocale(LC_CTYPE, "") == nullptr || MB_CUR_MAX == 1) {
    std::setlocale(LC_CTYPE, "C.UTF-8");
  }
  editor_ = std::make_unique<Editor>();
  Editor& e = *editor_;
  if (::pipe2(e.wake, O_NONBLOCK | O_CLOEXEC) != 0) Fail("pipe: ", std::strerror(errno));
  e.history_file = std::move(history_file);
  e.el = el_init("starling", stdin, stdout, stderr);
  if (e.el == nullptr) Fail("cannot start line editing (libedit) on this terminal");
  el_set(e.el, EL_CLIENTDATA, &e);
  el_set(e.el, EL_EDITOR, "emacs");
  el_set(e.el, EL_PROMPT, &Editor::Prompt);
  el_set(e.el, EL_GETCFN, &Editor::ReadChar);
  e.history = history_init();
  HistEvent event;
  history(e.history, &event, H_SETSIZE, 1000);
  history(e.history, &event, H_SETUNIQUE, 1);
  el_set(e.el, EL_HIST, history, e.history);
  if (!e.history_file.empty()) {
    std::error_code ignored;
    std::filesystem::create_directories(std::filesystem::path(e.history_file).parent_path(),
                                        ignored);
    history(e.history, &event, H_LOAD, e.history_file.c_str());  // none yet is fine
  }
  el_source(e.el, nullptr);  // ~/.editrc, as other libedit programs read it
}

LineReader::~LineReader() {
  if (!editor_) return;
  el_end(editor_->el);
  history_end(editor_->history);
  ::close(editor_->wake[0]);
  ::close(editor_->wake[1]);
}

LineReader::Status LineReader::Read(const std::string& prompt, std::string* line) {
  if (!interactive_) {
    if (!std::getline(std::cin, *line)) return Status::kEnd;
    return Status::kLine;
  }
  Editor& e = *editor_;
  e.Drain();  // a Ctrl-C that stopped a reply is not one for this prompt
  e.prompt = prompt;
  e.interrupted = false;
  int count = 0;
  const char* text = el_gets(e.el, &count);
  if (e.interrupted) {
    el_reset(e.el);
    return e.line_had_text ? Status::kInterrupted : Status::kInterruptedEmpty;
  }
  if (text == nullptr || count <= 0) return Status::kEnd;
  line->assign(text, static_cast<size_t>(count));
  if (!line->empty() && line->back() == '\n') line->pop_back();
  return Status::kLine;
}

void LineReader::AddHistory(const std::string& entry) {
  if (!interactive_ || entry.empty()) return;
  HistEvent event;
  history(editor_->history, &event, H_ENTER, entry.c_str());
  if (!editor_->history_file.empty()) {
    history(editor_->history, &event, H_SAVE, editor_->history_file.c_str());
  }
}

void LineReader::Interrupt() {
  if (!interactive_) return;
  const char byte = 1;
  [[maybe_unused]] const ssize_t n = ::write(editor_->wake[1], &byte, 1);
}

std::string DefaultChatHistoryFile() {
  const char* state = std::getenv("XDG_STATE_HOME");
  if (state != nullptr && *state != '\0') return std::string(state) + "/starling/chat_history";
  const char* home = std::getenv("HOME");
  if (home == nullptr || *home == '\0') return "";
  return std::string(home) + "/.local/state/starling/chat_history";
}

}  // namespace starling::cli
