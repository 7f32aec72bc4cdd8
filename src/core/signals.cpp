#include "core/signals.h"

#include <pthread.h>
#include <signal.h>

#include <mutex>
#include <thread>

namespace starling {
namespace {

std::mutex g_mutex;
std::function<void(int)> g_handler;
bool g_ignored[2] = {false, false};  // SIGINT, SIGTERM ignored when the process started

constexpr int kSignals[2] = {SIGINT, SIGTERM};

sigset_t ShutdownSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  for (const int s : kSignals) sigaddset(&signals, s);
  return signals;
}

// The usual effect of `signal`: unblocked in this thread and sent to it again, it ends the
// process as if it had never been blocked.
void DefaultAction(int signal) {
  for (int i = 0; i < 2; ++i) {
    if (kSignals[i] == signal && g_ignored[i]) return;
  }
  ::signal(signal, SIG_DFL);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, signal);
  pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
  pthread_kill(pthread_self(), signal);
}

void WaitForSignals(sigset_t signals) {
  while (true) {
    int signal = 0;
    if (sigwait(&signals, &signal) != 0) continue;
    std::function<void(int)> handler;
    {
      std::lock_guard lock(g_mutex);
      handler = g_handler;
    }
    if (handler) {
      handler(signal);
    } else {
      DefaultAction(signal);
    }
  }
}

}  // namespace

void StartSignalThread() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int i = 0; i < 2; ++i) {
      struct sigaction current {};
      sigaction(kSignals[i], nullptr, &current);
      g_ignored[i] = current.sa_handler == SIG_IGN;
    }
    const sigset_t signals = ShutdownSignals();
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::thread(WaitForSignals, signals).detach();
  });
}

void SetSignalHandler(std::function<void(int)> handler) {
  std::lock_guard lock(g_mutex);
  g_handler = std::move(handler);
}

}  // namespace starling
