// Test helpers for the project's error messages: what a call throws, and checks that a message
// names its source and contains the expected parts.
#pragma once

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <string_view>

#include "core/error.h"

namespace starling::testing {

// The message of the starling::Error that fn() throws; empty when it throws nothing.
template <typename Fn>
std::string ErrorMessage(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Asserts that `error` is non-empty, starts with "<source>: " and contains every part.
inline void ExpectErrorNaming(const std::string& error, std::string_view source,
                              std::initializer_list<std::string_view> parts) {
  ASSERT_FALSE(error.empty()) << "no error";
  EXPECT_EQ(error.rfind(std::string(source) + ": ", 0), 0u) << error;
  for (const std::string_view part : parts) {
    EXPECT_NE(error.find(part), std::string::npos) << "missing '" << part << "' in: " << error;
  }
}

}  // namespace starling::testing
