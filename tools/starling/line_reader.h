// Lines from the user for `starling chat`: on a terminal through libedit (arrow keys, Ctrl-A/E,
// Ctrl-R, history kept in a file), from a pipe or file as plain lines.
//
// Ctrl-C reaches the process as SIGINT on the one signal thread (core/signals.h), never on the
// thread blocked in Read(): Interrupt(), called from that thread, wakes Read() through a pipe
// that libedit's character reader polls beside the terminal.
#pragma once

#include <memory>
#include <string>

namespace starling::cli {

class LineReader {
 public:
  // `interactive`: stdin is a terminal (libedit); else plain lines. `history_file`: where the
  // history is loaded from and saved to after each entry; empty for none.
  LineReader(bool interactive, std::string history_file);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  enum class Status {
    kLine,              // *line holds the line, without its newline
    kEnd,               // end of input (Ctrl-D on an empty line)
    kInterruptedEmpty,  // Ctrl-C on an empty line
    kInterrupted,       // Ctrl-C with text on the line (the text is dropped)
  };
  Status Read(const std::string& prompt, std::string* line);
  void AddHistory(const std::string& entry);
  bool interactive() const { return interactive_; }

  // Wakes a Read() in progress (it returns kInterrupted*). Safe on any thread; does nothing to a
  // plain (non-interactive) reader. A wake-up that no Read() takes is dropped at the next Read().
  void Interrupt();

 private:
  struct Editor;
  bool interactive_;
  std::unique_ptr<Editor> editor_;
};

// $XDG_STATE_HOME/starling/chat_history, else ~/.local/state/starling/chat_history.
std::string DefaultChatHistoryFile();

}  // namespace starling::cli
