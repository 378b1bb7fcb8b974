#include "service/auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace kvtier::service {

Grant Grant::Unrestricted() {
  Grant g;
  g.unrestricted_ = true;
  return g;
}

absl::Status Grant::Check(absl::string_view ns, bool write) const {
  if (unrestricted_) return absl::OkStatus();
  for (const AccessRule& r : rules_) {
    if (!(write ? r.write : r.read)) continue;
    if (r.prefix == "*" || absl::StartsWith(ns, r.prefix)) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat("token may not ", write ? "write" : "read", " namespace \"", ns, "\""));
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Parse(absl::string_view text) {
  std::unique_ptr<Authorizer> a(new Authorizer());
  a->enabled_ = true;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    const size_t hash = line.find('#');
    if (hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("token file line ", line_no, ": ", why));
    };
    if (fields.size() != 3) return bad("expected `<token> <r|w|rw> <prefix>[,<prefix>...]`");
    AccessRule base;
    if (fields[1] == "r") {
      base.read = true;
    } else if (fields[1] == "w") {
      base.write = true;
    } else if (fields[1] == "rw" || fields[1] == "wr") {
      base.read = base.write = true;
    } else {
      return bad(absl::StrCat("rights must be r, w or rw, got \"", fields[1], "\""));
    }
    std::vector<AccessRule> rules;
    for (absl::string_view prefix : absl::StrSplit(fields[2], ',', absl::SkipEmpty())) {
      AccessRule r = base;
      r.prefix = std::string(prefix);
      rules.push_back(std::move(r));
    }
    if (rules.empty()) return bad("no namespace prefix");
    std::vector<AccessRule> all = a->grants_[std::string(fields[0])].rules();
    all.insert(all.end(), rules.begin(), rules.end());
    a->grants_[std::string(fields[0])] = Grant(std::move(all));
  }
  return a;
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read token file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str());
}

std::unique_ptr<Authorizer> Authorizer::AllowAll() {
  return std::unique_ptr<Authorizer>(new Authorizer());
}

absl::StatusOr<Grant> Authorizer::Authenticate(absl::string_view authorization) const {
  if (!enabled_) return Grant::Unrestricted();
  if (authorization.empty()) {
    return absl::UnauthenticatedError("missing `authorization: Bearer <token>` metadata");
  }
  absl::string_view v = absl::StripAsciiWhitespace(authorization);
  if (!absl::ConsumePrefix(&v, "Bearer ") && !absl::ConsumePrefix(&v, "bearer ")) {
    return absl::UnauthenticatedError("authorization metadata is not `Bearer <token>`");
  }
  v = absl::StripAsciiWhitespace(v);
  auto it = grants_.find(v);
  if (it == grants_.end()) return absl::UnauthenticatedError("unknown bearer token");
  return it->second;
}

}  // namespace kvtier::service
