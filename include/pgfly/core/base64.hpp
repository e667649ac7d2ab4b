// Standard base64 (RFC 4648, with padding), for secrets the operator marks NAME:base64=value.
#pragma once

#include <string>

namespace pgfly {

std::string Base64Encode(const std::string &bytes);

} // namespace pgfly
