// The server's HTTP connections: cpp-httplib's request parsing and routing, over connections
// this class reads and writes itself, so that every limit holds whatever the client sends.
//
// httplib (0.11, as Debian ships it) reads a chunked body, a body with no length and an
// inflated gzip body in full before any handler runs, waits for headers for as long as each
// line keeps coming, reads each request of a keep-alive connection through a fresh buffer
// (so a pipelined second request is lost), and binds with SO_REUSEPORT (so a second server
// on a busy port "succeeds"). Here each connection:
//   - waits at most `read_timeout` for its headers (all of them, from the first byte) and at
//     most 64 KiB of them; a body may pause at most `read_timeout` and must arrive within six
//     times that; the client then gets 408 (or 431) and the connection closes;
//   - reads its body only when a handler asks for it (ReadBody), counting the bytes received
//     (at most max_body + 64 KiB of chunk framing) and the bytes after inflation (at most
//     max_body): 413 as soon as either is passed, before more is buffered;
//   - keeps one read buffer for its whole life (pipelined requests are answered in order);
//   - counts towards `max_connections`: one more is answered 503 (Retry-After) and closed
//     without reading anything. Each open connection has its own thread, so slow clients
//     cannot hold the threads that others need.
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>

namespace starling {

struct HttpLimits {
  size_t max_body_bytes = 4u << 20;  // after inflation; received: this + kChunkFraming
  int max_connections = 256;         // open at once; more get 503 at once
  int read_timeout_seconds = 10;     // for the headers; the longest pause in a body
};

class HttpServer : public httplib::Server {
 public:
  static constexpr size_t kHeaderBytes = 64u << 10;   // request line + headers
  static constexpr size_t kChunkFraming = 64u << 10;  // received beyond max_body (chunk lines)

  explicit HttpServer(const HttpLimits& limits);

  // The body of the request being handled on this thread, read through its handler's
  // `reader` (inflated when gzip, deflate or br). Throws ApiError: 413 past the limits, 408
  // when the client stops sending, 400 for a malformed body. A request whose body was not
  // read completely closes its connection after the response.
  static std::string ReadBody(const httplib::ContentReader& reader);
  // The connection of the request being handled on this thread closes after its response.
  static void CloseAfterResponse();
  // Why the current request's headers could not be read (for the error handler): 408 (too
  // slow), 431 (too large) or 0.
  static int HeaderFailureStatus();
  // When the current request's first byte arrived (for the request log).
  static std::chrono::steady_clock::time_point RequestStarted();

  int open_connections() const { return open_connections_; }
  const HttpLimits& limits() const { return limits_; }

 private:
  bool process_and_close_socket(socket_t sock) override;

  const HttpLimits limits_;
  std::atomic<int> open_connections_{0};
};

}  // namespace starling
