#include "tests/service/tcp_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace kvtier::testing {

TcpProxy::~TcpProxy() {
  stop_ = true;
  if (acceptor_.joinable()) acceptor_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  std::vector<std::thread> pumps;
  {
    absl::MutexLock l(&mu_);
    pumps.swap(pumps_);
  }
  for (auto& t : pumps) t.join();
}

absl::Status TcpProxy::Start(int target_port) {
  target_port_ = target_port;
  listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      listen(listen_fd_, 64) != 0) {
    return absl::UnavailableError("proxy cannot listen");
  }
  socklen_t len = sizeof(a);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  acceptor_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void TcpProxy::AcceptLoop() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    const int fd = accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    if (mode_ == Mode::kDrop) {
      close(fd);
      continue;
    }
    absl::MutexLock l(&mu_);
    pumps_.emplace_back([this, fd] { Pump(fd); });
  }
}

void TcpProxy::Pump(int client_fd) {
  const int server_fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(target_port_));
  if (connect(server_fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(client_fd);
    close(server_fd);
    return;
  }
  int one = 1;
  setsockopt(server_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(client_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::vector<char> buf(1 << 16);
  const uint64_t corrupt_at = corrupt_offset_;
  uint64_t down = 0;  // server-to-client bytes forwarded so far
  while (!stop_) {
    const Mode m = mode_;
    if (m == Mode::kDrop) break;
    if (m == Mode::kStall) {
      usleep(5000);
      continue;
    }
    pollfd p[2] = {{client_fd, POLLIN, 0}, {server_fd, POLLIN, 0}};
    if (poll(p, 2, 20) <= 0) continue;
    bool closed = false;
    for (int i = 0; i < 2 && !closed; ++i) {
      if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const int from = i == 0 ? client_fd : server_fd;
      const int to = i == 0 ? server_fd : client_fd;
      const ssize_t n = read(from, buf.data(), buf.size());
      if (n <= 0) {
        closed = true;
        break;
      }
      if (i == 1) {
        if (corrupt_at > 0 && corrupt_at >= down && corrupt_at < down + static_cast<uint64_t>(n)) {
          buf[corrupt_at - down] ^= 0x01;
        }
        down += static_cast<uint64_t>(n);
      }
      for (ssize_t off = 0; off < n;) {
        const ssize_t w = write(to, buf.data() + off, static_cast<size_t>(n - off));
        if (w <= 0) {
          if (errno == EINTR) continue;
          closed = true;
          break;
        }
        off += w;
      }
    }
    if (closed) break;
  }
  close(client_fd);
  close(server_fd);
}

}  // namespace kvtier::testing
