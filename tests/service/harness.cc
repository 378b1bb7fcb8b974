#include "tests/service/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace kvtier::testing {

const char* ServerBinary() {
  // $KVTIER_SERVER_BIN overrides the build's binary (e.g. a relocated benchmark bundle).
  const char* env = std::getenv("KVTIER_SERVER_BIN");
  return env != nullptr && *env != '\0' ? env : KVTIER_SERVER_BIN;
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  close(fd);
  return port;
}

int FreePortRange(int n) {
  for (int attempt = 0; attempt < 50; ++attempt) {
    const int base = FreePort();
    if (base <= 0 || base + n - 1 > 65535) continue;
    std::vector<int> fds;
    bool ok = true;
    for (int i = 0; i < n && ok; ++i) {
      const int fd = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(base + i));
      ok = fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
      if (fd >= 0) fds.push_back(fd);
    }
    for (int fd : fds) close(fd);
    if (ok) return base;
  }
  return -1;
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/kvtier_test_XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) != nullptr) path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path_.empty()) std::filesystem::remove_all(path_, ec);
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Kill9();
  if (!log_path_.empty()) unlink(log_path_.c_str());
}

absl::Status ServerProcess::Start(const Options& options) {
  options_ = options;
  char tmpl[] = "/tmp/kvtier_server_log_XXXXXX";
  const int fd = mkstemp(tmpl);
  if (fd >= 0) close(fd);
  log_path_ = tmpl;
  // A free port found here can be taken by another test process before the server binds
  // it; a server that exits at start is retried on fresh ports.
  absl::Status st;
  for (int attempt = 0; attempt < 3; ++attempt) {
    grpc_port_ = FreePort();
    http_port_ = FreePort();
    ucx_port_ =
        options.enable_ucx ? FreePortRange(options.ucx_workers > 0 ? options.ucx_workers : 8) : 0;
    st = Spawn();
    if (st.code() != absl::StatusCode::kUnavailable) return st;
  }
  return st;
}

absl::Status ServerProcess::Restart() {
  if (pid_ > 0) return absl::FailedPreconditionError("still running");
  return Spawn();
}

absl::Status ServerProcess::Spawn() {
  std::vector<std::string> args = {
      ServerBinary(),
      absl::StrCat("--listen=127.0.0.1:", grpc_port_),
      absl::StrCat("--http_port=", http_port_),
      absl::StrCat("--ucx_port=", ucx_port_),
      absl::StrCat("--ucx_workers=", options_.ucx_workers),
      absl::StrCat("--memory_capacity=", options_.memory_capacity),
      absl::StrCat("--data_dir=", options_.data_dir),
      "--drain_timeout=5s",
  };
  args.insert(args.end(), options_.extra_flags.begin(), options_.extra_flags.end());
  const pid_t parent = ::getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // The server must not outlive this process, even when it crashes.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);
    const int log = open(log_path_.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (log >= 0) {
      dup2(log, 1);
      dup2(log, 2);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  pid_ = pid;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      std::ifstream in(log_path_);
      std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      return absl::UnavailableError(absl::StrCat("kvtier-server exited at start: ", log));
    }
    auto r = HttpGet("/readyz");
    if (r.ok() && r->first == 200) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(20));
  }
  Kill9();
  return absl::DeadlineExceededError("kvtier-server did not become ready");
}

void ServerProcess::Kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

absl::StatusOr<int> ServerProcess::Terminate(absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError("not running");
  kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return -WTERMSIG(status);
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  Kill9();
  return absl::DeadlineExceededError("kvtier-server did not exit after SIGTERM");
}

void ServerProcess::Pause() {
  if (pid_ <= 0) return;
  kill(pid_, SIGSTOP);
  // kill() returns before the stop takes effect; wait until /proc says "T (stopped)".
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline) {
    std::ifstream in(absl::StrCat("/proc/", pid_, "/stat"));
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t paren = stat.rfind(')');
    if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'T') return;
    absl::SleepFor(absl::Milliseconds(1));
  }
}
void ServerProcess::Resume() {
  if (pid_ > 0) kill(pid_, SIGCONT);
}

absl::StatusOr<std::pair<int, std::string>> ServerProcess::HttpGet(const std::string& path) const {
  httplib::Client c("127.0.0.1", http_port_);
  c.set_connection_timeout(1, 0);
  c.set_read_timeout(5, 0);
  auto res = c.Get(path.c_str());
  if (!res) return absl::UnavailableError(absl::StrCat("GET ", path, " failed"));
  return std::make_pair(res->status, res->body);
}

long ServerProcess::RssKiB() const {
  if (pid_ <= 0) return -1;
  std::ifstream in(absl::StrCat("/proc/", pid_, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

namespace {
uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

std::vector<uint8_t> MakePayload(size_t approx_bytes, uint64_t seed) {
  // The fewest heads (a power of two) that keep the layer count within 1024.
  int heads = 1;
  while (approx_bytes / (size_t{13824} * heads) > 1024 && heads < 256) heads *= 2;
  const size_t section = size_t{13824} * heads;
  int layers = static_cast<int>((approx_bytes + section / 2) / section);
  layers = std::max(1, std::min(layers, 1024));
  kernels::PayloadHeader h =
      kernels::MakeTilesHeader(kernels::Preset::kK4V2G128, 128, layers, heads);
  std::vector<uint8_t> bytes(kernels::kPayloadHeaderBytes + h.layer_section_bytes * layers);
  h.body_bytes = h.layer_section_bytes * layers;
  kernels::EncodeHeader(h, bytes.data());
  uint64_t state = seed * 0x2545F4914F6CDD1Dull + 1;
  for (size_t i = kernels::kPayloadHeaderBytes; i + 8 <= bytes.size(); i += 8) {
    const uint64_t v = SplitMix(state);
    std::memcpy(bytes.data() + i, &v, 8);
  }
  kernels::SealPayload(absl::MakeSpan(bytes));
  return bytes;
}

std::vector<kernels::ChainHash> RandomChain(size_t n, uint64_t seed) {
  std::vector<kernels::ChainHash> out(n);
  uint64_t state = seed ^ 0xC0FFEEull;
  for (auto& h : out) {
    for (size_t i = 0; i < h.size(); i += 8) {
      const uint64_t v = SplitMix(state);
      std::memcpy(h.data() + i, &v, 8);
    }
  }
  return out;
}

}  // namespace kvtier::testing
