#include "tools/demo_workload.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "common/status_macros.h"
#include "kernels/cpu/codec.h"
#include "kernels/cpu/sequence.h"
#include "kernels/cpu/synth.h"

namespace kvtier::tools {
namespace {

using kernels::BlockEncoding;
using kernels::PayloadHeader;

}  // namespace

std::string DemoModel::Namespace() const {
  return absl::StrCat("demo/synth-L", num_layers, "-H", num_kv_heads, "-D", head_dim, "/",
                      std::string(kernels::PresetName(preset)), "/sink", sink_blocks);
}

absl::Status ValidateModel(const DemoModel& m) {
  if (m.num_layers < 1 || m.num_layers > static_cast<int>(kernels::kMaxLayers)) {
    return absl::InvalidArgumentError("layers must be in 1..1024");
  }
  if (m.num_kv_heads < 1 || m.num_kv_heads > static_cast<int>(kernels::kMaxKvHeads)) {
    return absl::InvalidArgumentError("kv_heads must be in 1..256");
  }
  if (m.num_q_heads < m.num_kv_heads || m.num_q_heads % m.num_kv_heads != 0) {
    return absl::InvalidArgumentError("q_heads must be a multiple of kv_heads");
  }
  if (!kernels::IsSupportedHeadDim(m.head_dim)) {
    return absl::InvalidArgumentError("head_dim must be 64, 128 or 256");
  }
  if (m.trace_block_tokens < m.group_size() || m.trace_block_tokens % m.group_size() != 0) {
    return absl::InvalidArgumentError("trace block tokens must be a multiple of the tile size");
  }
  if (m.sink_blocks < 0 || m.max_tokens < 0) {
    return absl::InvalidArgumentError("sink_blocks and max_tokens must be >= 0");
  }
  return absl::OkStatus();
}

RequestPlan PlanRequest(const DemoModel& m, const TraceRequest& r, const std::string& ns) {
  RequestPlan p;
  const int g = m.group_size();
  const int64_t covered = static_cast<int64_t>(r.hash_ids.size()) * m.trace_block_tokens;
  int64_t tokens = std::min<int64_t>(r.input_length, covered);
  if (m.max_tokens > 0) tokens = std::min<int64_t>(tokens, m.max_tokens);
  p.tokens = static_cast<int>(tokens);
  p.full_blocks = p.tokens / g;
  p.tail_tokens = p.tokens % g;
  const int num_hash = (p.tokens + m.trace_block_tokens - 1) / m.trace_block_tokens;
  p.hash_ids.assign(r.hash_ids.begin(), r.hash_ids.begin() + num_hash);
  p.token_ids.resize(p.tokens);
  for (int t = 0; t < p.tokens; ++t) {
    const int64_t h = p.hash_ids[t / m.trace_block_tokens];
    const int64_t id = h * m.trace_block_tokens + t % m.trace_block_tokens;
    p.token_ids[t] = static_cast<int32_t>(id & 0x7fffffff);
  }
  p.chain = kernels::ChainHashes(ns, p.token_ids, g, /*include_partial=*/true);
  return p;
}

absl::StatusOr<HashBlockKv> GenerateHashBlockKv(const DemoModel& m, int64_t hash_id, int layer,
                                                bool first_in_prompt) {
  // The generator puts an attention sink at its token 0. Only the first block of a prompt
  // holds the real sink (a trace hash id always sits at the same position, so this stays a
  // function of the hash id): other blocks drop the generator's token 0.
  const int drop = first_in_prompt ? 0 : 1;
  kernels::cpu::SynthOptions o;
  o.tokens = m.trace_block_tokens + drop;
  o.num_kv_heads = m.num_kv_heads;
  o.num_q_heads = m.num_q_heads;
  o.head_dim = m.head_dim;
  o.num_queries = 1;
  o.seed = static_cast<uint64_t>(hash_id) * 1000003ull + static_cast<uint64_t>(layer) + 1;
  KVTIER_ASSIGN_OR_RETURN(kernels::cpu::SynthKv kv, kernels::cpu::GenerateSynthKv(o));
  HashBlockKv out;
  const size_t skip = static_cast<size_t>(drop) * m.num_kv_heads * m.head_dim;
  out.k.assign(kv.k.begin() + skip, kv.k.end());
  out.v.assign(kv.v.begin() + skip, kv.v.end());
  out.q = std::move(kv.q);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> BuildBlockPayload(const DemoModel& m, const RequestPlan& p,
                                                       int block, const KvSource& kv) {
  if (block < 0 || block >= p.num_blocks()) {
    return absl::InvalidArgumentError("block index out of range");
  }
  const int g = m.group_size();
  const int n = p.BlockTokens(block, g);
  const bool tail = block >= p.full_blocks;
  const bool sink = !tail && block < m.sink_blocks;
  PayloadHeader h;
  if (tail || sink) {
    const uint8_t flags = static_cast<uint8_t>((block == 0 ? kernels::kFlagSink : 0) |
                                               (tail ? kernels::kFlagTail : 0));
    h = kernels::MakeFp16Header(m.preset, m.head_dim, m.num_layers, m.num_kv_heads, n, flags);
  } else {
    h = kernels::MakeTilesHeader(m.preset, m.head_dim, m.num_layers, m.num_kv_heads);
  }
  std::vector<uint8_t> bytes(h.total_bytes());
  kernels::EncodeHeader(h, bytes.data());
  const kernels::TileLayout layout = kernels::MakeTileLayout(m.preset, m.head_dim);
  const int first = block * g;
  const int hash_index = first / m.trace_block_tokens;
  const size_t row = static_cast<size_t>(m.num_kv_heads) * m.head_dim;
  const size_t offset = static_cast<size_t>(first % m.trace_block_tokens) * row;
  for (int l = 0; l < m.num_layers; ++l) {
    KVTIER_ASSIGN_OR_RETURN(const HashBlockKv* src, kv(hash_index, l));
    uint8_t* section = bytes.data() + kernels::kPayloadHeaderBytes + l * h.layer_section_bytes;
    if (h.encoding == BlockEncoding::kFp16) {
      kernels::cpu::EncodeFp16Section(m.head_dim, m.num_kv_heads, n, src->k.data() + offset,
                                      src->v.data() + offset, reinterpret_cast<uint16_t*>(section));
    } else {
      KVTIER_ASSIGN_OR_RETURN(
          std::vector<uint8_t> tiles,
          kernels::cpu::EncodeTiles(layout, m.num_kv_heads, g, src->k.data() + offset,
                                    src->v.data() + offset));
      if (tiles.size() != h.layer_section_bytes) {
        return absl::InternalError("tile section size mismatch");
      }
      std::memcpy(section, tiles.data(), tiles.size());
    }
  }
  kernels::SealPayload(absl::MakeSpan(bytes));
  return bytes;
}

void ExactAttention(int num_q_heads, int num_kv_heads, int head_dim, int tokens, const float* q,
                    const float* k, const float* v, std::vector<double>* out) {
  out->assign(static_cast<size_t>(num_q_heads) * head_dim, 0.0);
  const int group = num_q_heads / num_kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> scores(tokens);
  for (int hq = 0; hq < num_q_heads; ++hq) {
    const int hk = hq / group;
    const float* qh = q + static_cast<size_t>(hq) * head_dim;
    double mx = -1e300;
    for (int t = 0; t < tokens; ++t) {
      const float* kt = k + (static_cast<size_t>(t) * num_kv_heads + hk) * head_dim;
      double s = 0;
      for (int d = 0; d < head_dim; ++d) s += static_cast<double>(qh[d]) * kt[d];
      scores[t] = s * scale;
      mx = std::max(mx, scores[t]);
    }
    double sum = 0;
    for (int t = 0; t < tokens; ++t) {
      scores[t] = std::exp(scores[t] - mx);
      sum += scores[t];
    }
    double* o = out->data() + static_cast<size_t>(hq) * head_dim;
    for (int t = 0; t < tokens; ++t) {
      const double w = scores[t] / sum;
      const float* vt = v + (static_cast<size_t>(t) * num_kv_heads + hk) * head_dim;
      for (int d = 0; d < head_dim; ++d) o[d] += w * vt[d];
    }
  }
}

std::vector<double> RowRelativeErrors(const float* a, const std::vector<double>& ref, int rows,
                                      int dim) {
  std::vector<double> out(rows);
  for (int r = 0; r < rows; ++r) {
    double num = 0, den = 0;
    for (int d = 0; d < dim; ++d) {
      const double x = ref[static_cast<size_t>(r) * dim + d];
      const double e = a[static_cast<size_t>(r) * dim + d] - x;
      num += e * e;
      den += x * x;
    }
    out[r] = std::sqrt(num / std::max(den, 1e-30));
  }
  return out;
}

int FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
  }
  ::close(fd);
  return port;
}

std::string DefaultServerBinary() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) {
    buf[n] = '\0';
    std::string self(buf);
    const size_t slash = self.rfind('/');
    if (slash != std::string::npos) {
      const std::string dir = self.substr(0, slash);
      for (const char* rel : {"/../service/kvtier-server", "/kvtier-server"}) {
        const std::string candidate = dir + rel;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
      }
    }
  }
#ifdef KVTIER_SERVER_BIN
  return KVTIER_SERVER_BIN;
#else
  return "kvtier-server";
#endif
}

LocalServer::~LocalServer() { Stop(); }

absl::Status LocalServer::Start(const Options& options) {
  if (pid_ > 0) return absl::FailedPreconditionError("server already started");
  if (::access(options.binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("kvtier-server not found at ", options.binary,
                                            " (build the kvtier-server target)"));
  }
  grpc_port_ = FreeLoopbackPort();
  http_port_ = FreeLoopbackPort();
  while (http_port_ == grpc_port_ && http_port_ != 0) http_port_ = FreeLoopbackPort();
  if (grpc_port_ == 0 || http_port_ == 0) return absl::UnavailableError("no free port");
  std::vector<std::string> args = {
      options.binary,
      absl::StrCat("--listen=127.0.0.1:", grpc_port_),
      absl::StrCat("--http_port=", http_port_),
      "--ucx_port=0",
      absl::StrCat("--memory_capacity=", options.memory_capacity),
      absl::StrCat("--data_dir=", options.data_dir),
  };
  for (const auto& f : options.extra_flags) args.push_back(f);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string log = options.log_path.empty() ? "/dev/null" : options.log_path;
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // The server must not outlive this process, even when it crashes.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  pid_ = pid;
  client::ClientOptions co;
  co.endpoints = {endpoint()};
  co.timeout = absl::Seconds(1);
  co.max_attempts = 1;
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<client::Client> c, client::Client::Create(co));
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    int wstatus = 0;
    if (::waitpid(pid_, &wstatus, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::UnavailableError(
          absl::StrCat("kvtier-server exited during start (log: ", log, ")"));
    }
    auto health = c->Health();
    if (!health.empty() && health[0].second.ok()) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(50));
  }
  Stop();
  return absl::UnavailableError(
      absl::StrCat("kvtier-server not ready after 30 s (log: ", log, ")"));
}

void LocalServer::Stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  int wstatus = 0;
  while (absl::Now() < deadline) {
    if (::waitpid(pid_, &wstatus, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, &wstatus, 0);
  pid_ = -1;
}

}  // namespace kvtier::tools
