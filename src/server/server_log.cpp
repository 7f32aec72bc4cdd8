#include "server/server_log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <string>

namespace starling {
namespace {

std::atomic<LogLevel> g_level{LogLevel::kInfo};
std::atomic<LogFormat> g_format{LogFormat::kText};
std::mutex g_mutex;

// UTC with milliseconds: 2026-12-01T22:10:00.123Z.
std::string Timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) %
                  std::chrono::seconds(1);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900,
                utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                static_cast<int>(ms.count()));
  return buf;
}

// JSON text with every non-ASCII character escaped and invalid UTF-8 replaced.
std::string AsciiJson(const nlohmann::ordered_json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/true,
                    nlohmann::ordered_json::error_handler_t::replace);
}

// A value for a text line: numbers and booleans as JSON; a string bare when it is a plain word
// (printable ASCII, no space, quote, backslash or '='), quoted as JSON otherwise.
std::string TextValue(const nlohmann::ordered_json& value) {
  if (!value.is_string()) return AsciiJson(value);
  const std::string& s = value.get_ref<const std::string&>();
  bool plain = !s.empty();
  for (const char c : s) {
    plain = plain && c > ' ' && c < 0x7f && c != '"' && c != '\\' && c != '=';
  }
  return plain ? s : AsciiJson(value);
}

}  // namespace

std::optional<LogLevel> ParseLogLevel(std::string_view name) {
  if (name == "error") return LogLevel::kError;
  if (name == "warn") return LogLevel::kWarn;
  if (name == "info") return LogLevel::kInfo;
  if (name == "debug") return LogLevel::kDebug;
  return std::nullopt;
}

const char* LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kError: return "error";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kInfo: return "info";
    case LogLevel::kDebug: return "debug";
  }
  return "info";
}

void SetServerLog(LogLevel level, LogFormat format) {
  g_level = level;
  g_format = format;
}

bool ServerLogEnabled(LogLevel level) {
  return level <= g_level.load();
}

void ServerLog(LogLevel level, std::string_view message, const nlohmann::ordered_json& fields,
               bool always) {
  if (!always && !ServerLogEnabled(level)) return;
  std::string line;
  if (g_format == LogFormat::kJson) {
    nlohmann::ordered_json j = {
        {"time", Timestamp()}, {"level", LogLevelName(level)}, {"message", message}};
    if (fields.is_object()) {
      for (const auto& [key, value] : fields.items()) j[key] = value;
    }
    line = AsciiJson(j);
  } else {
    line = Timestamp() + " " + LogLevelName(level) + " ";
    // The message is the server's own text; escaped anyway, in case it quotes a client.
    const std::string quoted = AsciiJson(nlohmann::ordered_json(message));
    line.append(quoted, 1, quoted.size() - 2);
    if (fields.is_object()) {
      for (const auto& [key, value] : fields.items()) line += " " + key + "=" + TextValue(value);
    }
  }
  line += '\n';
  std::lock_guard lock(g_mutex);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

std::string LogSafe(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  return std::string(text.substr(0, max_bytes)) + "...";
}

}  // namespace starling
