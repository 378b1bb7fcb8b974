// `kvtier bench`: macro benchmarks. Subcommands:
//   trace  replay a Mooncake trace against the TieredStore (tools/bench_trace.h)
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "tools/bench_trace.h"
#include "tools/command.h"

namespace kvtier::tools {
namespace {

constexpr char kTraceUsage[] =
    "usage: kvtier bench trace --trace FILE --capacity BYTES[,BYTES...]\n"
    "         [--codec k4v2_g128|fp16[,...]] [--model qwen3-32b|llama3-8b]\n"
    "         [--scale S] [--limit N] [--disk-capacity BYTES] [--disk-path DIR]\n"
    "         [--progress|--no-progress] [--eviction chain|lru]\n"
    "\n"
    "Replays the hash_ids of a Mooncake-format trace (512-token blocks) as prefix chains:\n"
    "each request looks up its chain, reads the hit blocks and puts the missed ones.\n"
    "Prints one table row per (capacity, codec): token prefix hit ratio, blocks and bytes\n"
    "stored, evictions.\n"
    "  --capacity       RAM capacity in real bytes (units: B, KB, MB, GB, TB, KiB..TiB)\n"
    "  --codec          block encoding; default k4v2_g128\n"
    "  --model          model shape; default qwen3-32b (64 layers, 8 KV heads, D 128)\n"
    "  --scale          payload and capacity scale, e.g. 1/64 or 0.001; default 1/1024.\n"
    "                   Hit ratios do not depend on it.\n"
    "  --limit          replay only the first N requests; default all\n"
    "  --disk-capacity  add a RocksDB tier of this many real bytes; default none\n"
    "  --disk-path      RocksDB directory for it; default a temporary directory\n"
    "  --progress       progress bar on stderr; default on when stderr is a terminal\n"
    "  --eviction       chain: deepest block of a chain first among equally recent ones\n"
    "                   (default); lru: plain LRU\n";

bool ParseScale(const std::string& s, double* out) {
  const size_t slash = s.find('/');
  if (slash == std::string::npos) return absl::SimpleAtod(s, out);
  double a = 0, b = 0;
  if (!absl::SimpleAtod(s.substr(0, slash), &a) || !absl::SimpleAtod(s.substr(slash + 1), &b) ||
      b == 0) {
    return false;
  }
  *out = a / b;
  return true;
}

int RunTrace(int argc, char** argv) {
  ReplayOptions base;
  std::vector<std::string> capacities, codecs = {"k4v2_g128"};
  std::string disk_capacity;
  base.progress = isatty(STDERR_FILENO);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (arg == "--help" || arg == "-h") {
      std::fputs(kTraceUsage, stdout);
      return 0;
    } else if (arg == "--progress") {
      base.progress = true;
      continue;
    } else if (arg == "--no-progress") {
      base.progress = false;
      continue;
    }
    v = value();
    if (v == nullptr) {
      std::fprintf(stderr, "kvtier bench trace: %s needs a value\n\n%s", arg.c_str(), kTraceUsage);
      return 2;
    }
    if (arg == "--trace") {
      base.trace_path = v;
    } else if (arg == "--capacity") {
      capacities = absl::StrSplit(v, ',');
    } else if (arg == "--codec") {
      codecs = absl::StrSplit(v, ',');
    } else if (arg == "--model") {
      base.model = v;
    } else if (arg == "--scale") {
      if (!ParseScale(v, &base.scale)) {
        std::fprintf(stderr, "kvtier bench trace: bad --scale '%s'\n", v);
        return 2;
      }
    } else if (arg == "--limit") {
      if (!absl::SimpleAtoi(v, &base.limit)) {
        std::fprintf(stderr, "kvtier bench trace: bad --limit '%s'\n", v);
        return 2;
      }
    } else if (arg == "--disk-capacity") {
      disk_capacity = v;
    } else if (arg == "--eviction") {
      const std::string e = v;
      if (e != "chain" && e != "lru") {
        std::fprintf(stderr, "kvtier bench trace: --eviction is chain or lru\n");
        return 2;
      }
      base.chain_aware_eviction = e == "chain";
    } else if (arg == "--disk-path") {
      base.disk_path = v;
    } else {
      std::fprintf(stderr, "kvtier bench trace: unknown flag %s\n\n%s", arg.c_str(), kTraceUsage);
      return 2;
    }
  }
  if (base.trace_path.empty() || capacities.empty()) {
    std::fputs(kTraceUsage, stderr);
    return 2;
  }
  if (!disk_capacity.empty()) {
    absl::StatusOr<uint64_t> d = ParseBytes(disk_capacity);
    if (!d.ok()) {
      std::fprintf(stderr, "kvtier bench trace: %s\n", std::string(d.status().message()).c_str());
      return 2;
    }
    base.disk_capacity_bytes = *d;
  }
  absl::StatusOr<std::vector<TraceRequest>> requests = LoadTrace(base.trace_path, base.limit);
  if (!requests.ok()) {
    std::fprintf(stderr, "kvtier bench trace: %s\n",
                 std::string(requests.status().message()).c_str());
    return 1;
  }
  std::printf("trace %s: %zu requests, model %s, scale %g%s, %s eviction\n\n",
              base.trace_path.c_str(), requests->size(), base.model.c_str(), base.scale,
              base.disk_capacity_bytes ? ", RAM + disk" : ", RAM only",
              base.chain_aware_eviction ? "chain-aware" : "plain LRU");
  std::printf(
      "| RAM capacity | disk capacity | codec | block | blocks fit | token hit %% | block hit %% "
      "| RAM stored | RAM evictions | disk stored | disk evictions | puts | time |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  for (const std::string& cap : capacities) {
    absl::StatusOr<uint64_t> c = ParseBytes(cap);
    if (!c.ok()) {
      std::fprintf(stderr, "kvtier bench trace: %s\n", std::string(c.status().message()).c_str());
      return 2;
    }
    for (const std::string& codec : codecs) {
      absl::StatusOr<TraceCodec> tc = ParseTraceCodec(codec);
      if (!tc.ok()) {
        std::fprintf(stderr, "kvtier bench trace: %s\n",
                     std::string(tc.status().message()).c_str());
        return 2;
      }
      ReplayOptions o = base;
      o.capacity_bytes = *c;
      o.codec = *tc;
      absl::StatusOr<ReplayResult> r = ReplayRequests(*requests, o);
      if (!r.ok()) {
        std::fprintf(stderr, "kvtier bench trace: %s\n", r.status().ToString().c_str());
        return 1;
      }
      std::printf(
          "| %s | %s | %s | %s | %llu | %.2f | %.2f | %s | %llu | %s | %llu | %llu | %.1f s |\n",
          FormatBytes(r->capacity_bytes).c_str(),
          r->disk_capacity_bytes ? FormatBytes(r->disk_capacity_bytes).c_str() : "-",
          r->codec.c_str(), FormatBytes(r->block_bytes).c_str(),
          (unsigned long long)r->capacity_blocks, 100 * r->token_hit_ratio(),
          100 * r->block_hit_ratio(), FormatBytes(r->memory_stored_bytes()).c_str(),
          (unsigned long long)r->memory_evictions,
          r->disk_capacity_bytes ? FormatBytes(r->disk_stored_bytes()).c_str() : "-",
          (unsigned long long)r->disk_evictions, (unsigned long long)r->puts_stored, r->seconds);
      std::fflush(stdout);
    }
  }
  return 0;
}

int RunBench(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "trace") == 0) return RunTrace(argc - 1, argv + 1);
  const bool help =
      argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0);
  std::fprintf(help ? stdout : stderr,
               "usage: kvtier bench <subcommand> [args...]\n\nsubcommands:\n"
               "  trace   replay a Mooncake trace against the TieredStore (hit ratio per "
               "capacity and codec)\n\n`kvtier bench trace --help` describes it.\n");
  return help ? 0 : 2;
}

}  // namespace
}  // namespace kvtier::tools

KVTIER_REGISTER_COMMAND(bench, "bench", "macro benchmarks: trace (prefix-cache hit ratio replay)",
                        kvtier::tools::RunBench);
