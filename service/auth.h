// Bearer-token authorization for kvtier-server (docs/service-contract.md, "Token file").
//
// Token file: one token per line, `#` starts a comment:
//   <token> <r|w|rw> <namespace-prefix>[,<namespace-prefix>...]
// `*` as a prefix allows every namespace. A token may appear on several lines; its rights
// are the union of them.
//
//   KVTIER_ASSIGN_OR_RETURN(auto auth, Authorizer::FromFile("/etc/kvtier/tokens"));
//   KVTIER_ASSIGN_OR_RETURN(Grant g, auth->Authenticate(metadata_authorization_value));
//   KVTIER_RETURN_IF_ERROR(g.Check("tenantA/llama/k4v2_g128/tp0", /*write=*/true));
//
// Thread safety: Authorizer and Grant are immutable after construction; safe to share.
#ifndef KVTIER_SERVICE_AUTH_H_
#define KVTIER_SERVICE_AUTH_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvtier::service {

// One line's rights over one namespace prefix.
struct AccessRule {
  bool read = false;
  bool write = false;
  std::string prefix;  // "*" = every namespace
};

// What a caller may do. An unrestricted grant (no token file) allows everything.
class Grant {
 public:
  static Grant Unrestricted();
  explicit Grant(std::vector<AccessRule> rules) : rules_(std::move(rules)) {}
  Grant() = default;

  // OK when some rule's prefix matches `ns` and grants the right; else kPermissionDenied
  // naming the namespace and the right.
  absl::Status Check(absl::string_view ns, bool write) const;
  bool unrestricted() const { return unrestricted_; }
  const std::vector<AccessRule>& rules() const { return rules_; }

 private:
  bool unrestricted_ = false;
  std::vector<AccessRule> rules_;
};

class Authorizer {
 public:
  // Parses token-file text. kInvalidArgument naming the line on a malformed line.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Parse(absl::string_view text);
  // Reads and parses a file. kNotFound / kInvalidArgument.
  static absl::StatusOr<std::unique_ptr<Authorizer>> FromFile(const std::string& path);
  // No token file: every caller gets Grant::Unrestricted().
  static std::unique_ptr<Authorizer> AllowAll();

  bool enabled() const { return enabled_; }
  size_t num_tokens() const { return grants_.size(); }

  // `authorization` is the metadata value ("Bearer <token>"), or empty when absent.
  // kUnauthenticated when authentication is enabled and the value is missing, malformed or
  // an unknown token.
  absl::StatusOr<Grant> Authenticate(absl::string_view authorization) const;

 private:
  Authorizer() = default;
  bool enabled_ = false;
  absl::flat_hash_map<std::string, Grant> grants_;
};

}  // namespace kvtier::service

#endif  // KVTIER_SERVICE_AUTH_H_
