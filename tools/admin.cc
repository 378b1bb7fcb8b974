// `kvtier lookup|put|get|stats|health`: admin commands against any kvtier cluster.
//
//   kvtier health --endpoints=127.0.0.1:50051
//   kvtier put    --endpoints=h1:50051,h2:50051 --ns=t/m/k4v2_g128/tp0 --hash=<64 hex>
//   --file=blk.bin kvtier lookup --endpoints=... --ns=... --hashes=<hex>,<hex>,...   (or
//   --tokens=1,2,3 --block_size=128) kvtier get    --endpoints=... --ns=... --hash=<hex>
//   --out=blk.bin kvtier stats  --dns=kvtier-headless:50051 --tls=ca.pem --token=secret
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "tools/command.h"

namespace {

using kvtier::client::Client;
using kvtier::client::ClientOptions;

constexpr char kCommonHelp[] =
    "connection options:\n"
    "  --endpoints=H:P,H:P   servers (or --dns=NAME:PORT, resolved to every address)\n"
    "  --tls=CA.pem          use TLS, trusting this CA (--tls_cert/--tls_key for mTLS,\n"
    "                        --tls_server_name to override the checked name)\n"
    "  --token=T             bearer token\n"
    "  --timeout_ms=N        call deadline (default 10000)\n"
    "  --transport=grpc|ucx  data transport (default grpc)\n";

struct Args {
  std::map<std::string, std::string> kv;
  bool Has(const std::string& k) const { return kv.count(k) > 0; }
  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = kv.find(k);
    return it == kv.end() ? def : it->second;
  }
};

bool ParseArgs(int argc, char** argv, Args* out) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      std::fprintf(stderr, "unexpected argument '%s'\n", a.c_str());
      return false;
    }
    a = a.substr(2);
    const size_t eq = a.find('=');
    if (eq == std::string::npos) {
      if (i + 1 < argc && std::strncmp(argv[i + 1], "--", 2) != 0) {
        out->kv[a] = argv[++i];
      } else {
        out->kv[a] = "true";
      }
    } else {
      out->kv[a.substr(0, eq)] = a.substr(eq + 1);
    }
  }
  return true;
}

absl::StatusOr<std::unique_ptr<Client>> Connect(const Args& a) {
  ClientOptions o;
  if (a.Has("endpoints")) {
    o.endpoints = absl::StrSplit(a.Get("endpoints"), ',', absl::SkipEmpty());
  }
  o.dns_name = a.Get("dns");
  if (a.Has("tls")) {
    o.tls = true;
    if (a.Get("tls") != "true") o.tls_ca_file = a.Get("tls");
    o.tls_cert_file = a.Get("tls_cert");
    o.tls_key_file = a.Get("tls_key");
    o.tls_server_name = a.Get("tls_server_name");
  }
  o.token = a.Get("token");
  int timeout_ms = 10000;
  if (a.Has("timeout_ms") && !absl::SimpleAtoi(a.Get("timeout_ms"), &timeout_ms)) {
    return absl::InvalidArgumentError("--timeout_ms must be an integer");
  }
  o.timeout = absl::Milliseconds(timeout_ms);
  if (a.Get("transport", "grpc") == "ucx") o.transport = kvtier::client::TransportKind::kUcx;
  return Client::Create(o);
}

absl::StatusOr<kvtier::kernels::ChainHash> ParseHex(absl::string_view hex) {
  if (hex.size() != 64)
    return absl::InvalidArgumentError(absl::StrCat("hash must be 64 hex digits: ", hex));
  for (char c : hex) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(absl::StrCat("not hex: ", hex));
    }
  }
  const std::string bytes = absl::HexStringToBytes(hex);
  kvtier::kernels::ChainHash h;
  std::memcpy(h.data(), bytes.data(), 32);
  return h;
}

absl::StatusOr<std::vector<kvtier::kernels::ChainHash>> ChainFromArgs(const Args& a) {
  std::vector<kvtier::kernels::ChainHash> chain;
  if (a.Has("tokens")) {
    std::vector<int32_t> tokens;
    for (absl::string_view t : absl::StrSplit(a.Get("tokens"), ',', absl::SkipEmpty())) {
      int32_t v;
      if (!absl::SimpleAtoi(t, &v)) return absl::InvalidArgumentError("--tokens: integers");
      tokens.push_back(v);
    }
    int bs = 128;
    if (a.Has("block_size") && !absl::SimpleAtoi(a.Get("block_size"), &bs)) {
      return absl::InvalidArgumentError("--block_size must be an integer");
    }
    return Client::ChainHashes(a.Get("ns"), tokens, bs);
  }
  const std::string list = a.Has("hashes") ? a.Get("hashes") : a.Get("hash");
  for (absl::string_view h : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    auto p = ParseHex(h);
    if (!p.ok()) return p.status();
    chain.push_back(*p);
  }
  if (chain.empty()) return absl::InvalidArgumentError("give --hash/--hashes or --tokens");
  return chain;
}

int Usage(const char* cmd, const char* text) {
  std::fprintf(stderr, "usage: kvtier %s %s\n%s", cmd, text, kCommonHelp);
  return 2;
}

int Error(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 1;
}

uint32_t Part(const Args& a) {
  uint32_t p = 0;
  if (a.Has("part")) (void)absl::SimpleAtoi(a.Get("part"), &p);
  return p;
}

int RunHealth(int argc, char** argv) {
  Args a;
  if (!ParseArgs(argc, argv, &a) || a.Has("help")) return Usage("health", "[options]\n");
  auto c = Connect(a);
  if (!c.ok()) return Error(c.status());
  int rc = 0;
  for (const auto& [endpoint, st] : (*c)->Health()) {
    std::printf("%s %s\n", endpoint.c_str(), st.ok() ? "SERVING" : st.ToString().c_str());
    if (!st.ok()) rc = 1;
  }
  return rc;
}

int RunStats(int argc, char** argv) {
  Args a;
  if (!ParseArgs(argc, argv, &a) || a.Has("help")) return Usage("stats", "[options]\n");
  auto c = Connect(a);
  if (!c.ok()) return Error(c.status());
  int rc = 0;
  for (const auto& e : (*c)->Stats()) {
    if (!e.stats.ok()) {
      std::printf("%s error: %s\n", e.endpoint.c_str(), e.stats.status().ToString().c_str());
      rc = 1;
      continue;
    }
    const auto& s = *e.stats;
    std::printf(
        "%s version=%s uptime_s=%llu\n  memory: blocks=%llu bytes=%llu capacity=%llu hits=%llu "
        "misses=%llu evictions=%llu\n  disk:   blocks=%llu bytes=%llu capacity=%llu hits=%llu "
        "misses=%llu evictions=%llu\n  puts: stored=%llu deduplicated=%llu rejected=%llu "
        "dedup_bytes_saved=%llu corrupt_dropped=%llu\n",
        e.endpoint.c_str(), s.server_version().c_str(), (unsigned long long)s.uptime_seconds(),
        (unsigned long long)s.memory().blocks(), (unsigned long long)s.memory().bytes(),
        (unsigned long long)s.memory().capacity_bytes(), (unsigned long long)s.memory().hits(),
        (unsigned long long)s.memory().misses(), (unsigned long long)s.memory().evictions(),
        (unsigned long long)s.disk().blocks(), (unsigned long long)s.disk().bytes(),
        (unsigned long long)s.disk().capacity_bytes(), (unsigned long long)s.disk().hits(),
        (unsigned long long)s.disk().misses(), (unsigned long long)s.disk().evictions(),
        (unsigned long long)s.puts_stored(), (unsigned long long)s.puts_deduplicated(),
        (unsigned long long)s.puts_rejected(), (unsigned long long)s.dedup_bytes_saved(),
        (unsigned long long)s.corrupt_dropped());
  }
  return rc;
}

int RunLookup(int argc, char** argv) {
  constexpr char kHelp[] =
      "--ns=NS [--part=P] (--hashes=HEX,HEX,... | --tokens=ID,ID,... [--block_size=128])\n"
      "  [--block_tokens=G] [options]\nprints the number of leading blocks present\n";
  Args a;
  if (!ParseArgs(argc, argv, &a) || a.Has("help") || !a.Has("ns")) return Usage("lookup", kHelp);
  auto chain = ChainFromArgs(a);
  if (!chain.ok()) return Error(chain.status());
  auto c = Connect(a);
  if (!c.ok()) return Error(c.status());
  uint32_t bt = 0;
  if (a.Has("block_tokens")) (void)absl::SimpleAtoi(a.Get("block_tokens"), &bt);
  auto n = (*c)->Lookup(a.Get("ns"), Part(a), *chain, bt);
  if (!n.ok()) return Error(n.status());
  std::printf("%zu of %zu blocks present\n", *n, chain->size());
  return 0;
}

int RunPut(int argc, char** argv) {
  constexpr char kHelp[] =
      "--ns=NS [--part=P] --hash=HEX --file=PAYLOAD [options]\n"
      "stores one block payload (64-byte kvtier header + layer sections)\n";
  Args a;
  if (!ParseArgs(argc, argv, &a) || a.Has("help") || !a.Has("ns") || !a.Has("file") ||
      !a.Has("hash")) {
    return Usage("put", kHelp);
  }
  auto h = ParseHex(a.Get("hash"));
  if (!h.ok()) return Error(h.status());
  std::ifstream in(a.Get("file"), std::ios::binary);
  if (!in) return Error(absl::NotFoundError(absl::StrCat("cannot read ", a.Get("file"))));
  std::vector<uint8_t> payload((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
  auto c = Connect(a);
  if (!c.ok()) return Error(c.status());
  kvtier::client::PutItem item{*h, payload};
  auto r = (*c)->Put(a.Get("ns"), Part(a), absl::MakeConstSpan(&item, 1));
  if (!r.ok()) return Error(r.status());
  std::printf("%s\n", (*r)[0] == kvtier::client::PutOutcome::kStored ? "stored" : "deduplicated");
  return 0;
}

int RunGet(int argc, char** argv) {
  constexpr char kHelp[] =
      "--ns=NS [--part=P] --hash=HEX [--out=FILE] [options]\n"
      "fetches one block; writes it to --out; exit 1 on a miss\n";
  Args a;
  if (!ParseArgs(argc, argv, &a) || a.Has("help") || !a.Has("ns") || !a.Has("hash")) {
    return Usage("get", kHelp);
  }
  auto h = ParseHex(a.Get("hash"));
  if (!h.ok()) return Error(h.status());
  auto c = Connect(a);
  if (!c.ok()) return Error(c.status());
  auto got = (*c)->Get(a.Get("ns"), Part(a), absl::MakeConstSpan(&*h, 1));
  const auto& r = got[0];
  if (!r.hit) {
    std::printf("miss%s\n", r.status.ok() ? "" : (" (" + r.status.ToString() + ")").c_str());
    return 1;
  }
  std::printf("hit: %zu bytes from %s\n", r.payload.size(),
              r.tier == kvtier::client::Tier::kDisk ? "disk" : "memory");
  if (a.Has("out")) {
    std::ofstream out(a.Get("out"), std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(r.payload.data()),
              static_cast<std::streamsize>(r.payload.size()));
    if (!out) return Error(absl::InternalError("write failed"));
  }
  return 0;
}

}  // namespace

KVTIER_REGISTER_COMMAND(health, "health", "grpc.health.v1 check of every server", RunHealth);
KVTIER_REGISTER_COMMAND(stats, "stats", "per-server storage statistics", RunStats);
KVTIER_REGISTER_COMMAND(lookup, "lookup", "leading blocks of a chain present in the cluster",
                        RunLookup);
KVTIER_REGISTER_COMMAND(put, "put", "store one block payload from a file", RunPut);
KVTIER_REGISTER_COMMAND(get, "get", "fetch one block payload into a file", RunGet);
