// The web chat page (src/server/web/chat.html), compiled into the binary: no files to install,
// no assets from elsewhere.
#pragma once

#include <string_view>

namespace starling {

std::string_view ChatPageHtml();

}  // namespace starling
