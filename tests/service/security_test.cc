// Bearer tokens, TLS and mutual TLS against real kvtier-server processes. Certificates are
// generated at test time with the openssl CLI.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "kvtier/v1/kvtier.grpc.pb.h"
#include "tests/service/harness.h"

namespace kvtier::testing {
namespace {

using client::Client;
using client::ClientOptions;
using client::PutItem;

constexpr char kNsA[] = "tenantA/m/k4v2_g128/tp0";
constexpr char kNsB[] = "tenantB/m/k4v2_g128/tp0";

int Sh(const std::string& cmd) {
  const int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// CA, server cert (SAN 127.0.0.1, localhost), a trusted client cert, and a client cert
// from an unrelated CA.
void MakeCerts(const TempDir& d) {
  const std::string p = d.path() + "/";
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  ASSERT_EQ(Sh("openssl req -x509 " + ec + " -keyout " + p + "ca.key -out " + p +
               "ca.pem -days 2 -subj /CN=kvtier-test-ca"),
            0);
  ASSERT_EQ(Sh("openssl req -x509 " + ec + " -keyout " + p + "evil-ca.key -out " + p +
               "evil-ca.pem -days 2 -subj /CN=untrusted-ca"),
            0);
  WriteFile(p + "server.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  WriteFile(p + "client.ext", "extendedKeyUsage=clientAuth\n");
  auto issue = [&](const std::string& name, const std::string& ca, const std::string& ext) {
    ASSERT_EQ(Sh("openssl req -new " + ec + " -keyout " + p + name + ".key -out " + p + name +
                 ".csr -subj /CN=" + name),
              0);
    ASSERT_EQ(Sh("openssl x509 -req -in " + p + name + ".csr -CA " + p + ca + ".pem -CAkey " + p +
                 ca + ".key -CAcreateserial -days 2 -out " + p + name + ".pem -extfile " + p + ext),
              0);
  };
  issue("server", "ca", "server.ext");
  issue("client", "ca", "client.ext");
  issue("intruder", "evil-ca", "client.ext");
}

class SecurityTest : public ::testing::Test {
 protected:
  std::unique_ptr<Client> NewClient(const ServerProcess& s, ClientOptions o) {
    o.endpoints = {s.endpoint()};
    o.timeout = absl::Seconds(3);
    o.max_attempts = 1;
    auto c = Client::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }
  TempDir dir_;
};

TEST_F(SecurityTest, BearerTokensMapToNamespacePrefixesAndRights) {
  WriteFile(dir_.File("tokens"),
            "# test tokens\n"
            "writer-a rw tenantA/\n"
            "reader-a r  tenantA/\n"
            "admin    rw *\n");
  ServerProcess s;
  ServerProcess::Options so;
  so.extra_flags = {"--token_file=" + dir_.File("tokens")};
  ASSERT_TRUE(s.Start(so).ok());
  const auto chain = RandomChain(3, 1);
  std::vector<std::vector<uint8_t>> payloads = {MakePayload(20000, 1), MakePayload(20000, 2),
                                                MakePayload(20000, 3)};
  std::vector<PutItem> items;
  for (int i = 0; i < 3; ++i) items.push_back({chain[i], payloads[i]});

  ClientOptions none;
  auto anon = NewClient(s, none);
  EXPECT_EQ(anon->Put(kNsA, 0, items).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(anon->Lookup(kNsA, 0, chain).status().code(), absl::StatusCode::kUnauthenticated);
  auto anon_get = anon->Get(kNsA, 0, chain);
  EXPECT_FALSE(anon_get[0].hit);
  EXPECT_EQ(anon_get[0].status.code(), absl::StatusCode::kUnauthenticated);

  ClientOptions wrong;
  wrong.token = "not-a-token";
  EXPECT_EQ(NewClient(s, wrong)->Lookup(kNsA, 0, chain).status().code(),
            absl::StatusCode::kUnauthenticated);

  ClientOptions reader;
  reader.token = "reader-a";
  auto r = NewClient(s, reader);
  EXPECT_EQ(r->Put(kNsA, 0, items).status().code(), absl::StatusCode::kPermissionDenied);

  ClientOptions writer;
  writer.token = "writer-a";
  auto w = NewClient(s, writer);
  EXPECT_EQ(w->Put(kNsB, 0, items).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(w->Lookup(kNsB, 0, chain).status().code(), absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(w->Put(kNsA, 0, items).ok());

  // Nothing reached tenantB; the reader sees tenantA's blocks.
  ClientOptions admin;
  admin.token = "admin";
  EXPECT_EQ(*NewClient(s, admin)->Lookup(kNsB, 0, chain), 0u);
  EXPECT_EQ(*r->Lookup(kNsA, 0, chain), 3u);
  auto got = r->Get(kNsA, 0, chain);
  EXPECT_TRUE(got[2].hit);
  EXPECT_EQ(got[2].payload, payloads[2]);
  EXPECT_EQ(r->Delete(kNsA, 0, chain).status().code(), absl::StatusCode::kPermissionDenied);

  // OpenUcxSession is authenticated like any call.
  auto channel = grpc::CreateChannel(s.endpoint(), grpc::InsecureChannelCredentials());
  auto stub = v1::KvTier::NewStub(channel);
  {
    grpc::ClientContext ctx;
    v1::OpenUcxSessionResponse resp;
    EXPECT_EQ(stub->OpenUcxSession(&ctx, {}, &resp).error_code(), grpc::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer reader-a");
    v1::OpenUcxSessionResponse resp;
    // This server runs without UCX (--ucx_port=0).
    EXPECT_EQ(stub->OpenUcxSession(&ctx, {}, &resp).error_code(), grpc::FAILED_PRECONDITION);
  }
  // The server still serves after all the rejections.
  auto ok = s.HttpGet("/metrics");
  ASSERT_TRUE(ok.ok());
  EXPECT_NE(
      ok->second.find(
          "kvtier_requests_total{method=\"Put\",transport=\"grpc\",code=\"PERMISSION_DENIED\"} 2"),
      std::string::npos);
  EXPECT_NE(ok->second.find("code=\"UNAUTHENTICATED\""), std::string::npos);
}

TEST_F(SecurityTest, TlsServerAcceptsOnlyTlsClientsThatTrustItsCa) {
  MakeCerts(dir_);
  ServerProcess s;
  ServerProcess::Options so;
  so.extra_flags = {"--tls_cert=" + dir_.File("server.pem"),
                    "--tls_key=" + dir_.File("server.key")};
  ASSERT_TRUE(s.Start(so).ok());
  const auto chain = RandomChain(2, 5);
  auto payload = MakePayload(30000, 5);
  std::vector<PutItem> items = {{chain[0], payload}};

  ClientOptions tls;
  tls.tls = true;
  tls.tls_ca_file = dir_.File("ca.pem");
  auto c = NewClient(s, tls);
  auto put = c->Put(kNsA, 0, items);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(*c->Lookup(kNsA, 0, chain), 1u);
  EXPECT_EQ(c->Get(kNsA, 0, chain)[0].payload, payload);

  ClientOptions plaintext;
  EXPECT_EQ(NewClient(s, plaintext)->Put(kNsA, 0, items).status().code(),
            absl::StatusCode::kUnavailable);
  ClientOptions wrong_ca;
  wrong_ca.tls = true;
  wrong_ca.tls_ca_file = dir_.File("evil-ca.pem");
  EXPECT_EQ(NewClient(s, wrong_ca)->Put(kNsA, 0, items).status().code(),
            absl::StatusCode::kUnavailable);

  // The admin CLI speaks TLS too.
  const std::string cli = std::string(KVTIER_CLI_BIN) + " health --endpoints=" + s.endpoint() +
                          " --tls=" + dir_.File("ca.pem");
  EXPECT_EQ(Sh(cli), 0) << cli;
  EXPECT_NE(
      Sh(std::string(KVTIER_CLI_BIN) + " health --timeout_ms=2000 --endpoints=" + s.endpoint()), 0);
}

TEST_F(SecurityTest, MutualTlsRejectsMissingAndUntrustedClientCertificates) {
  MakeCerts(dir_);
  ServerProcess s;
  ServerProcess::Options so;
  so.extra_flags = {"--tls_cert=" + dir_.File("server.pem"), "--tls_key=" + dir_.File("server.key"),
                    "--tls_client_ca=" + dir_.File("ca.pem")};
  ASSERT_TRUE(s.Start(so).ok());
  const auto chain = RandomChain(1, 9);
  auto payload = MakePayload(30000, 9);
  std::vector<PutItem> items = {{chain[0], payload}};

  ClientOptions trusted;
  trusted.tls = true;
  trusted.tls_ca_file = dir_.File("ca.pem");
  trusted.tls_cert_file = dir_.File("client.pem");
  trusted.tls_key_file = dir_.File("client.key");
  auto ok = NewClient(s, trusted)->Put(kNsA, 0, items);
  ASSERT_TRUE(ok.ok()) << ok.status();

  ClientOptions no_cert;
  no_cert.tls = true;
  no_cert.tls_ca_file = dir_.File("ca.pem");
  // For Lookup an unreachable shard is a miss (OK, 0 blocks), never a hit.
  auto lookup = NewClient(s, no_cert)->Lookup(kNsA, 0, chain);
  ASSERT_TRUE(lookup.ok()) << lookup.status();
  EXPECT_EQ(*lookup, 0u);
  EXPECT_EQ(NewClient(s, no_cert)->Put(kNsA, 0, items).status().code(),
            absl::StatusCode::kUnavailable);

  ClientOptions intruder = trusted;
  intruder.tls_cert_file = dir_.File("intruder.pem");
  intruder.tls_key_file = dir_.File("intruder.key");
  EXPECT_EQ(NewClient(s, intruder)->Put(kNsA, 0, items).status().code(),
            absl::StatusCode::kUnavailable);
  auto got = NewClient(s, intruder)->Get(kNsA, 0, chain);
  EXPECT_FALSE(got[0].hit);
  EXPECT_EQ(got[0].status.code(), absl::StatusCode::kUnavailable);
  // The trusted client still reads the block.
  EXPECT_EQ(NewClient(s, trusted)->Get(kNsA, 0, chain)[0].payload, payload);
}

}  // namespace
}  // namespace kvtier::testing
