// A loopback TCP proxy for fault injection: forwards, stalls (holds every byte) or drops
// (closes every connection) on command. Used between a client and a kvtier-server.
//
//   TcpProxy p;
//   ASSERT_TRUE(p.Start(server.grpc_port()).ok());   // clients dial 127.0.0.1:p.port()
//   p.set_mode(TcpProxy::Mode::kStall);
//
// Thread safety: set_mode may be called from any thread.
#ifndef KVTIER_TESTS_SERVICE_TCP_PROXY_H_
#define KVTIER_TESTS_SERVICE_TCP_PROXY_H_

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace kvtier::testing {

class TcpProxy {
 public:
  enum class Mode { kForward, kStall, kDrop };
  TcpProxy() = default;
  ~TcpProxy();
  absl::Status Start(int target_port);
  int port() const { return port_; }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }
  void set_mode(Mode m) { mode_ = m; }
  // Flips the lowest bit of the byte at this offset of every later connection's
  // server-to-client stream (0: none), e.g. inside a Get payload.
  void set_corrupt_offset(uint64_t offset) { corrupt_offset_ = offset; }

 private:
  void AcceptLoop();
  void Pump(int client_fd);
  int target_port_ = 0;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<Mode> mode_{Mode::kForward};
  std::atomic<uint64_t> corrupt_offset_{0};
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::vector<std::thread> pumps_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_SERVICE_TCP_PROXY_H_
