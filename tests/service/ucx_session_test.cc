// UCX sessions: opened through the authenticated OpenUcxSession gRPC call, every UCX
// request carries the session token, which grants exactly the caller's rights.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

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

constexpr char kNsA[] = "tenantA/m/k4v2_g128/tp0";
constexpr char kNsB[] = "tenantB/m/k4v2_g128/tp0";

class UcxSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(dir_.File("tokens"), "writer-a rw tenantA/\nreader-a r tenantA/\n");
    ServerProcess::Options o;
    o.enable_ucx = true;
    o.extra_flags = {"--token_file=" + dir_.File("tokens"), "--ucx_session_ttl=2s"};
    ASSERT_TRUE(server_.Start(o).ok());
  }
  std::unique_ptr<Client> NewClient(const std::string& token) {
    ClientOptions o;
    o.endpoints = {server_.endpoint()};
    o.transport = TransportKind::kUcx;
    o.token = token;
    o.timeout = absl::Seconds(5);
    o.max_attempts = 1;
    return *Client::Create(o);
  }
  TempDir dir_;
  ServerProcess server_;
};

TEST_F(UcxSessionTest, SessionsCarryTheCallersRights) {
  const auto chain = RandomChain(2, 1);
  auto p0 = MakePayload(100000, 1), p1 = MakePayload(100000, 2);
  std::vector<PutItem> items = {{chain[0], p0}, {chain[1], p1}};

  EXPECT_EQ(NewClient("")->Put(kNsA, 0, items).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(NewClient("bogus")->Put(kNsA, 0, items).status().code(),
            absl::StatusCode::kUnauthenticated);
  auto reader = NewClient("reader-a");
  EXPECT_EQ(reader->Put(kNsA, 0, items).status().code(), absl::StatusCode::kPermissionDenied);
  auto writer = NewClient("writer-a");
  EXPECT_EQ(writer->Put(kNsB, 0, items).status().code(), absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(writer->Put(kNsA, 0, items).ok());
  EXPECT_EQ(*reader->Lookup(kNsA, 0, chain), 2u);
  auto got = reader->Get(kNsA, 0, chain);
  ASSERT_TRUE(got[1].hit) << got[1].status;
  EXPECT_EQ(got[1].payload, p1);
  EXPECT_EQ(reader->Delete(kNsA, 0, chain).status().code(), absl::StatusCode::kPermissionDenied);

  // Sessions expire (--ucx_session_ttl=2s); the client opens a new one transparently.
  absl::SleepFor(absl::Seconds(2.5));
  EXPECT_EQ(*reader->Lookup(kNsA, 0, chain), 2u);

  // The UCX requests show up under transport="ucx".
  auto m = server_.HttpGet("/metrics");
  ASSERT_TRUE(m.ok());
  EXPECT_NE(m->second.find("kvtier_requests_total{method=\"Put\",transport=\"ucx\",code=\"OK\"}"),
            std::string::npos)
      << m->second;
  EXPECT_NE(
      m->second.find(
          "kvtier_requests_total{method=\"Put\",transport=\"ucx\",code=\"PERMISSION_DENIED\"}"),
      std::string::npos);
  EXPECT_NE(
      m->second.find(
          "kvtier_lookup_requests_total{namespace=\"tenantA/m/k4v2_g128/tp0\",transport=\"ucx\"}"),
      std::string::npos);
  EXPECT_NE(m->second.find("kvtier_transfer_bytes_total{transport=\"ucx\",direction=\"in\"}"),
            std::string::npos);
}

TEST_F(UcxSessionTest, ForgedOrMissingSessionTokensAreUnauthenticated) {
  // Straight to the UCX port with a made-up token: every request is refused.
  auto conn = client::UcxConnection::Connect("127.0.0.1", static_cast<uint16_t>(server_.ucx_port()),
                                             std::string(32, 'x'), absl::Seconds(5));
  ASSERT_TRUE(conn.ok()) << conn.status();
  const auto chain = RandomChain(1, 3);
  EXPECT_EQ((*conn)->Lookup(kNsA, 0, chain).status().code(), absl::StatusCode::kUnauthenticated);
  auto payload = MakePayload(50000, 3);
  EXPECT_EQ((*conn)->Put(kNsA, chain[0], 0, payload.data(), payload.size()).status().code(),
            absl::StatusCode::kUnauthenticated);
  // OpenUcxSession itself needs a valid bearer token; a valid one gets a 32-byte session
  // token, the UCX port and an expiry.
  auto stub = v1::KvTier::NewStub(
      grpc::CreateChannel(server_.endpoint(), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext ctx;
    v1::OpenUcxSessionResponse resp;
    EXPECT_EQ(stub->OpenUcxSession(&ctx, {}, &resp).error_code(), grpc::UNAUTHENTICATED);
  }
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer writer-a");
  v1::OpenUcxSessionResponse resp;
  ASSERT_TRUE(stub->OpenUcxSession(&ctx, {}, &resp).ok());
  EXPECT_EQ(resp.session_token().size(), 32u);
  // One of the server's UCX workers (the harness starts two, on consecutive ports).
  EXPECT_GE(static_cast<int>(resp.ucx_port()), server_.ucx_port());
  EXPECT_LT(static_cast<int>(resp.ucx_port()), server_.ucx_port() + 2);
  EXPECT_GT(resp.expires_unix_ms(), static_cast<uint64_t>(absl::ToUnixMillis(absl::Now())));
  auto ok = client::UcxConnection::Connect("127.0.0.1", static_cast<uint16_t>(resp.ucx_port()),
                                           resp.session_token(), absl::Seconds(5));
  ASSERT_TRUE(ok.ok());
  auto put = (*ok)->Put(kNsA, chain[0], 0, payload.data(), payload.size());
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(*put, v1::PutResponse::STORED);
}

}  // namespace
}  // namespace kvtier::testing
