#include "server/web_page.h"

#include <cstddef>

// The page's bytes, placed in .rodata by the assembler; STARLING_CHAT_PAGE is the file's
// absolute path (set by CMake, which also rebuilds this file when the page changes).
__asm__(
    ".section .rodata\n"
    ".global starling_chat_page_begin\n"
    "starling_chat_page_begin:\n"
    ".incbin \"" STARLING_CHAT_PAGE
    "\"\n"
    ".global starling_chat_page_end\n"
    "starling_chat_page_end:\n"
    ".previous\n");

extern "C" const char starling_chat_page_begin[];
extern "C" const char starling_chat_page_end[];

namespace starling {

std::string_view ChatPageHtml() {
  return {starling_chat_page_begin,
          static_cast<size_t>(starling_chat_page_end - starling_chat_page_begin)};
}

}  // namespace starling
