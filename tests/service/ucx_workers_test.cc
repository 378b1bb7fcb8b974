// kvtier-server --ucx_workers: several UCX data planes (one loop thread and listener
// each, on consecutive ports) over one store. OpenUcxSession hands the workers out in
// turn; a session is valid on every worker; what one worker stores, every other serves;
// all of them drain on SIGTERM; bad worker counts and taken ports stop the start with a
// clear error.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "client/ucx/ucx_client.h"
#include "kvtier/v1/kvtier.grpc.pb.h"
#include "tests/service/harness.h"

namespace kvtier::testing {
namespace {

using client::Client;
using client::ClientOptions;
using client::PutItem;
using client::TransportKind;
using client::UcxConnection;

constexpr char kNs[] = "team/m/k4v2_g128/tp0";
constexpr int kWorkers = 3;

v1::OpenUcxSessionResponse OpenSession(const std::string& endpoint) {
  auto stub =
      v1::KvTier::NewStub(grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::OpenUcxSessionResponse resp;
  grpc::Status s = stub->OpenUcxSession(&ctx, {}, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp;
}

std::string ReadLog(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class UcxWorkersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerProcess::Options o;
    o.enable_ucx = true;
    o.ucx_workers = kWorkers;
    ASSERT_TRUE(server_.Start(o).ok());
  }
  std::unique_ptr<UcxConnection> ConnectTo(int port, const std::string& token) {
    auto c =
        UcxConnection::Connect("127.0.0.1", static_cast<uint16_t>(port), token, absl::Seconds(10));
    EXPECT_TRUE(c.ok()) << "port " << port << ": " << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }
  ServerProcess server_;
};

TEST_F(UcxWorkersTest, SessionsAreHandedToTheWorkersInTurn) {
  const int first = server_.ucx_port();
  std::vector<int> ports;
  for (int i = 0; i < 2 * kWorkers; ++i) {
    const v1::OpenUcxSessionResponse r = OpenSession(server_.endpoint());
    EXPECT_EQ(r.session_token().size(), 32u);
    ports.push_back(static_cast<int>(r.ucx_port()));
  }
  // Round robin over ucx_port .. ucx_port + workers - 1, whatever worker comes first.
  for (int i = 0; i < 2 * kWorkers; ++i) {
    EXPECT_GE(ports[i], first);
    EXPECT_LT(ports[i], first + kWorkers);
    if (i > 0) {
      EXPECT_EQ(ports[i] - first, (ports[i - 1] - first + 1) % kWorkers) << i;
    }
  }
  EXPECT_EQ(std::set<int>(ports.begin(), ports.end()).size(), static_cast<size_t>(kWorkers));
  // The server's log names the range.
  EXPECT_NE(ReadLog(server_.log_path())
                .find(absl::StrCat("UCX on ports ", first, "-", first + kWorkers - 1, " (",
                                   kWorkers, " workers)")),
            std::string::npos)
      << ReadLog(server_.log_path());
}

TEST_F(UcxWorkersTest, OneStoreBehindEveryWorkerAndOneSessionForAll) {
  const v1::OpenUcxSessionResponse session = OpenSession(server_.endpoint());
  std::vector<std::unique_ptr<UcxConnection>> conns;
  for (int w = 0; w < kWorkers; ++w) {
    conns.push_back(ConnectTo(server_.ucx_port() + w, session.session_token()));
    ASSERT_NE(conns.back(), nullptr);
  }
  // Each worker stores one block (rendezvous-sized and eager-sized); every worker finds
  // and serves all of them, byte for byte.
  const auto chain = RandomChain(kWorkers, 11);
  std::vector<std::vector<uint8_t>> payloads;
  for (int w = 0; w < kWorkers; ++w) {
    payloads.push_back(MakePayload(w == 1 ? 3000 : (1 << 20) + 4096 * w, 100 + w));
    auto put = conns[w]->Put(kNs, chain[w], 0, payloads[w].data(), payloads[w].size());
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_EQ(*put, v1::PutResponse::STORED);
  }
  for (int w = 0; w < kWorkers; ++w) {
    auto n = conns[w]->Lookup(kNs, 0, chain);
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, static_cast<uint32_t>(kWorkers)) << "worker " << w;
    auto got = conns[w]->Get(kNs, 0, chain);
    ASSERT_TRUE(got.ok()) << got.status();
    for (int b = 0; b < kWorkers; ++b) {
      ASSERT_TRUE((*got)[b].status.ok()) << (*got)[b].status;
      ASSERT_TRUE((*got)[b].payload.has_value()) << "worker " << w << " block " << b;
      EXPECT_EQ(*(*got)[b].payload, payloads[b]) << "worker " << w << " block " << b;
    }
  }
  // The same block again through another worker is deduplicated, not stored twice.
  auto again = conns[2]->Put(kNs, chain[0], 0, payloads[0].data(), payloads[0].size());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, v1::PutResponse::DEDUPLICATED);
  // A delete through one worker is seen by all.
  auto deleted = conns[1]->Delete(kNs, 0, absl::MakeConstSpan(chain).subspan(1));
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 2u);
  for (int w = 0; w < kWorkers; ++w) EXPECT_EQ(*conns[w]->Lookup(kNs, 0, chain), 1u);
}

TEST_F(UcxWorkersTest, ConcurrentClientsOverAllWorkersGetExactBytesAndTheServerDrains) {
  // Eight clients, each with its own session (so spread over the three workers), put and
  // read back their own blocks at the same time.
  constexpr int kClients = 8;
  constexpr int kBlocks = 6;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      ClientOptions o;
      o.endpoints = {server_.endpoint()};
      o.transport = TransportKind::kUcx;
      o.timeout = absl::Seconds(20);
      auto client = Client::Create(o);
      if (!client.ok()) {
        ++failures;
        return;
      }
      const auto chain = RandomChain(kBlocks, 1000 + c);
      std::vector<std::vector<uint8_t>> payloads;
      std::vector<PutItem> items;
      for (int b = 0; b < kBlocks; ++b)
        payloads.push_back(MakePayload(300000 + b * 50000, c * 97 + b));
      for (int b = 0; b < kBlocks; ++b) items.push_back({chain[b], payloads[b]});
      auto put = (*client)->Put(kNs, 0, items);
      if (!put.ok()) {
        ADD_FAILURE() << "client " << c << ": " << put.status();
        ++failures;
        return;
      }
      auto got = (*client)->Get(kNs, 0, chain);
      for (int b = 0; b < kBlocks; ++b) {
        if (!got[b].hit || got[b].payload != payloads[b]) {
          ADD_FAILURE() << "client " << c << " block " << b << ": " << got[b].status;
          ++failures;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);

  // Every worker took connections: /metrics counts the UCX puts of all of them.
  auto m = server_.HttpGet("/metrics");
  ASSERT_TRUE(m.ok());
  EXPECT_NE(m->second.find("kvtier_requests_total{method=\"Put\",transport=\"ucx\",code=\"OK\"} " +
                           std::to_string(kClients * kBlocks)),
            std::string::npos)
      << m->second;

  // Per worker: every worker received requests (the sessions went to them in turn).
  for (int w = 0; w < kWorkers; ++w) {
    const std::string series =
        absl::StrCat("kvtier_ucx_worker_requests_total{worker=\"", w, "\"} ");
    const size_t at = m->second.find(series);
    ASSERT_NE(at, std::string::npos) << series << "\n" << m->second;
    EXPECT_GT(std::stod(m->second.substr(at + series.size())), 0.0) << series;
    EXPECT_NE(m->second.find(absl::StrCat("kvtier_ucx_worker_connections{worker=\"", w, "\"} ")),
              std::string::npos);
  }
  EXPECT_EQ(m->second.find("kvtier_ucx_worker_requests_total{worker=\"3\"}"), std::string::npos);

  // SIGTERM stops every worker and exits cleanly.
  auto code = server_.Terminate();
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  const std::string log = ReadLog(server_.log_path());
  EXPECT_NE(log.find("UCX stopped in"), std::string::npos) << log;
}

TEST(UcxClientConnectionsTest, ABatchSpreadsOverConnectionsAndOneCallAtATimeUsesOne) {
  // Four workers; the next session's port tells how many sessions clients opened so far.
  constexpr int kFour = 4;
  ServerProcess server;
  ServerProcess::Options so;
  so.enable_ucx = true;
  so.ucx_workers = kFour;
  ASSERT_TRUE(server.Start(so).ok());
  auto sessions_so_far = [&] {
    return static_cast<int>(OpenSession(server.endpoint()).ucx_port()) - server.ucx_port();
  };
  ASSERT_EQ(sessions_so_far(), 0);  // this probe is session 0; the next one gets worker 1

  ClientOptions o;
  o.endpoints = {server.endpoint()};
  o.transport = TransportKind::kUcx;
  o.timeout = absl::Seconds(20);
  o.ucx_connections = 3;
  {
    // One single-block call at a time: one connection (one session) only.
    auto c = *Client::Create(o);
    const auto chain = RandomChain(5, 50);
    for (int i = 0; i < 5; ++i) {
      auto p = MakePayload(200000, 50 + i);
      ASSERT_TRUE(c->Put(kNs, 0, std::vector<PutItem>{{chain[i], p}}).ok());
    }
    EXPECT_EQ(c->Lookup(kNs, 0, chain).value_or(0), 5u);
  }
  EXPECT_EQ(sessions_so_far(), 2);  // probe, the client's one session, this probe

  // A batch of 12 blocks: spread over 3 connections (3 sessions), all exact.
  auto c = *Client::Create(o);
  const auto chain = RandomChain(12, 60);
  std::vector<std::vector<uint8_t>> payloads;
  std::vector<PutItem> items;
  for (int i = 0; i < 12; ++i) payloads.push_back(MakePayload(i % 3 == 0 ? 5000 : 900000, 60 + i));
  for (int i = 0; i < 12; ++i) items.push_back({chain[i], payloads[i]});
  auto put = c->Put(kNs, 0, items);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->size(), 12u);
  EXPECT_EQ(sessions_so_far(), (2 + 1 + 3) % kFour);  // 6 sessions before this probe
  auto got = c->Get(kNs, 0, chain);
  for (int i = 0; i < 12; ++i) {
    ASSERT_TRUE(got[i].hit) << i << ": " << got[i].status;
    EXPECT_EQ(got[i].payload, payloads[i]) << i;
  }
  // Again: every block deduplicated, through the connections already open.
  auto again = c->Put(kNs, 0, items);
  ASSERT_TRUE(again.ok()) << again.status();
  for (const auto& outcome : *again) EXPECT_EQ(outcome, client::PutOutcome::kDeduplicated);

  // A worker's connections dropped under the client (server restart): the batch retries on
  // fresh sessions and succeeds.
  server.Kill9();
  absl::Status restarted = server.Restart();
  ASSERT_TRUE(restarted.ok()) << restarted;
  auto after = c->Put(kNs, 0, items);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(c->Lookup(kNs, 0, chain).value_or(0), 12u);

  o.ucx_connections = 0;
  EXPECT_EQ(Client::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.ucx_connections = 65;
  EXPECT_EQ(Client::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(UcxWorkersFlagsTest, BadWorkerCountsAndTakenPortsStopTheStartWithAClearError) {
  struct Case {
    std::vector<std::string> flags;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--ucx_workers=-1"}, "--ucx_workers must not be negative"},
      {{"--ucx_workers=65"}, "ucx_workers must be 1..64, not 65"},
  };
  for (const Case& c : cases) {
    ServerProcess s;
    ServerProcess::Options o;
    o.enable_ucx = true;
    o.ucx_workers = 1;
    o.extra_flags = c.flags;  // later flags win over the harness's own --ucx_workers
    absl::Status st = s.Start(o);
    EXPECT_FALSE(st.ok()) << c.flags[0];
    EXPECT_NE(st.message().find(c.message), std::string::npos) << st;
  }
  {
    ServerProcess s;
    ServerProcess::Options o;
    o.enable_ucx = true;
    o.ucx_workers = 1;
    o.extra_flags = {"--ucx_port=65535", "--ucx_workers=2"};
    absl::Status st = s.Start(o);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message().find("ucx_port 65535 + 2 workers passes port 65535"), std::string::npos)
        << st;
  }
  // A port of the range held by another process: the server names the worker and the port
  // and does not start (it does not serve with fewer workers than asked for).
  const int base = FreePortRange(3);
  ASSERT_GT(base, 0);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(base + 2));
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(fd, 4), 0);
  ServerProcess s;
  ServerProcess::Options o;
  o.enable_ucx = true;
  o.ucx_workers = 1;
  o.extra_flags = {absl::StrCat("--ucx_port=", base), "--ucx_workers=3"};
  absl::Status st = s.Start(o);
  close(fd);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find(absl::StrCat("UCX data plane (worker 2 of 3, port ", base + 2, ")")),
            std::string::npos)
      << st;
}

}  // namespace
}  // namespace kvtier::testing
