#include "service/validation.h"

#include <cmath>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace kvtier::service {

absl::Status ValidateNamespace(absl::string_view ns) {
  if (ns.empty()) return absl::InvalidArgumentError("namespace is empty");
  if (ns.size() > kMaxNamespaceBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace has ", ns.size(), " bytes, limit ", kMaxNamespaceBytes));
  }
  for (size_t i = 0; i < ns.size(); ++i) {
    const char c = ns[i];
    const bool ok = absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
                    c == ':' || c == '/' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("namespace has a character outside [A-Za-z0-9._:/-] at byte ", i));
    }
  }
  if (ns.find("..") != absl::string_view::npos) {
    return absl::InvalidArgumentError("namespace contains \"..\"");
  }
  return absl::OkStatus();
}

absl::StatusOr<kernels::ChainHash> ParseHash(absl::string_view bytes, absl::string_view what) {
  if (bytes.size() != kChainHashBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has ", bytes.size(), " bytes, expected ", kChainHashBytes));
  }
  kernels::ChainHash h;
  std::memcpy(h.data(), bytes.data(), h.size());
  return h;
}

absl::StatusOr<std::vector<kernels::ChainHash>> ParseChain(
    const google::protobuf::RepeatedPtrField<std::string>& hashes, uint32_t max_len) {
  if (hashes.empty()) return absl::InvalidArgumentError("chain_hashes is empty");
  if (static_cast<uint64_t>(hashes.size()) > max_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("chain_hashes has ", hashes.size(), " hashes, limit ", max_len));
  }
  std::vector<kernels::ChainHash> out;
  out.reserve(hashes.size());
  for (int i = 0; i < hashes.size(); ++i) {
    absl::StatusOr<kernels::ChainHash> h =
        ParseHash(hashes[i], absl::StrCat("chain_hashes[", i, "]"));
    if (!h.ok()) return h.status();
    out.push_back(*h);
  }
  return out;
}

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  struct Unit {
    const char* suffix;
    uint64_t mult;
  };
  // Longest suffixes first so "GiB" is not read as "B".
  static constexpr Unit kUnits[] = {{"KiB", uint64_t{1} << 10},
                                    {"MiB", uint64_t{1} << 20},
                                    {"GiB", uint64_t{1} << 30},
                                    {"TiB", uint64_t{1} << 40},
                                    {"KB", uint64_t{1} << 10},
                                    {"MB", uint64_t{1} << 20},
                                    {"GB", uint64_t{1} << 30},
                                    {"TB", uint64_t{1} << 40},
                                    {"K", uint64_t{1} << 10},
                                    {"M", uint64_t{1} << 20},
                                    {"G", uint64_t{1} << 30},
                                    {"T", uint64_t{1} << 40},
                                    {"B", 1}};
  uint64_t mult = 1;
  for (const Unit& u : kUnits) {
    if (absl::ConsumeSuffix(&t, u.suffix)) {
      mult = u.mult;
      break;
    }
  }
  t = absl::StripAsciiWhitespace(t);
  uint64_t whole = 0;
  if (absl::SimpleAtoi(t, &whole)) {
    if (mult != 0 && whole > UINT64_MAX / mult) {
      return absl::InvalidArgumentError(absl::StrCat("byte size overflows: ", text));
    }
    return whole * mult;
  }
  double d = 0;
  if (absl::SimpleAtod(t, &d) && std::isfinite(d) && d >= 0 &&
      d * static_cast<double>(mult) < 1.8e19) {
    return static_cast<uint64_t>(d * static_cast<double>(mult));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("bad byte size \"", text, "\" (expected e.g. 512, 64MiB, 4GiB)"));
}

absl::StatusOr<std::map<std::string, uint64_t>> ParseQuotas(absl::string_view text) {
  std::map<std::string, uint64_t> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(item, '=');
    absl::string_view prefix = absl::StripAsciiWhitespace(kv.first);
    if (prefix.empty() || kv.second.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad quota \"", item, "\" (expected prefix=bytes)"));
    }
    absl::StatusOr<uint64_t> bytes = ParseByteSize(kv.second);
    if (!bytes.ok()) return bytes.status();
    out[std::string(prefix)] = *bytes;
  }
  return out;
}

}  // namespace kvtier::service
