// The server's log: one line per event on stderr, as text or as JSON (one object per line),
// filtered by level. Every string from a client is bounded and escaped before it is written,
// so a request cannot forge log lines or send terminal escapes.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

namespace starling {

enum class LogLevel { kError, kWarn, kInfo, kDebug };  // each includes those before it
enum class LogFormat { kText, kJson };

// "error", "warn", "info", "debug" (nullopt for anything else).
std::optional<LogLevel> ParseLogLevel(std::string_view name);
const char* LogLevelName(LogLevel level);

// The process's server log (stderr; info, text until set).
void SetServerLog(LogLevel level, LogFormat format);
bool ServerLogEnabled(LogLevel level);
// Writes one line if `level` is enabled, or always with `always` (the start line, which
// clients such as the tests read for the port). Text: "TIME LEVEL MESSAGE key=value...",
// a value quoted as JSON (ASCII only) unless it is a number or a plain word. JSON:
// {"time", "level", "message", fields...}.
void ServerLog(LogLevel level, std::string_view message,
               const nlohmann::ordered_json& fields = nlohmann::ordered_json::object(),
               bool always = false);

// `text` cut to at most `max_bytes` (marked with "..."): a client's string, for a log line.
std::string LogSafe(std::string_view text, size_t max_bytes = 256);

}  // namespace starling
