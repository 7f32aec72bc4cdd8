// A /v1/rewards server in the test's own process (cpp-httplib), for commands that take
// --rm-url: the handler decides every answer, and the server counts the requests.
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>

namespace {

// On a free port of 127.0.0.1, from construction to destruction.
class RewardServer {
 public:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  explicit RewardServer(Handler handler) {
    server_.Post("/v1/rewards", [this, handler](const httplib::Request& q, httplib::Response& r) {
      ++requests_;
      handler(q, r);
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~RewardServer() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int requests() const { return requests_.load(); }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::atomic<int> requests_{0};
};

}  // namespace
