// `kvtier demo` (README command 1): a disaggregated prefill/decode workload from the
// Mooncake conversation trace against a local kvtier-server with embedded defaults.
//
// Prefill workers generate the synthetic KV of each request (deterministic per trace hash
// id, so shared prefixes have identical KV), Lookup the prefix on the server, compress
// the missing blocks with the KVarN codec and Put them. Decode workers Lookup, Get the
// prefix, attend over the compressed blocks (kernels/cpu AttendReference) and compare
// with exact attention over the original FP16 KV. Ends with a table of hit rate, bytes,
// error and throughput.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "common/status_macros.h"
#include "kernels/cpu/codec.h"
#include "kernels/format.h"
#include "kernels/payload.h"
#include "tools/command.h"
#include "tools/demo_gpu.h"
#include "tools/demo_workload.h"

namespace kvtier::tools {
namespace {

namespace fs = std::filesystem;
using kernels::BlockEncoding;

struct DemoFlags {
  std::string trace;
  int requests = 12;
  int kv_cache_mib = 768;
  int skip = 0;
  DemoModel model;
  int prefill_workers = 2;
  int decode_workers = 2;
  std::string data_dir;  // empty: a temporary directory, removed at the end
  std::string server_bin;
  std::string endpoint;  // use a running server instead of starting one
  std::string token;
  std::string memory_capacity = "2GiB";
  std::string gpu = "auto";  // auto | on | off
  bool keep_serving = false;
  bool progress = true;
};

void Usage(FILE* out) {
  std::fprintf(
      out,
      "usage: kvtier demo [flags]\n"
      "Replays a slice of the Mooncake conversation trace as a disaggregated prefill/decode\n"
      "workload through a local kvtier-server (started here, RocksDB in a temp directory).\n\n"
      "  --trace=PATH          trace (default: "
      "<repo>/../shared/data/mooncake_conversation_trace.jsonl)\n"
      "  --requests=N          requests to replay (default 12)\n"
      "  --skip=N              start at request N of the trace (default 0)\n"
      "  --layers=N --kv_heads=N --q_heads=N --head_dim=N   model shape (default 4, 8, 32, 128)\n"
      "  --preset=NAME         k4v2_g128 (default), k4v4_g128, k4v2_g64, k4v4_g64\n"
      "  --sink_blocks=N       leading blocks kept FP16 (default 1)\n"
      "  --max_tokens=N        cap on a request's prompt tokens (default 4096; 0 = none)\n"
      "  --kv_cache_mib=N      synthetic KV kept for reuse between workers (default 768)\n"
      "  --prefill_workers=N --decode_workers=N   worker threads (default 2, 2)\n"
      "  --data_dir=DIR        server RocksDB directory, kept (default: temporary)\n"
      "  --server=PATH         kvtier-server binary (default: next to this build)\n"
      "  --endpoint=HOST:PORT  use a running server instead of starting one\n"
      "  --token=T             bearer token for --endpoint\n"
      "  --memory_capacity=S   server RAM tier (default 2GiB)\n"
      "  --gpu=auto|on|off     compress, import and attend on the GPU (auto: when this build\n"
      "                        has CUDA and a device is present; default auto)\n"
      "  --keep_serving        leave the server running after the table (Ctrl-C stops it)\n"
      "  --no_progress         no progress bar\n");
}

bool ParseIntFlag(const std::string& v, int* out) { return absl::SimpleAtoi(v, out); }

// Returns 0 on success, 2 on a usage error (message printed).
int ParseFlags(int argc, char** argv, DemoFlags* f) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      Usage(stdout);
      return 1;
    }
    if (a.rfind("--", 0) != 0) {
      std::fprintf(stderr, "kvtier demo: unexpected argument '%s'\n", a.c_str());
      return 2;
    }
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    const bool is_bool = name == "keep_serving" || name == "no_progress";
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (!is_bool) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kvtier demo: --%s needs a value\n", name.c_str());
        return 2;
      }
      value = argv[++i];
    }
    bool ok = true;
    if (name == "trace")
      f->trace = value;
    else if (name == "requests")
      ok = ParseIntFlag(value, &f->requests) && f->requests > 0;
    else if (name == "kv_cache_mib")
      ok = ParseIntFlag(value, &f->kv_cache_mib) && f->kv_cache_mib >= 0;
    else if (name == "skip")
      ok = ParseIntFlag(value, &f->skip) && f->skip >= 0;
    else if (name == "layers")
      ok = ParseIntFlag(value, &f->model.num_layers);
    else if (name == "kv_heads")
      ok = ParseIntFlag(value, &f->model.num_kv_heads);
    else if (name == "q_heads")
      ok = ParseIntFlag(value, &f->model.num_q_heads);
    else if (name == "head_dim")
      ok = ParseIntFlag(value, &f->model.head_dim);
    else if (name == "sink_blocks")
      ok = ParseIntFlag(value, &f->model.sink_blocks);
    else if (name == "max_tokens")
      ok = ParseIntFlag(value, &f->model.max_tokens);
    else if (name == "prefill_workers")
      ok = ParseIntFlag(value, &f->prefill_workers) && f->prefill_workers > 0;
    else if (name == "decode_workers")
      ok = ParseIntFlag(value, &f->decode_workers) && f->decode_workers > 0;
    else if (name == "data_dir")
      f->data_dir = value;
    else if (name == "server")
      f->server_bin = value;
    else if (name == "endpoint")
      f->endpoint = value;
    else if (name == "token")
      f->token = value;
    else if (name == "memory_capacity")
      f->memory_capacity = value;
    else if (name == "keep_serving")
      f->keep_serving = true;
    else if (name == "gpu") {
      ok = value == "auto" || value == "on" || value == "off";
      f->gpu = value;
    } else if (name == "no_progress")
      f->progress = false;
    else if (name == "preset") {
      auto p = kernels::PresetFromName(value);
      ok = p.has_value();
      if (ok) f->model.preset = *p;
    } else {
      std::fprintf(stderr, "kvtier demo: unknown flag --%s (see --help)\n", name.c_str());
      return 2;
    }
    if (!ok) {
      std::fprintf(stderr, "kvtier demo: bad value '%s' for --%s\n", value.c_str(), name.c_str());
      return 2;
    }
  }
  return 0;
}

// Counters shared by the workers.
struct Totals {
  std::atomic<uint64_t> input_tokens{0};
  std::atomic<uint64_t> prefill_hit_tokens{0};
  std::atomic<uint64_t> decode_hit_tokens{0};
  std::atomic<uint64_t> blocks_stored{0};
  std::atomic<uint64_t> blocks_dedup{0};
  std::atomic<uint64_t> put_bytes{0};
  std::atomic<uint64_t> put_fp16_bytes{0};
  std::atomic<uint64_t> stored_bytes{0};
  std::atomic<uint64_t> stored_fp16_bytes{0};
  std::atomic<uint64_t> get_bytes{0};
  std::atomic<uint64_t> get_fp16_bytes{0};
  std::atomic<uint64_t> prefill_done{0};
  std::atomic<uint64_t> decode_done{0};
  std::atomic<uint64_t> compressed_blocks_attended{0};
  std::atomic<uint64_t> gpu_fallbacks{0};  // requests the GPU path failed, redone on the CPU
  std::atomic<int64_t> prefill_ns{0};
  std::atomic<int64_t> decode_ns{0};
  std::mutex err_mu;
  std::vector<double> errors;  // per (request, layer, q head): relative L2 vs exact FP16
  std::mutex fail_mu;
  absl::Status failure;  // first error of any worker

  void Fail(const absl::Status& s) {
    std::lock_guard<std::mutex> l(fail_mu);
    if (failure.ok()) failure = s;
  }
  bool failed() {
    std::lock_guard<std::mutex> l(fail_mu);
    return !failure.ok();
  }
};

// Synthetic KV of recently used (hash id, layer) pairs, shared by all workers: a decode
// worker mostly finds what its prefill worker generated, and shared prefixes are made
// once. Bounded by bytes, least recently used first out.
// Thread-safe.
class SharedKvCache {
 public:
  SharedKvCache(const DemoModel& m, size_t capacity_bytes) : m_(m), capacity_(capacity_bytes) {}

  absl::StatusOr<std::shared_ptr<const HashBlockKv>> Get(int64_t hash_id, int layer, bool first) {
    const Key key{hash_id, layer, first};
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = map_.find(key);
      if (it != map_.end()) {
        it->second.last_use = ++clock_;
        return it->second.kv;
      }
    }
    KVTIER_ASSIGN_OR_RETURN(HashBlockKv kv, GenerateHashBlockKv(m_, hash_id, layer, first));
    auto ptr = std::make_shared<const HashBlockKv>(std::move(kv));
    const size_t bytes = (ptr->k.size() + ptr->v.size() + ptr->q.size()) * sizeof(float);
    std::lock_guard<std::mutex> l(mu_);
    if (map_.emplace(key, Entry{ptr, ++clock_, bytes}).second) used_ += bytes;
    while (used_ > capacity_ && map_.size() > 1) {
      auto victim = map_.begin();
      for (auto it = map_.begin(); it != map_.end(); ++it) {
        if (it->second.last_use < victim->second.last_use) victim = it;
      }
      used_ -= victim->second.bytes;
      map_.erase(victim);
    }
    return ptr;
  }

 private:
  struct Key {
    int64_t hash_id;
    int layer;
    bool first;
    bool operator<(const Key& o) const {
      return std::tie(hash_id, layer, first) < std::tie(o.hash_id, o.layer, o.first);
    }
  };
  struct Entry {
    std::shared_ptr<const HashBlockKv> kv;
    uint64_t last_use;
    size_t bytes;
  };
  const DemoModel& m_;
  const size_t capacity_;
  std::mutex mu_;
  std::map<Key, Entry> map_;  // guarded by mu_
  uint64_t clock_ = 0;        // guarded by mu_
  size_t used_ = 0;           // guarded by mu_
};

// The exact (unquantized) K and V of layer l for the request's tokens, into k and v
// ([tokens][kv_heads][head_dim], sized by the caller), and its decode query (the last
// trace block's).
absl::Status GatherLayerKv(const DemoModel& m, const RequestPlan& p, SharedKvCache& cache, int l,
                           std::vector<float>* k, std::vector<float>* v, std::vector<float>* q) {
  const size_t row = static_cast<size_t>(m.num_kv_heads) * m.head_dim;
  const int num_hash = static_cast<int>(p.hash_ids.size());
  for (int hi = 0; hi < num_hash; ++hi) {
    KVTIER_ASSIGN_OR_RETURN(auto kv, cache.Get(p.hash_ids[hi], l, hi == 0));
    const size_t first = static_cast<size_t>(hi) * m.trace_block_tokens;
    const size_t n = std::min<size_t>(m.trace_block_tokens, p.tokens - first);
    std::copy_n(kv->k.begin(), n * row, k->begin() + first * row);
    std::copy_n(kv->v.begin(), n * row, v->begin() + first * row);
    if (hi == num_hash - 1) *q = kv->q;
  }
  return absl::OkStatus();
}

absl::Status Prefill(const DemoModel& m, const std::string& ns, const RequestPlan& p,
                     client::Client& c, SharedKvCache& cache, Totals& t) {
  const int g = m.group_size();
  KVTIER_ASSIGN_OR_RETURN(size_t hit, c.Lookup(ns, 0, p.chain, g));
  uint64_t hit_tokens = 0;
  for (size_t b = 0; b < hit; ++b) hit_tokens += p.BlockTokens(static_cast<int>(b), g);
  t.input_tokens += p.tokens;
  t.prefill_hit_tokens += hit_tokens;
  // Export the missing blocks in batches, so memory stays bounded for long prompts.
  constexpr int kBatch = 16;
  std::vector<std::shared_ptr<const HashBlockKv>> held;  // keeps returned pointers valid
  KvSource src = [&](int hi, int l) -> absl::StatusOr<const HashBlockKv*> {
    KVTIER_ASSIGN_OR_RETURN(auto kv, cache.Get(p.hash_ids[hi], l, hi == 0));
    if (held.size() >= static_cast<size_t>(2 * m.num_layers)) held.erase(held.begin());
    held.push_back(kv);
    return held.back().get();
  };
  for (int first = static_cast<int>(hit); first < p.num_blocks(); first += kBatch) {
    const int last = std::min(p.num_blocks(), first + kBatch);
    std::vector<std::vector<uint8_t>> payloads;
    std::vector<client::PutItem> items;
    for (int b = first; b < last; ++b) {
      KVTIER_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, BuildBlockPayload(m, p, b, src));
      payloads.push_back(std::move(bytes));
    }
    for (int b = first; b < last; ++b) {
      items.push_back({p.chain[b], payloads[b - first]});
    }
    KVTIER_ASSIGN_OR_RETURN(std::vector<client::PutOutcome> out, c.Put(ns, 0, items));
    for (int b = first; b < last; ++b) {
      const uint64_t bytes = payloads[b - first].size();
      const uint64_t fp16 = m.Fp16Bytes(p.BlockTokens(b, g));
      t.put_bytes += bytes;
      t.put_fp16_bytes += fp16;
      if (out[b - first] == client::PutOutcome::kStored) {
        ++t.blocks_stored;
        t.stored_bytes += bytes;
        t.stored_fp16_bytes += fp16;
      } else {
        ++t.blocks_dedup;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Decode(const DemoModel& m, const std::string& ns, const RequestPlan& p,
                    client::Client& c, SharedKvCache& cache, Totals& t) {
  const int g = m.group_size();
  KVTIER_ASSIGN_OR_RETURN(size_t hit, c.Lookup(ns, 0, p.chain, g));
  std::vector<client::BlockResult> got = c.Get(ns, 0, absl::MakeSpan(p.chain).first(hit));
  // Leading blocks received; a block missing now (evicted, failed) is a miss: it and
  // everything after it are recomputed locally (FP16), as an engine would.
  std::vector<kernels::PayloadView> views;
  for (auto& r : got) {
    if (!r.hit) break;
    auto v = kernels::ValidatePayload(r.payload);
    if (!v.ok()) break;
    views.push_back(*v);
  }
  uint64_t hit_tokens = 0;
  for (const auto& v : views) {
    hit_tokens += v.header.token_count;
    t.get_bytes += v.bytes.size();
    t.get_fp16_bytes += m.Fp16Bytes(v.header.token_count);
    if (v.header.encoding == BlockEncoding::kTiles) ++t.compressed_blocks_attended;
  }
  t.decode_hit_tokens += hit_tokens;

  const kernels::TileLayout layout = kernels::MakeTileLayout(m.preset, m.head_dim);
  const size_t row = static_cast<size_t>(m.num_kv_heads) * m.head_dim;
  std::vector<float> k(static_cast<size_t>(p.tokens) * row), v(k.size());
  std::vector<std::vector<uint16_t>> recomputed;  // FP16 sections of missed blocks
  std::vector<double> ref;
  std::vector<float> out(static_cast<size_t>(m.num_q_heads) * m.head_dim);
  std::vector<double> errors;
  for (int l = 0; l < m.num_layers; ++l) {
    std::vector<float> q;
    KVTIER_RETURN_IF_ERROR(GatherLayerKv(m, p, cache, l, &k, &v, &q));
    std::vector<kernels::cpu::BlockSection> sections;
    recomputed.clear();
    for (int b = 0; b < p.num_blocks(); ++b) {
      const int n = p.BlockTokens(b, g);
      if (b < static_cast<int>(views.size())) {
        const auto& h = views[b].header;
        sections.push_back({h.encoding, static_cast<int>(h.token_count), views[b].layer(l).data()});
      } else {
        recomputed.emplace_back(row * 2 * n);
        kernels::cpu::EncodeFp16Section(m.head_dim, m.num_kv_heads, n, k.data() + b * g * row,
                                        v.data() + b * g * row, recomputed.back().data());
        sections.push_back(
            {BlockEncoding::kFp16, n, reinterpret_cast<const uint8_t*>(recomputed.back().data())});
      }
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(m.head_dim));
    KVTIER_RETURN_IF_ERROR(kernels::cpu::AttendReference(
        layout, m.num_kv_heads, sections, q.data(), m.num_q_heads, scale, out.data(), nullptr));
    ExactAttention(m.num_q_heads, m.num_kv_heads, m.head_dim, p.tokens, q.data(), k.data(),
                   v.data(), &ref);
    auto e = RowRelativeErrors(out.data(), ref, m.num_q_heads, m.head_dim);
    errors.insert(errors.end(), e.begin(), e.end());
  }
  std::lock_guard<std::mutex> lock(t.err_mu);
  t.errors.insert(t.errors.end(), errors.begin(), errors.end());
  return absl::OkStatus();
}

// Prefill on the GPU: the full blocks go through client/gpu's Exporter; the partial tail
// block (FP16) is built on the host. Counters are committed only on success, so a failure
// can be redone on the CPU path.
absl::Status GpuPrefill(const DemoModel& m, const std::string& ns, const RequestPlan& p,
                        client::Client& c, DemoGpu& gpu, SharedKvCache& cache, Totals& t) {
  const int g = m.group_size();
  KVTIER_ASSIGN_OR_RETURN(size_t hit, c.Lookup(ns, 0, p.chain, g));
  uint64_t hit_tokens = 0;
  for (size_t b = 0; b < hit; ++b) hit_tokens += p.BlockTokens(static_cast<int>(b), g);
  std::vector<std::shared_ptr<const HashBlockKv>> held;
  KvSource src = [&](int hi, int l) -> absl::StatusOr<const HashBlockKv*> {
    KVTIER_ASSIGN_OR_RETURN(auto kv, cache.Get(p.hash_ids[hi], l, hi == 0));
    held.push_back(kv);
    if (held.size() > static_cast<size_t>(4 * m.num_layers)) held.erase(held.begin());
    return held.back().get();
  };
  DemoGpu::ExportResult e;
  if (hit < static_cast<size_t>(p.full_blocks)) {
    KVTIER_ASSIGN_OR_RETURN(e, gpu.Export(p, src));
    held.clear();
  }
  uint64_t tail_bytes = 0;
  bool tail_stored = false;
  if (p.tail_tokens > 0 && hit < static_cast<size_t>(p.num_blocks())) {
    KVTIER_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes,
                            BuildBlockPayload(m, p, p.num_blocks() - 1, src));
    client::PutItem item{p.chain.back(), bytes};
    KVTIER_ASSIGN_OR_RETURN(auto out, c.Put(ns, 0, absl::MakeConstSpan(&item, 1)));
    tail_bytes = bytes.size();
    tail_stored = out[0] == client::PutOutcome::kStored;
  }
  t.input_tokens += p.tokens;
  t.prefill_hit_tokens += hit_tokens;
  t.blocks_stored += e.stored + (tail_stored ? 1 : 0);
  t.blocks_dedup += e.deduplicated + (tail_bytes > 0 && !tail_stored ? 1 : 0);
  t.put_bytes += e.bytes_sent + tail_bytes;
  t.put_fp16_bytes +=
      m.Fp16Bytes((e.stored + e.deduplicated) * g + (tail_bytes ? p.tail_tokens : 0));
  t.stored_bytes += e.bytes_stored + (tail_stored ? tail_bytes : 0);
  t.stored_fp16_bytes += m.Fp16Bytes(e.stored * g + (tail_stored ? p.tail_tokens : 0));
  return absl::OkStatus();
}

// Decode on the GPU: import the whole prompt into the compressed paged cache and run the
// fused attention kernel per layer. A partial import is an error here (the CPU path then
// redoes the request, recomputing the missing blocks).
absl::Status GpuDecode(const DemoModel& m, const std::string& ns, const RequestPlan& p,
                       DemoGpu& gpu, SharedKvCache& cache, Totals& t) {
  KVTIER_ASSIGN_OR_RETURN(DemoGpu::ImportResult r, gpu.Import(p));
  if (r.blocks < static_cast<size_t>(p.num_blocks())) {
    return absl::UnavailableError("partial import");
  }
  const size_t row = static_cast<size_t>(m.num_kv_heads) * m.head_dim;
  std::vector<float> k(static_cast<size_t>(p.tokens) * row), v(k.size());
  std::vector<float> out(static_cast<size_t>(m.num_q_heads) * m.head_dim);
  std::vector<double> ref, errors;
  for (int l = 0; l < m.num_layers; ++l) {
    std::vector<float> q;
    KVTIER_RETURN_IF_ERROR(GatherLayerKv(m, p, cache, l, &k, &v, &q));
    KVTIER_RETURN_IF_ERROR(gpu.Attend(l, q.data(), p.tokens, out.data()));
    ExactAttention(m.num_q_heads, m.num_kv_heads, m.head_dim, p.tokens, q.data(), k.data(),
                   v.data(), &ref);
    auto e = RowRelativeErrors(out.data(), ref, m.num_q_heads, m.head_dim);
    errors.insert(errors.end(), e.begin(), e.end());
  }
  t.decode_hit_tokens += p.tokens;
  t.get_bytes += r.bytes_received;
  t.get_fp16_bytes += m.Fp16Bytes(p.tokens);
  t.compressed_blocks_attended += r.compressed_blocks;
  std::lock_guard<std::mutex> lock(t.err_mu);
  t.errors.insert(t.errors.end(), errors.begin(), errors.end());
  return absl::OkStatus();
}

std::string Bytes(double b) {
  if (b >= 1024.0 * 1024 * 1024) return absl::StrFormat("%.2f GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return absl::StrFormat("%.1f MiB", b / (1024.0 * 1024));
  return absl::StrFormat("%.1f KiB", b / 1024.0);
}

double Ratio(double fp16, double actual) { return actual > 0 ? fp16 / actual : 0.0; }

void ProgressLine(size_t total, const Totals& t, absl::Time start) {
  const size_t p = t.prefill_done.load(), d = t.decode_done.load();
  constexpr int kWidth = 30;
  const int fill = total ? static_cast<int>(kWidth * d / total) : kWidth;
  std::string bar(fill, '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r  [%s] prefill %zu/%zu  decode %zu/%zu  %.0fs ", bar.c_str(), p, total, d,
               total, absl::ToDoubleSeconds(absl::Now() - start));
  std::fflush(stderr);
}

int RunDemo(int argc, char** argv) {
  DemoFlags f;
  f.model.max_tokens = 4096;  // keeps the default run near a minute on 2 cores
  if (int rc = ParseFlags(argc, argv, &f); rc != 0) return rc == 1 ? 0 : rc;
  if (auto s = ValidateModel(f.model); !s.ok()) {
    std::fprintf(stderr, "kvtier demo: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (f.trace.empty()) {
    // ../shared/data next to the repo root (a git worktree may sit one level deeper).
#ifdef KVTIER_SOURCE_DIR
    const std::string root = KVTIER_SOURCE_DIR;
#else
    const std::string root = ".";
#endif
    const char* kRel = "shared/data/mooncake_conversation_trace.jsonl";
    f.trace = root + "/../" + kRel;
    for (const std::string up : {"/../", "/../../"}) {
      if (fs::exists(root + up + kRel)) {
        f.trace = root + up + kRel;
        break;
      }
    }
  }
  auto trace = LoadTrace(f.trace, static_cast<size_t>(std::max(f.requests, 0)),
                         static_cast<size_t>(std::max(f.skip, 0)));
  if (!trace.ok()) {
    std::fprintf(stderr, "kvtier demo: %s (set --trace)\n", trace.status().ToString().c_str());
    return 1;
  }
  if (trace->empty()) {
    std::fprintf(stderr, "kvtier demo: no requests in %s after --skip\n", f.trace.c_str());
    return 1;
  }

  // The server: a child process with embedded defaults, unless --endpoint is given.
  LocalServer server;
  std::string endpoint = f.endpoint, metrics_url = "(see the server's --http_port)";
  std::string temp_dir;
  // Removes the temporary data directory on every return (after stopping the server),
  // unless `keep` is set because its server log explains a failure.
  struct TempDirCleanup {
    const std::string& path;
    LocalServer& server;
    bool keep = false;
    ~TempDirCleanup() {
      if (path.empty() || keep) return;
      server.Stop();
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  } cleanup{temp_dir, server};
  if (endpoint.empty()) {
    std::string data_dir = f.data_dir;
    if (data_dir.empty()) {
      const char* tmp = std::getenv("TMPDIR");
      std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/kvtier-demo-XXXXXX";
      if (::mkdtemp(tmpl.data()) == nullptr) {
        std::fprintf(stderr, "kvtier demo: cannot create a temporary directory\n");
        return 1;
      }
      temp_dir = data_dir = tmpl;
    } else {
      std::error_code ec;
      fs::create_directories(data_dir, ec);
    }
    LocalServer::Options so;
    so.binary = f.server_bin.empty() ? DefaultServerBinary() : f.server_bin;
    so.data_dir = data_dir + "/db";
    so.memory_capacity = f.memory_capacity;
    so.log_path = data_dir + "/kvtier-server.log";
    std::fprintf(stderr, "kvtier demo: starting %s (RocksDB in %s)\n", so.binary.c_str(),
                 so.data_dir.c_str());
    if (auto s = server.Start(so); !s.ok()) {
      std::fprintf(stderr, "kvtier demo: %s\n", s.ToString().c_str());
      cleanup.keep = true;
      return 1;
    }
    endpoint = server.endpoint();
    metrics_url = server.metrics_url();
  }
  client::ClientOptions co;
  co.endpoints = {endpoint};
  co.token = f.token;
  co.timeout = absl::Seconds(60);
  auto client_or = client::Client::Create(co);
  if (!client_or.ok()) {
    std::fprintf(stderr, "kvtier demo: %s\n", client_or.status().ToString().c_str());
    return 1;
  }
  client::Client& c = **client_or;

  const DemoModel& m = f.model;
  const std::string ns = m.Namespace();
  bool use_gpu = false;
  if (f.gpu != "off") {
    auto probe = DemoGpu::Create(&c, m, ns);
    use_gpu = probe.ok();
    if (!use_gpu && f.gpu == "on") {
      std::fprintf(stderr, "kvtier demo: --gpu=on: %s\n", probe.status().ToString().c_str());
      return 1;
    }
  }
  const char* codec_name = use_gpu ? "GPU codec (kernels/cuda)" : "CPU codec";
  std::vector<RequestPlan> plans;
  for (const auto& r : *trace) plans.push_back(PlanRequest(m, r, ns));
  const size_t n = plans.size();
  std::fprintf(stderr,
               "kvtier demo: %zu requests from %s, model %d layers x %d KV heads x D%d "
               "(%d q heads), %s, %s, server %s\n",
               n, fs::path(f.trace).filename().c_str(), m.num_layers, m.num_kv_heads, m.head_dim,
               m.num_q_heads, std::string(kernels::PresetName(m.preset)).c_str(), codec_name,
               endpoint.c_str());

  Totals t;
  SharedKvCache kv_cache(m, static_cast<size_t>(f.kv_cache_mib) << 20);
  std::atomic<size_t> next_prefill{0};
  std::mutex q_mu;
  std::condition_variable q_cv;
  std::deque<size_t> decode_queue;
  size_t prefills_finished = 0;
  const absl::Time start = absl::Now();

  std::vector<std::thread> threads;
  for (int w = 0; w < f.prefill_workers; ++w) {
    threads.emplace_back([&] {
      std::unique_ptr<DemoGpu> gpu;
      if (use_gpu) gpu = DemoGpu::Create(&c, m, ns).value_or(nullptr);
      for (;;) {
        const size_t i = next_prefill.fetch_add(1);
        if (i >= n) break;
        if (!t.failed()) {
          const absl::Time t0 = absl::Now();
          absl::Status s = absl::UnavailableError("no GPU");
          if (gpu) s = GpuPrefill(m, ns, plans[i], c, *gpu, kv_cache, t);
          if (!s.ok()) {
            if (gpu) ++t.gpu_fallbacks;
            s = Prefill(m, ns, plans[i], c, kv_cache, t);
          }
          t.prefill_ns += absl::ToInt64Nanoseconds(absl::Now() - t0);
          if (!s.ok()) t.Fail(absl::Status(s.code(), absl::StrCat("prefill: ", s.message())));
        }
        ++t.prefill_done;
        std::lock_guard<std::mutex> l(q_mu);
        decode_queue.push_back(i);
        ++prefills_finished;
        q_cv.notify_all();
      }
    });
  }
  for (int w = 0; w < f.decode_workers; ++w) {
    threads.emplace_back([&] {
      std::unique_ptr<DemoGpu> gpu;
      if (use_gpu) gpu = DemoGpu::Create(&c, m, ns).value_or(nullptr);
      for (;;) {
        size_t i;
        {
          std::unique_lock<std::mutex> l(q_mu);
          q_cv.wait(l, [&] { return !decode_queue.empty() || prefills_finished == n; });
          if (decode_queue.empty()) break;
          i = decode_queue.front();
          decode_queue.pop_front();
        }
        if (!t.failed()) {
          const absl::Time t0 = absl::Now();
          absl::Status s = absl::UnavailableError("no GPU");
          if (gpu) s = GpuDecode(m, ns, plans[i], *gpu, kv_cache, t);
          if (!s.ok()) {
            if (gpu) ++t.gpu_fallbacks;
            s = Decode(m, ns, plans[i], c, kv_cache, t);
          }
          t.decode_ns += absl::ToInt64Nanoseconds(absl::Now() - t0);
          if (!s.ok()) t.Fail(absl::Status(s.code(), absl::StrCat("decode: ", s.message())));
        }
        ++t.decode_done;
      }
    });
  }
  const bool show_progress = f.progress;
  while (t.decode_done.load() < n) {
    if (show_progress) ProgressLine(n, t, start);
    absl::SleepFor(absl::Milliseconds(250));
  }
  for (auto& th : threads) th.join();
  const double wall = absl::ToDoubleSeconds(absl::Now() - start);
  if (show_progress) {
    ProgressLine(n, t, start);
    std::fprintf(stderr, "\n");
  }
  if (!t.failure.ok()) {
    std::fprintf(stderr, "kvtier demo: FAILED: %s\n", t.failure.ToString().c_str());
    if (!temp_dir.empty()) {
      std::fprintf(stderr, "kvtier demo: server log kept in %s\n", temp_dir.c_str());
    }
    cleanup.keep = true;
    return 1;
  }

  std::vector<double> errs = t.errors;
  std::sort(errs.begin(), errs.end());
  double mean = 0;
  for (double e : errs) mean += e;
  mean /= std::max<size_t>(1, errs.size());
  const double p99 = errs.empty() ? 0 : errs[std::min(errs.size() - 1, errs.size() * 99 / 100)];
  const double max_err = errs.empty() ? 0 : errs.back();
  uint64_t ram_blocks = 0, ram_bytes = 0, disk_blocks = 0, disk_bytes = 0;
  for (auto& es : c.Stats()) {
    if (!es.stats.ok()) continue;
    ram_blocks += es.stats->memory().blocks();
    ram_bytes += es.stats->memory().bytes();
    disk_blocks += es.stats->disk().blocks();
    disk_bytes += es.stats->disk().bytes();
  }
  const double in_tokens = static_cast<double>(t.input_tokens.load());
  const double moved = static_cast<double>(t.put_bytes + t.get_bytes);
  const double moved_fp16 = static_cast<double>(t.put_fp16_bytes + t.get_fp16_bytes);

  std::printf("\nkvtier demo: %zu requests, %s tokens, %d layers x %d KV heads x D%d, %s, %s\n", n,
              absl::StrFormat("%.0f", in_tokens).c_str(), m.num_layers, m.num_kv_heads, m.head_dim,
              std::string(kernels::PresetName(m.preset)).c_str(), codec_name);
  std::printf("  %-30s %s\n", "metric", "value");
  std::printf("  %-30s %.1f %% (%llu of %.0f prompt tokens found by prefill Lookup)\n",
              "token prefix hit rate",
              in_tokens > 0 ? 100.0 * t.prefill_hit_tokens / in_tokens : 0.0,
              static_cast<unsigned long long>(t.prefill_hit_tokens.load()), in_tokens);
  std::printf("  %-30s %.1f %% of prompt tokens imported by decode\n", "decode import hit rate",
              in_tokens > 0 ? 100.0 * t.decode_hit_tokens / in_tokens : 0.0);
  std::printf("  %-30s %llu stored, %llu deduplicated\n", "blocks exported (Put)",
              static_cast<unsigned long long>(t.blocks_stored.load()),
              static_cast<unsigned long long>(t.blocks_dedup.load()));
  std::printf("  %-30s %s vs FP16 %s (%.2fx less)\n", "bytes moved (Put + Get)",
              Bytes(moved).c_str(), Bytes(moved_fp16).c_str(), Ratio(moved_fp16, moved));
  std::printf("  %-30s %s vs FP16 %s (%.2fx less)\n", "bytes stored (new blocks)",
              Bytes(t.stored_bytes).c_str(), Bytes(t.stored_fp16_bytes).c_str(),
              Ratio(t.stored_fp16_bytes, t.stored_bytes));
  std::printf("  %-30s RAM %llu blocks %s, disk %llu blocks %s\n", "server tiers",
              static_cast<unsigned long long>(ram_blocks), Bytes(ram_bytes).c_str(),
              static_cast<unsigned long long>(disk_blocks), Bytes(disk_bytes).c_str());
  std::printf("  %-30s mean %.4f, p99 %.4f, max %.4f (relative L2, %zu layer x head outputs)\n",
              "attention error vs FP16", mean, p99, max_err, errs.size());
  std::printf("  %-30s %llu compressed blocks attended in place\n", "decode attention",
              static_cast<unsigned long long>(t.compressed_blocks_attended.load()));
  std::printf("  %-30s %.2f requests/s, %.0f prompt tokens/s (%.1f s wall, %d+%d workers)\n",
              "throughput", n / wall, in_tokens / wall, wall, f.prefill_workers, f.decode_workers);
  if (t.gpu_fallbacks > 0) {
    std::printf("  %-30s %llu requests redone on the CPU after a GPU-path failure\n",
                "GPU fallbacks", static_cast<unsigned long long>(t.gpu_fallbacks.load()));
  }
  std::printf("  %-30s %s\n", "server metrics", metrics_url.c_str());
  std::fflush(stdout);

  if (f.keep_serving && server.pid() > 0) {
    std::fprintf(stderr, "kvtier demo: server %s keeps serving (pid %d); Ctrl-C to stop\n",
                 endpoint.c_str(), static_cast<int>(server.pid()));
    for (;;) ::pause();
  }
  server.Stop();
  return 0;
}

}  // namespace

KVTIER_REGISTER_COMMAND(demo, "demo", "end-to-end demo: trace replay through a local kvtier-server",
                        RunDemo);

}  // namespace kvtier::tools
