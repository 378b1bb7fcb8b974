// Test harness for the multi-process service tests: real kvtier-server processes on
// loopback with ports picked at runtime, temp directories, and random block payloads.
//
//   ServerProcess s;
//   ASSERT_TRUE(s.Start({.data_dir = dir.path()}).ok());
//   ClientOptions o; o.endpoints = {s.endpoint()};
//   ... s.Kill9(); ASSERT_TRUE(s.Restart().ok());
//
// Thread safety: ServerProcess is not thread-safe; the free functions are.
#ifndef KVTIER_TESTS_SERVICE_HARNESS_H_
#define KVTIER_TESTS_SERVICE_HARNESS_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/payload.h"

namespace kvtier::testing {

// A TCP port on 127.0.0.1 that was free a moment ago.
int FreePort();
// The first of n consecutive TCP ports on 127.0.0.1 that were free a moment ago; -1 when
// none was found.
int FreePortRange(int n);

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& text);

// One kvtier-server child process.
class ServerProcess {
 public:
  struct Options {
    std::string data_dir;                  // empty = RAM only
    std::vector<std::string> extra_flags;  // e.g. "--token_file=/x"
    bool enable_ucx = false;               // picks free ports for --ucx_port
    int ucx_workers = 2;                   // --ucx_workers (ports ucx_port .. +n-1); 0: auto
    std::string memory_capacity = "1GiB";
  };
  ServerProcess() = default;
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Picks free ports, starts the binary, waits for /readyz (up to 20 s).
  absl::Status Start(const Options& options);
  // Starts again with the same options and ports (after Kill9 or Terminate).
  absl::Status Restart();
  // SIGKILL and reap.
  void Kill9();
  // SIGTERM, wait (up to `timeout`); returns the exit code (or -signal).
  absl::StatusOr<int> Terminate(absl::Duration timeout = absl::Seconds(30));
  // SIGSTOP / SIGCONT.
  void Pause();
  void Resume();

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  int ucx_port() const { return ucx_port_; }
  // GET http://127.0.0.1:<http_port><path>; kUnavailable on connection failure.
  absl::StatusOr<std::pair<int, std::string>> HttpGet(const std::string& path) const;
  // Resident set size of the process in KiB (from /proc), -1 when unknown.
  long RssKiB() const;
  const std::string& log_path() const { return log_path_; }

 private:
  absl::Status Spawn();
  Options options_;
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  int http_port_ = 0;
  int ucx_port_ = 0;
  std::string log_path_;
};

// A valid k4v2_g128 (head_dim 128) block payload of about `approx_bytes` with random body
// bytes from `seed`: the fewest KV heads (power of two) that keep layers <= 1024; layers
// rounded to the nearest.
std::vector<uint8_t> MakePayload(size_t approx_bytes, uint64_t seed);
// `n` random 32-byte hashes.
std::vector<kernels::ChainHash> RandomChain(size_t n, uint64_t seed);

// Path of the kvtier-server binary under test ($KVTIER_SERVER_BIN overrides it).
const char* ServerBinary();

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_SERVICE_HARNESS_H_
