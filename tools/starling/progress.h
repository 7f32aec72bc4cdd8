// A progress line with an ETA on stderr for long operations (quantize, make-model,
// perplexity). On a terminal one line redrawn at most 10 times a second; elsewhere (a log, a
// pipe, a test reading stderr) a line only when another 10% is done, so logs stay short.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

namespace starling::cli {

// "1:02:03" for hours, "2:03" below an hour.
inline std::string ClockDuration(double seconds) {
  const auto s = static_cast<long long>(std::max(0.0, seconds) + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  }
  return buf;
}

class Progress {
 public:
  // `what` starts each line ("quantize", "make-model"); `total` in any unit.
  Progress(std::string what, double total)
      : what_(std::move(what)),
        total_(total),
        tty_(::isatty(STDERR_FILENO) != 0),
        start_(std::chrono::steady_clock::now()) {}
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  ~Progress() { Finish(); }

  // `done` of `total`; `detail` is added to the line (e.g. the current tensor).
  void Update(double done, const std::string& detail = "") {
    if (total_ <= 0) return;
    const auto now = std::chrono::steady_clock::now();
    const double fraction = std::min(1.0, done / total_);
    const int decile = static_cast<int>(fraction * 10);
    if (tty_) {
      if (now - last_draw_ < std::chrono::milliseconds(100) && fraction < 1) return;
    } else if (decile <= last_decile_) {
      return;
    }
    last_draw_ = now;
    last_decile_ = decile;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    std::string line = what_ + ": ";
    char pct[32];
    std::snprintf(pct, sizeof pct, "%3.0f%%", 100 * fraction);
    line += pct;
    if (!detail.empty()) line += "  " + detail;
    line += "  elapsed " + ClockDuration(elapsed);
    if (fraction > 0 && fraction < 1) {
      line += "  ETA " + ClockDuration(elapsed / fraction * (1 - fraction));
    }
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s", line.c_str());
      drawn_ = true;
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }

  // Erases a redrawn terminal line, so that a line printed next stands alone (the progress
  // line comes back at the next Update).
  void Clear() {
    if (drawn_) std::fputs("\r\033[K", stderr);
    drawn_ = false;
  }

  // Ends a redrawn terminal line, so that what follows starts on its own line.
  void Finish() {
    if (drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }

 private:
  std::string what_;
  double total_;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_draw_{};
  int last_decile_ = 0;
  bool drawn_ = false;
};

}  // namespace starling::cli
