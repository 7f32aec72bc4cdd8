// SIGINT and SIGTERM are taken by one dedicated thread, never by a compute or HTTP worker.
//
// A signal the process does not block is delivered to any thread that does not block it: if
// a thread pool started before the server blocked the signals, SIGTERM ended the process
// (exit 143) instead of shutting the server down. So main() calls StartSignalThread() before
// anything else: it blocks both signals in the calling thread, which every thread started
// later inherits, and starts the one thread that waits for them.
#pragma once

#include <functional>

namespace starling {

// Blocks SIGINT and SIGTERM in the calling thread and starts the thread that takes them.
// Call it before any other thread starts; later calls do nothing. With no handler set, a
// signal has its usual effect: the process ends by it (unless it was ignored at start).
void StartSignalThread();

// `handler(signal)` runs on the signal thread for each later SIGINT/SIGTERM; an empty function
// restores the usual effect. It should only note the request and wake whoever acts on it.
void SetSignalHandler(std::function<void(int)> handler);

}  // namespace starling
