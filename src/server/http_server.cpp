#include "server/http_server.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"
#include "server/openai_api.h"
#include "server/server_log.h"

namespace starling {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How often a waiting read or write looks whether the server is stopping.
constexpr milliseconds kPollSlice{100};
// After a response whose request body was left unread, how long the connection reads and drops
// what the client still sends before closing: closing at once with unread bytes makes the
// kernel send a reset, which can destroy the response before the client reads it.
constexpr milliseconds kLinger{1000};

// One client connection: a buffered httplib::Stream over the socket that enforces the deadlines
// and byte budgets of the current phase (headers or body).
class Connection final : public httplib::Stream {
 public:
  Connection(int fd, const std::atomic<socket_t>& listener, time_t write_timeout_seconds,
             size_t max_body)
      : fd_(fd),
        listener_(listener),
        write_timeout_(std::chrono::seconds(write_timeout_seconds)),
        max_body_(max_body) {}

  // Waits for the first byte of the next request; false on timeout, end of stream, an error or
  // when the server stops.
  bool WaitForRequest(Clock::duration timeout) {
    if (pos_ < end_) return true;
    deadline_ = Clock::now() + timeout;
    stall_ = timeout;
    return Fill();
  }

  void BeginHeaders(Clock::duration timeout) {
    started_ = Clock::now();
    budget_ = HttpServer::kHeaderBytes;
    deadline_ = Clock::now() + timeout;
    stall_ = timeout;
    header_failure_ = 0;
    in_headers_ = true;
    written_ = 0;
    body_pending_ = false;
    body_failure_ = 0;
  }

  // The headers are in: the body (if any) may take `budget` bytes as received.
  void BeginBody(const httplib::Request& req, size_t budget, Clock::duration stall) {
    in_headers_ = false;
    budget_ = budget;
    deadline_ = Clock::now() + 6 * stall;
    stall_ = stall;
    const std::string length = req.get_header_value("Content-Length");
    body_pending_ =
        req.has_header("Transfer-Encoding") ||
        (req.has_header("Content-Length") && length.find_first_not_of('0') != std::string::npos);
  }

  ssize_t read(char* ptr, size_t size) override {
    if (budget_ == 0) {
      if (in_headers_) {
        header_failure_ = 431;
      } else {
        body_failure_ = 413;
      }
      return -1;
    }
    if (pos_ == end_ && !Fill()) {
      if (timed_out_) {
        if (in_headers_) header_failure_ = 408;
        if (!in_headers_) body_failure_ = 408;
        return -1;
      }
      return eof_ ? 0 : -1;
    }
    const size_t n = std::min({size, end_ - pos_, budget_});
    std::memcpy(ptr, buffer_.data() + pos_, n);
    pos_ += n;
    budget_ -= n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!WaitFor(POLLOUT, Clock::now() + write_timeout_)) return -1;
    for (;;) {
      const ssize_t n = ::send(fd_, ptr, size, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n > 0) written_ += static_cast<size_t>(n);
      return n;
    }
  }

  bool WriteAll(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = write(data.data(), data.size());
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  bool is_readable() const override {
    if (pos_ < end_) return true;
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(stall_ / milliseconds(1))) > 0;
  }

  // Writable, and the client has not closed its end (as httplib's own streams decide).
  bool is_writable() const override {
    pollfd p{fd_, POLLOUT, 0};
    if (::poll(&p, 1, static_cast<int>(write_timeout_ / milliseconds(1))) <= 0) return false;
    if (pos_ < end_) return true;
    p = {fd_, POLLIN, 0};
    if (::poll(&p, 1, 0) == 0) return true;
    char byte;
    return ::recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    Address(&getpeername, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    Address(&getsockname, ip, port);
  }
  socket_t socket() const override { return fd_; }

  size_t max_body() const { return max_body_; }
  Clock::time_point started() const { return started_; }
  std::string remote() const {
    std::string ip;
    int port = 0;
    get_remote_ip_and_port(ip, port);
    return ip;
  }
  size_t written() const { return written_; }
  int header_failure() const { return header_failure_; }
  int body_failure() const { return body_failure_; }
  bool body_pending() const { return body_pending_; }
  void BodyRead() { body_pending_ = false; }
  bool close_requested() const { return close_requested_; }
  void RequestClose() { close_requested_ = true; }
  void KeepOpen() { close_requested_ = false; }

  // Closes the connection; when a request body was left unread, first ends the response
  // stream and drops what the client still sends for up to kLinger.
  void Close() {
    if (body_pending_ || header_failure_ != 0) {
      ::shutdown(fd_, SHUT_WR);
      deadline_ = Clock::now() + kLinger;
      stall_ = kLinger;
      while (Fill()) pos_ = end_;
    }
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
  }

 private:
  // Waits until the socket is ready for `events`, until `deadline` or until the server stops.
  bool WaitFor(short events, Clock::time_point deadline) {
    for (;;) {
      if (listener_ == INVALID_SOCKET) return false;
      const auto now = Clock::now();
      if (now >= deadline) return false;
      const auto wait = std::min<Clock::duration>(deadline - now, kPollSlice);
      pollfd p{fd_, events, 0};
      const int r =
          ::poll(&p, 1, static_cast<int>(std::chrono::ceil<milliseconds>(wait) / milliseconds(1)));
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) return false;
    }
  }

  // Refills the empty buffer: false at the deadline (timed_out_), when the client has been
  // silent for stall_, at the end of the stream (eof_) or on an error.
  bool Fill() {
    pos_ = end_ = 0;
    const auto stall_deadline = Clock::now() + stall_;
    for (;;) {
      const auto deadline = std::min(deadline_, stall_deadline);
      if (!WaitFor(POLLIN, deadline)) {
        timed_out_ = Clock::now() >= deadline;
        return false;
      }
      const ssize_t n = ::recv(fd_, buffer_.data(), buffer_.size(), MSG_DONTWAIT);
      if (n > 0) {
        end_ = static_cast<size_t>(n);
        return true;
      }
      if (n == 0) {
        eof_ = true;
        return false;
      }
      if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) return false;
    }
  }

  void Address(int (*get)(int, sockaddr*, socklen_t*), std::string& ip, int& port) const {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    ip.clear();
    port = 0;
    if (get(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return;
    std::array<char, NI_MAXHOST> host{};
    std::array<char, NI_MAXSERV> serv{};
    if (getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host.data(), host.size(), serv.data(),
                    serv.size(), NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
      ip = host.data();
      port = std::atoi(serv.data());
    }
  }

  const int fd_;
  const std::atomic<socket_t>& listener_;  // INVALID_SOCKET once the server stops
  const Clock::duration write_timeout_;
  const size_t max_body_;  // bytes after inflation
  std::array<char, 16384> buffer_{};
  size_t pos_ = 0, end_ = 0;
  size_t budget_ = HttpServer::kHeaderBytes;  // bytes the current phase may still read
  Clock::time_point deadline_;                // the current phase ends by then
  Clock::duration stall_{};                   // the longest silence allowed in one read
  bool in_headers_ = true;
  bool timed_out_ = false;
  bool eof_ = false;
  int header_failure_ = 0;  // 408 or 431 when the headers could not be read
  int body_failure_ = 0;    // 408 or 413 when the body could not be read
  bool body_pending_ = false;
  bool close_requested_ = false;
  size_t written_ = 0;                        // bytes written for the current request
  Clock::time_point started_ = Clock::now();  // the current request's first byte
};

thread_local Connection* current_connection = nullptr;

// A thread per open connection (started on demand, kept for the next one), so that a slow
// client holds only its own thread. More than `max_threads` tasks wait in order.
class ConnectionThreads final : public httplib::TaskQueue {
 public:
  explicit ConnectionThreads(size_t max_threads) : max_threads_(max_threads) {}
  ~ConnectionThreads() override { shutdown(); }

  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lock(mutex_);
      tasks_.push_back(std::move(fn));
      if (idle_ < tasks_.size() && threads_.size() < max_threads_) {
        threads_.emplace_back([this] { Work(); });
      }
    }
    wake_.notify_one();
  }

  void shutdown() override {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lock(mutex_);
        ++idle_;
        wake_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
        --idle_;
        if (tasks_.empty()) return;  // stopping, and nothing left
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      try {
        task();
      } catch (...) {
        ServerLog(LogLevel::kError, "a connection failed: " + CurrentExceptionMessage());
      }
    }
  }

  const size_t max_threads_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stop_ = false;
};

std::string RawResponse(int status, const char* reason, const ApiError& error,
                        const char* extra_headers = "") {
  const std::string body = ErrorBody(error);
  return Concat("HTTP/1.1 ", status, " ", reason, "\r\n", extra_headers,
                "Content-Type: application/json\r\nContent-Length: ", body.size(),
                "\r\nConnection: close\r\n\r\n", body);
}

}  // namespace

HttpServer::HttpServer(const HttpLimits& limits) : limits_(limits) {
  if (limits_.max_connections < 1) Fail("the server needs at least one connection");
  if (limits_.read_timeout_seconds < 1) Fail("the read timeout must be at least one second");
  // A thread for every allowed connection, and a few for answering the ones beyond.
  const auto threads = static_cast<size_t>(limits_.max_connections) + 8;
  new_task_queue = [threads] { return new ConnectionThreads(threads); };
  // SO_REUSEADDR only (a restart may bind while old connections linger in TIME_WAIT). httplib's
  // default adds SO_REUSEPORT, with which a second server binds the same busy port.
  set_socket_options([](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  // A response after which the connection closes says so (httplib would say keep-alive).
  set_post_routing_handler([](const httplib::Request&, httplib::Response& res) {
    const Connection* conn = current_connection;
    if (conn != nullptr &&
        (conn->body_pending() || conn->close_requested() || conn->header_failure() != 0)) {
      res.headers.erase("Keep-Alive");
      res.set_header("Connection", "close");
    }
  });
  // httplib's own body reading (unregistered paths) never runs: the server's pre-routing
  // answers those without reading; this is the backstop for a Content-Length body.
  set_payload_max_length(limits_.max_body_bytes);
}

std::string HttpServer::ReadBody(const httplib::ContentReader& reader) {
  Connection* conn = current_connection;
  if (conn == nullptr) Fail("HttpServer::ReadBody outside a request");
  const size_t limit = conn->max_body();
  conn->RequestClose();  // unless the whole body is read, below
  std::string body;
  bool too_large = false;
  const bool ok = reader([&](const char* data, size_t size) {
    if (size > limit - body.size()) {
      too_large = true;
      return false;
    }
    body.append(data, size);
    return true;
  });
  if (too_large || conn->body_failure() == 413) {
    throw ApiError(413, "invalid_request_error",
                   Concat("request body too large: the limit is ", limit,
                          " bytes (after inflation; --max-body)"),
                   "", "request_too_large");
  }
  if (conn->body_failure() == 408) {
    throw ApiError(408, "invalid_request_error", "the client stopped sending the request body", "",
                   "request_timeout");
  }
  if (!ok) {
    throw ApiError(400, "invalid_request_error",
                   "could not read the request body (malformed chunked encoding or compressed "
                   "data, or the connection ended early)");
  }
  conn->BodyRead();
  conn->KeepOpen();
  return body;
}

void HttpServer::CloseAfterResponse() {
  if (current_connection != nullptr) current_connection->RequestClose();
}

int HttpServer::HeaderFailureStatus() {
  return current_connection != nullptr ? current_connection->header_failure() : 0;
}

std::chrono::steady_clock::time_point HttpServer::RequestStarted() {
  return current_connection != nullptr ? current_connection->started() : Clock::now();
}

bool HttpServer::process_and_close_socket(socket_t sock) {
  const int open = ++open_connections_;
  Connection conn(sock, svr_sock_, write_timeout_sec_, limits_.max_body_bytes);
  bool ret = false;
  if (open > limits_.max_connections) {
    ServerLog(LogLevel::kWarn, "connection refused: too many connections",
              {{"status", 503}, {"remote", conn.remote()}});
    conn.WriteAll(RawResponse(
        503, "Service Unavailable",
        ApiError(503, "server_error",
                 Concat("too many connections (", limits_.max_connections, "); retry later"), "",
                 "overloaded"),
        "Retry-After: 1\r\n"));
  } else {
    current_connection = &conn;
    const auto read_timeout = std::chrono::seconds(limits_.read_timeout_seconds);
    const auto keep_alive = std::chrono::seconds(std::max<time_t>(keep_alive_timeout_sec_, 1));
    for (size_t left = keep_alive_max_count_; left > 0; --left) {
      const bool first = left == keep_alive_max_count_;
      if (!conn.WaitForRequest(first ? read_timeout : keep_alive)) break;
      conn.BeginHeaders(read_timeout);
      bool closed = false;
      ret = process_request(conn, left == 1, closed, [&](httplib::Request& req) {
        conn.BeginBody(req, limits_.max_body_bytes + kChunkFraming, read_timeout);
      });
      if (conn.header_failure() != 0 && conn.written() == 0) {
        // The request line itself was too slow or too long: httplib answers nothing then.
        const int status = conn.header_failure();
        ServerLog(LogLevel::kInfo, "request headers refused",
                  {{"status", status}, {"remote", conn.remote()}});
        conn.WriteAll(RawResponse(
            status, status == 408 ? "Request Timeout" : "Request Header Fields Too Large",
            ApiError(status, "invalid_request_error",
                     status == 408 ? "the request headers did not arrive in time"
                                   : "the request headers are too large")));
      }
      if (!ret || closed || conn.close_requested() || conn.body_pending() ||
          conn.header_failure() != 0) {
        break;
      }
    }
    current_connection = nullptr;
  }
  conn.Close();
  --open_connections_;
  return ret;
}

}  // namespace starling
