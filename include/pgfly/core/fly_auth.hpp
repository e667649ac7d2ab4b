// The Authorization header for the Fly Machines API (docs/fly-api.md), and scrubbing of the token from
// any text that could reach a log, an event row or an error message.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace pgfly {
namespace fly {

// The Authorization header value for a stored token:
//   "FlyV1 fm2_..." or "Bearer FlyV1 fm2_..."      -> "FlyV1 fm2_..." (what fly-go sends; the docs' examples
//                                                    put the whole "FlyV1 ..." string after "Bearer ")
//   "fm2_a,fm1a_b" (macaroons fm1r_/fm1a_/fm2_)    -> "FlyV1 fm2_a,fm1a_b"
//   "Bearer <token>"                               -> the scheme is stripped and re-chosen by the rules above
//   anything else                                  -> "Bearer <token>"
// Schemes are matched case-insensitively and surrounding white space is dropped. As fly-go does, a list that mixes
// macaroons with other tokens keeps only the macaroons.
std::string AuthorizationHeader(const std::string &token);

// text with every occurrence of the token, of its credential part (without a scheme) and of each of its
// comma-separated macaroons replaced by "<redacted>". Fragments shorter than 4 characters are left alone.
std::string RedactToken(const std::string &text, const std::string &token);

// text with every occurrence of each value (longest first) replaced by "<redacted>"; values shorter than 4
// characters are left alone.
std::string RedactStrings(const std::string &text, std::vector<std::string> values);

// Whether a URL host (as UrlHost returns it) is this machine: localhost, 127.0.0.0/8 or [::1].
bool IsLoopbackHost(const std::string &host);

// Why a base URL that the token travels to is refused, or nothing: it must be https://, or http:// to a loopback
// host only (a local simulator), so that the token never crosses a network in clear text. No spaces or control
// characters.
std::optional<std::string> ApiUrlProblem(const std::string &url);

// Why a URL that carries no secret (fly.app_health_url) is refused, or nothing: http:// or https://, no spaces
// or control characters.
std::optional<std::string> PlainUrlProblem(const std::string &url);

// Why a proxy URL is refused, or nothing: http://, https://, socks4://, socks4a://, socks5:// or socks5h://, no
// spaces or control characters, and no user name or password (PostgreSQL logs a changed setting's value).
std::optional<std::string> ProxyUrlProblem(const std::string &url);

} // namespace fly
} // namespace pgfly
