#include "tools/bench_trace.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/format.h"
#include "kernels/payload.h"
#include "storage/tiered_store.h"

namespace kvtier::tools {
namespace {

using storage::BlockKey;
using storage::Payload;

constexpr int kPoolSize = 8;

// (Debian's Abseil string_view is not std::string_view: small local helpers instead.)
std::string_view Strip(std::string_view s) {
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.front())))
    s.remove_prefix(1);
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.back())))
    s.remove_suffix(1);
  return s;
}

template <typename T>
bool ParseInt(std::string_view s, T* out) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size();
}

// Finds `"name"` followed by ':' and returns the text after the colon.
std::string_view AfterKey(std::string_view line, std::string_view name) {
  const std::string quoted = absl::StrCat("\"", std::string(name), "\"");
  size_t pos = line.find(quoted);
  if (pos == std::string_view::npos) return {};
  pos = line.find(':', pos + quoted.size());
  if (pos == std::string_view::npos) return {};
  return Strip(line.substr(pos + 1));
}

// The largest payload shape (layers x heads of one section) whose size is closest to
// `target` bytes; section_bytes is per head per layer.
struct ScaledShape {
  int layers = 1;
  int heads = 1;
};
ScaledShape ShapeFor(double target, uint64_t section_bytes) {
  uint64_t units = std::max<uint64_t>(1, std::llround(target / double(section_bytes)));
  ScaledShape s;
  while (units / s.heads > kernels::kMaxLayers && s.heads < int(kernels::kMaxKvHeads)) s.heads *= 2;
  s.layers = std::max<int>(1, int(units / s.heads));
  return s;
}

absl::StatusOr<Payload> RandomPayload(const ModelShape& m, TraceCodec codec, double target,
                                      uint64_t seed) {
  kernels::PayloadHeader h;
  if (codec == TraceCodec::kK4V2G128) {
    const uint64_t rec =
        kernels::MakeTileLayout(kernels::Preset::kK4V2G128, m.head_dim).record_bytes;
    const ScaledShape s = ShapeFor(target, rec);
    h = kernels::MakeTilesHeader(kernels::Preset::kK4V2G128, m.head_dim, s.layers, s.heads);
  } else {
    const uint64_t sec = uint64_t{2} * 128 * m.head_dim * 2;  // one 128-token FP16 K+V slab
    const ScaledShape s = ShapeFor(target, sec);
    h = kernels::MakeFp16Header(kernels::Preset::kK4V2G128, m.head_dim, s.layers, s.heads, 128, 0);
  }
  std::vector<uint8_t> body(h.layer_section_bytes * h.num_layers);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 8 <= body.size(); i += 8) {
    const uint64_t v = rng() | 1;
    std::memcpy(body.data() + i, &v, 8);
  }
  std::vector<absl::Span<const uint8_t>> sections;
  for (int l = 0; l < h.num_layers; ++l) {
    sections.push_back(
        absl::MakeConstSpan(body).subspan(l * h.layer_section_bytes, h.layer_section_bytes));
  }
  absl::StatusOr<std::vector<uint8_t>> p = kernels::BuildPayload(h, sections);
  if (!p.ok()) return p.status();
  return std::make_shared<const std::vector<uint8_t>>(std::move(p).value());
}

void DrawProgress(size_t done, size_t total, double seconds) {
  const int width = 40;
  const int filled = total ? int(double(done) / total * width) : width;
  std::fprintf(stderr, "\r[%.*s%*s] %3d%% %zu/%zu requests %.1fs", filled,
               "########################################", width - filled, "",
               total ? int(100.0 * done / total) : 100, done, total, seconds);
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

}  // namespace

absl::StatusOr<ModelShape> FindModel(std::string_view name) {
  if (name == "qwen3-32b") return ModelShape{"qwen3-32b", 64, 8, 128};
  if (name == "llama3-8b") return ModelShape{"llama3-8b", 32, 8, 128};
  return absl::InvalidArgumentError(
      absl::StrCat("unknown model '", std::string(name), "' (qwen3-32b, llama3-8b)"));
}

absl::StatusOr<TraceCodec> ParseTraceCodec(std::string_view name) {
  if (name == "k4v2_g128") return TraceCodec::kK4V2G128;
  if (name == "fp16") return TraceCodec::kFp16;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown codec '", std::string(name), "' (k4v2_g128, fp16)"));
}

std::string_view TraceCodecName(TraceCodec c) {
  return c == TraceCodec::kK4V2G128 ? "k4v2_g128" : "fp16";
}

uint64_t BlockBytes(const ModelShape& m, TraceCodec c) {
  const uint64_t per_head_layer =
      c == TraceCodec::kK4V2G128
          ? uint64_t{kTraceBlockTokens / 128} *
                kernels::MakeTileLayout(kernels::Preset::kK4V2G128, m.head_dim).record_bytes
          : uint64_t{kTraceBlockTokens} * 2 * 2 * m.head_dim;
  return per_head_layer * m.num_layers * m.num_kv_heads;
}

absl::StatusOr<uint64_t> ParseBytes(std::string_view s) {
  s = Strip(s);
  size_t i = 0;
  while (i < s.size() && (absl::ascii_isdigit(s[i]) || s[i] == '.')) ++i;
  double v = 0;
  if (i == 0 || !absl::SimpleAtod(std::string(s.substr(0, i)), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("bad byte count '", std::string(s), "'"));
  }
  const std::string unit = absl::AsciiStrToLower(std::string(Strip(s.substr(i))));
  static const std::pair<const char*, double> kUnits[] = {{"", 1},
                                                          {"b", 1},
                                                          {"kb", 1e3},
                                                          {"mb", 1e6},
                                                          {"gb", 1e9},
                                                          {"tb", 1e12},
                                                          {"kib", 1024.0},
                                                          {"mib", 1048576.0},
                                                          {"gib", 1073741824.0},
                                                          {"tib", 1099511627776.0},
                                                          {"k", 1024.0},
                                                          {"m", 1048576.0},
                                                          {"g", 1073741824.0},
                                                          {"t", 1099511627776.0}};
  for (const auto& [name, mult] : kUnits) {
    if (unit == name) return static_cast<uint64_t>(v * mult);
  }
  return absl::InvalidArgumentError(absl::StrCat("bad byte unit '", unit, "'"));
}

std::string FormatBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (b >= 1024 && u < 5) {
    b /= 1024;
    ++u;
  }
  return absl::StrFormat(u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
}

absl::StatusOr<TraceRequest> ParseTraceLine(std::string_view line) {
  TraceRequest r;
  std::string_view len = AfterKey(line, "input_length");
  size_t n = 0;
  while (n < len.size() && absl::ascii_isdigit(len[n])) ++n;
  if (n == 0 || !ParseInt(len.substr(0, n), &r.input_length)) {
    return absl::InvalidArgumentError("trace line without a numeric input_length");
  }
  std::string_view ids = AfterKey(line, "hash_ids");
  if (ids.empty() || ids[0] != '[')
    return absl::InvalidArgumentError("trace line without hash_ids");
  const size_t end = ids.find(']');
  if (end == std::string_view::npos) return absl::InvalidArgumentError("unterminated hash_ids");
  std::string_view list = ids.substr(1, end - 1);
  while (!list.empty()) {
    const size_t comma = list.find(',');
    std::string_view item = Strip(list.substr(0, comma));
    int32_t id = 0;
    if (!ParseInt(item, &id)) {
      return absl::InvalidArgumentError(absl::StrCat("bad hash id '", std::string(item), "'"));
    }
    r.hash_ids.push_back(id);
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  // Optional fields.
  for (auto [key, out] :
       {std::pair<std::string_view, uint64_t*>{"output_length", &r.output_length}}) {
    std::string_view v = AfterKey(line, key);
    size_t k = 0;
    while (k < v.size() && absl::ascii_isdigit(v[k])) ++k;
    if (k > 0 && !ParseInt(v.substr(0, k), out)) {
      return absl::InvalidArgumentError(absl::StrCat("bad ", std::string(key)));
    }
  }
  std::string_view ts = AfterKey(line, "timestamp");
  size_t k = 0;
  while (k < ts.size() && absl::ascii_isdigit(ts[k])) ++k;
  if (k > 0 && !ParseInt(ts.substr(0, k), &r.timestamp_ms)) {
    return absl::InvalidArgumentError("bad timestamp");
  }
  return r;
}

absl::StatusOr<std::vector<TraceRequest>> LoadTrace(const std::string& path, size_t limit,
                                                    size_t skip) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open trace ", path));
  std::vector<TraceRequest> out;
  std::string line;
  size_t line_no = 0;
  size_t index = 0;
  while ((limit == 0 || out.size() < limit) && std::getline(in, line)) {
    ++line_no;
    if (Strip(line).empty()) continue;
    if (index++ < skip) continue;
    absl::StatusOr<TraceRequest> r = ParseTraceLine(line);
    if (!r.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line_no, ": ", std::string(r.status().message())));
    }
    out.push_back(std::move(r).value());
  }
  return out;
}

absl::StatusOr<ReplayResult> ReplayRequests(const std::vector<TraceRequest>& requests,
                                            const ReplayOptions& o) {
  absl::StatusOr<ModelShape> model = FindModel(o.model);
  if (!model.ok()) return model.status();
  if (!(o.scale > 0 && o.scale <= 1)) return absl::InvalidArgumentError("scale must be in (0, 1]");
  ReplayResult res;
  res.model = model->name;
  res.codec = std::string(TraceCodecName(o.codec));
  res.capacity_bytes = o.capacity_bytes;
  res.disk_capacity_bytes = o.disk_capacity_bytes;
  res.block_bytes = BlockBytes(*model, o.codec);
  res.capacity_blocks = o.capacity_bytes / res.block_bytes;
  if (res.capacity_blocks == 0) {
    return absl::InvalidArgumentError(absl::StrCat("capacity ", FormatBytes(o.capacity_bytes),
                                                   " holds no block of ",
                                                   FormatBytes(res.block_bytes)));
  }
  std::vector<Payload> pool;
  for (int i = 0; i < kPoolSize; ++i) {
    absl::StatusOr<Payload> p = RandomPayload(*model, o.codec, res.block_bytes * o.scale, i + 1);
    if (!p.ok()) return p.status();
    pool.push_back(*p);
  }
  res.payload_bytes = pool[0]->size();

  storage::TieredStoreOptions so;
  so.memory_capacity_bytes = res.capacity_blocks * res.payload_bytes;
  so.chain_aware_eviction = o.chain_aware_eviction;
  std::string temp_dir;
  if (o.disk_capacity_bytes > 0) {
    const uint64_t disk_blocks = o.disk_capacity_bytes / res.block_bytes;
    if (disk_blocks == 0) return absl::InvalidArgumentError("disk capacity holds no block");
    so.disk_capacity_bytes = disk_blocks * res.payload_bytes;
    so.disk_path = o.disk_path;
    if (so.disk_path.empty()) {
      std::string tmpl = (std::filesystem::temp_directory_path() / "kvtier_bench_XXXXXX").string();
      if (mkdtemp(tmpl.data()) == nullptr) return absl::UnavailableError("mkdtemp failed");
      temp_dir = so.disk_path = tmpl;
    }
    so.write_through = false;  // a cache: blocks reach disk when RAM evicts them
  }
  absl::StatusOr<std::unique_ptr<storage::TieredStore>> store = storage::TieredStore::Open(so);
  if (!store.ok()) return store.status();

  const std::string ns = absl::StrCat("bench/", res.model, "/", res.codec, "/tp0");
  const kernels::ChainHash seed = kernels::ChainSeed(ns);
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const size_t step = std::max<size_t>(1, requests.size() / 200);
  double last_draw = -1;
  std::vector<kernels::ChainHash> chain;
  std::vector<BlockKey> keys;
  for (size_t r = 0; r < requests.size(); ++r) {
    const TraceRequest& req = requests[r];
    chain.clear();
    kernels::ChainHash h = seed;
    for (int32_t id : req.hash_ids) {
      h = kernels::ChainNext(h, absl::MakeConstSpan(&id, 1));
      chain.push_back(h);
    }
    const size_t hit = (*store)->Lookup(ns, chain, 0);
    keys.clear();
    for (size_t i = 0; i < hit; ++i) keys.push_back(BlockKey{ns, chain[i], 0});
    for (const auto& got : (*store)->Get(keys)) {
      if (!got.ok()) return got.status();
    }
    for (size_t i = hit; i < chain.size(); ++i) {
      absl::StatusOr<storage::PutOutcome> put =
          (*store)->Put(BlockKey{ns, chain[i], 0}, pool[uint32_t(req.hash_ids[i]) % kPoolSize]);
      if (!put.ok()) return put.status();
      ++(*put == storage::PutOutcome::kStored ? res.puts_stored : res.puts_deduplicated);
    }
    res.requests++;
    res.input_tokens += req.input_length;
    res.hit_tokens += std::min<uint64_t>(uint64_t{hit} * kTraceBlockTokens, req.input_length);
    res.blocks += chain.size();
    res.hit_blocks += hit;
    if (o.progress && (r % step == 0 || r + 1 == requests.size())) {
      const double now = elapsed();
      if (now - last_draw >= 0.1 || r + 1 == requests.size()) {
        DrawProgress(r + 1, requests.size(), now);
        last_draw = now;
      }
    }
  }
  res.seconds = elapsed();
  const storage::StoreStats st = (*store)->Stats();
  res.memory_evictions = st.memory.evictions;
  res.disk_evictions = st.disk.evictions;
  res.memory_blocks = st.memory.blocks;
  res.disk_blocks = st.disk.blocks;
  res.promotions = st.promotions;
  store->reset();
  if (!temp_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(temp_dir, ec);
  }
  return res;
}

absl::StatusOr<ReplayResult> ReplayTrace(const ReplayOptions& options) {
  absl::StatusOr<std::vector<TraceRequest>> reqs = LoadTrace(options.trace_path, options.limit);
  if (!reqs.ok()) return reqs.status();
  return ReplayRequests(*reqs, options);
}

}  // namespace kvtier::tools
