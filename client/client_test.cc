// kvtier::Client over in-process transports (the Transport seam): placement, prefix
// combination across shards, retries, and validation of received payloads.
#include "client/client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/strings/match.h"

namespace kvtier::client {
namespace {

std::vector<uint8_t> Payload(uint64_t seed, int layers = 2) {
  kernels::PayloadHeader h = kernels::MakeTilesHeader(kernels::Preset::kK4V2G64, 64, layers, 1);
  std::vector<uint8_t> b(kernels::kPayloadHeaderBytes + h.layer_section_bytes * layers);
  h.body_bytes = h.layer_section_bytes * layers;
  kernels::EncodeHeader(h, b.data());
  for (size_t i = kernels::kPayloadHeaderBytes; i < b.size(); ++i) {
    b[i] = static_cast<uint8_t>((seed * 131 + i * 7) >> 3);
  }
  kernels::SealPayload(absl::MakeSpan(b));
  return b;
}

ChainHash Hash(int i) {
  ChainHash h{};
  h[0] = static_cast<uint8_t>(i);
  h[1] = static_cast<uint8_t>(i >> 8);
  h[31] = 0xAB;
  return h;
}

// An in-memory server behind the Transport interface, with fault switches.
class MemoryTransport : public Transport {
 public:
  explicit MemoryTransport(std::string name) : name_(std::move(name)) {}
  const std::string& endpoint() const override { return name_; }
  absl::string_view kind() const override { return "memory"; }

  absl::StatusOr<uint32_t> Lookup(absl::string_view ns, uint32_t part,
                                  absl::Span<const ChainHash> chain, uint32_t,
                                  absl::Time) override {
    if (absl::Status s = Fault(); !s.ok()) return s;
    std::lock_guard<std::mutex> l(mu_);
    uint32_t n = 0;
    for (const auto& h : chain) {
      if (!blocks_.count(Key(ns, h, part))) break;
      ++n;
    }
    return n;
  }
  absl::StatusOr<std::vector<PutOutcome>> Put(absl::string_view ns, uint32_t part,
                                              absl::Span<const PutItem> blocks,
                                              absl::Time) override {
    if (absl::Status s = Fault(); !s.ok()) return s;
    std::lock_guard<std::mutex> l(mu_);
    std::vector<PutOutcome> out;
    for (const auto& b : blocks) {
      auto [it, inserted] = blocks_.emplace(
          Key(ns, b.hash, part), std::vector<uint8_t>(b.payload.begin(), b.payload.end()));
      out.push_back(inserted ? PutOutcome::kStored : PutOutcome::kDeduplicated);
    }
    return out;
  }
  absl::StatusOr<std::vector<BlockResult>> Get(absl::string_view ns, uint32_t part,
                                               absl::Span<const ChainHash> chain,
                                               absl::Time) override {
    if (absl::Status s = Fault(); !s.ok()) return s;
    std::lock_guard<std::mutex> l(mu_);
    std::vector<BlockResult> out(chain.size());
    for (size_t i = 0; i < chain.size(); ++i) {
      auto it = blocks_.find(Key(ns, chain[i], part));
      if (it == blocks_.end()) continue;
      out[i].hit = true;
      out[i].tier = Tier::kMemory;
      out[i].payload = it->second;
      if (corrupt_) out[i].payload[out[i].payload.size() / 2] ^= 0x01;
    }
    return out;
  }
  absl::StatusOr<uint32_t> Delete(absl::string_view ns, uint32_t part,
                                  absl::Span<const ChainHash> chain, absl::Time) override {
    std::lock_guard<std::mutex> l(mu_);
    uint32_t n = 0;
    for (const auto& h : chain) n += static_cast<uint32_t>(blocks_.erase(Key(ns, h, part)));
    return n;
  }
  absl::StatusOr<v1::StatsResponse> Stats(absl::Time) override { return v1::StatsResponse(); }
  absl::Status Health(absl::Time) override { return Fault(); }

  size_t size() {
    std::lock_guard<std::mutex> l(mu_);
    return blocks_.size();
  }
  std::atomic<int> fail_next{0};      // this many calls return UNAVAILABLE
  std::atomic<bool> down{false};      // every call returns UNAVAILABLE
  std::atomic<bool> corrupt_{false};  // Get flips a byte of every payload
  std::atomic<bool> deny{false};      // every call returns PERMISSION_DENIED
  std::atomic<int> calls{0};

 private:
  absl::Status Fault() {
    ++calls;
    if (deny) return absl::PermissionDeniedError("no");
    if (down) return absl::UnavailableError("down");
    if (fail_next > 0) {
      --fail_next;
      return absl::UnavailableError("flaky");
    }
    return absl::OkStatus();
  }
  static std::string Key(absl::string_view ns, const ChainHash& h, uint32_t part) {
    return std::string(ns) + std::string(reinterpret_cast<const char*>(h.data()), h.size()) +
           std::to_string(part);
  }
  const std::string name_;
  std::mutex mu_;
  std::map<std::string, std::vector<uint8_t>> blocks_;
};

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::unique_ptr<Transport>> ts;
    for (int i = 0; i < 4; ++i) {
      auto t = std::make_unique<MemoryTransport>("10.0.0." + std::to_string(i) + ":50051");
      shards_.push_back(t.get());
      ts.push_back(std::move(t));
    }
    ClientOptions o;
    o.initial_backoff = absl::Milliseconds(1);
    o.max_attempts = 3;
    client_ = *Client::CreateWithTransports(std::move(ts), o);
    for (int i = 0; i < 32; ++i) {
      chain_.push_back(Hash(i));
      payloads_.push_back(Payload(i));
    }
  }
  std::vector<PutItem> Items(size_t n) {
    std::vector<PutItem> items;
    for (size_t i = 0; i < n; ++i) items.push_back({chain_[i], payloads_[i]});
    return items;
  }
  std::vector<MemoryTransport*> shards_;
  std::unique_ptr<Client> client_;
  std::vector<ChainHash> chain_;
  std::vector<std::vector<uint8_t>> payloads_;
  const std::string ns_ = "t/m/k4v2_g64/tp0";
};

TEST_F(ClientTest, PutPlacesEachBlockOnItsRendezvousShardOnly) {
  ASSERT_TRUE(client_->Put(ns_, 0, Items(32)).ok());
  size_t total = 0;
  for (auto* s : shards_) {
    EXPECT_GT(s->size(), 0u) << s->endpoint();
    total += s->size();
  }
  EXPECT_EQ(total, 32u);
  for (int i = 0; i < 32; ++i) {
    auto got =
        shards_[client_->ShardOf(ns_, chain_[i], 0)]->Get(ns_, 0, {&chain_[i], 1}, absl::Now());
    EXPECT_TRUE((*got)[0].hit);
  }
}

TEST_F(ClientTest, RendezvousMovesOnlyTheRemovedShardsBlocks) {
  // Dropping one endpoint moves only the blocks that lived on it.
  std::vector<std::unique_ptr<Transport>> three;
  for (int i = 0; i < 3; ++i) {
    three.push_back(std::make_unique<MemoryTransport>(shards_[i]->endpoint()));
  }
  auto smaller = *Client::CreateWithTransports(std::move(three), ClientOptions());
  for (int i = 0; i < 1000; ++i) {
    const ChainHash h = Hash(i);
    const size_t before = client_->ShardOf(ns_, h, 0);
    if (before != 3) {
      EXPECT_EQ(smaller->endpoint(smaller->ShardOf(ns_, h, 0)), client_->endpoint(before));
    }
  }
}

TEST_F(ClientTest, LookupCombinesShardsToTheLeadingPrefix) {
  ASSERT_TRUE(client_->Put(ns_, 0, Items(20)).ok());
  EXPECT_EQ(*client_->Lookup(ns_, 0, chain_), 20u);
  ASSERT_EQ(*client_->Delete(ns_, 0, {&chain_[7], 1}), 1u);
  EXPECT_EQ(*client_->Lookup(ns_, 0, chain_), 7u);
  // A shard that is down is a miss from its first block of the chain on.
  shards_[client_->ShardOf(ns_, chain_[3], 0)]->down = true;
  auto n = client_->Lookup(ns_, 0, chain_);
  ASSERT_TRUE(n.ok());
  EXPECT_LE(*n, 3u);
  // A permission error is returned, not hidden as a miss.
  for (auto* s : shards_) s->deny = true;
  EXPECT_EQ(client_->Lookup(ns_, 0, chain_).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(ClientTest, RetriesUnavailableWithBackoff) {
  ASSERT_TRUE(client_->Put(ns_, 0, Items(1)).ok());
  MemoryTransport* owner = shards_[client_->ShardOf(ns_, chain_[0], 0)];
  owner->fail_next = 2;  // attempts 1 and 2 fail, 3 succeeds
  owner->calls = 0;
  auto got = client_->Get(ns_, 0, {&chain_[0], 1});
  EXPECT_TRUE(got[0].hit);
  EXPECT_EQ(owner->calls.load(), 3);
  owner->fail_next = 5;  // more failures than attempts: a miss carrying UNAVAILABLE
  got = client_->Get(ns_, 0, {&chain_[0], 1});
  EXPECT_FALSE(got[0].hit);
  EXPECT_EQ(got[0].status.code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientTest, CorruptReceivedBytesBecomeDataLossMissesNeverWrongBytes) {
  ASSERT_TRUE(client_->Put(ns_, 0, Items(32)).ok());
  MemoryTransport* bad = shards_[1];
  bad->corrupt_ = true;
  auto got = client_->Get(ns_, 0, chain_);
  int corrupt = 0;
  for (size_t i = 0; i < chain_.size(); ++i) {
    if (client_->ShardOf(ns_, chain_[i], 0) == 1) {
      EXPECT_FALSE(got[i].hit);
      EXPECT_TRUE(got[i].payload.empty());
      EXPECT_EQ(got[i].status.code(), absl::StatusCode::kDataLoss);
      ++corrupt;
    } else {
      ASSERT_TRUE(got[i].hit);
      EXPECT_EQ(got[i].payload, payloads_[i]);
    }
  }
  EXPECT_GT(corrupt, 0);
}

TEST_F(ClientTest, PutErrorsNameTheShardAndDedupIsReported) {
  auto first = client_->Put(ns_, 0, Items(8));
  ASSERT_TRUE(first.ok());
  auto second = client_->Put(ns_, 0, Items(8));
  ASSERT_TRUE(second.ok());
  for (PutOutcome o : *second) EXPECT_EQ(o, PutOutcome::kDeduplicated);
  shards_[client_->ShardOf(ns_, chain_[0], 0)]->down = true;
  auto r = client_->Put(ns_, 0, Items(8));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find(shards_[client_->ShardOf(ns_, chain_[0], 0)]->endpoint()),
            std::string::npos);
}

TEST(ClientCreateTest, DnsNameResolvesToEveryAddressAndBadInputIsRejected) {
  ClientOptions o;
  o.dns_name = "localhost:50051";
  auto c = Client::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  bool has_v4 = false;
  for (size_t i = 0; i < (*c)->num_endpoints(); ++i)
    has_v4 |= (*c)->endpoint(i) == "127.0.0.1:50051";
  EXPECT_TRUE(has_v4);
  ClientOptions none;
  EXPECT_EQ(Client::Create(none).status().code(), absl::StatusCode::kInvalidArgument);
  ClientOptions bad_dns;
  bad_dns.dns_name = "no-port";
  EXPECT_EQ(Client::Create(bad_dns).status().code(), absl::StatusCode::kInvalidArgument);
  ClientOptions unknown;
  unknown.dns_name = "no-such-host.invalid:1";
  EXPECT_EQ(Client::Create(unknown).status().code(), absl::StatusCode::kUnavailable);
  ClientOptions tls;
  tls.endpoints = {"127.0.0.1:1"};
  tls.tls = true;
  tls.tls_ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(Client::Create(tls).status().code(), absl::StatusCode::kInvalidArgument);
  // UCX Get piece sizes: 0 or 64 KiB..1 GiB.
  for (uint64_t piece : {uint64_t{0}, uint64_t{64} << 10, uint64_t{1} << 30}) {
    ClientOptions ok;
    ok.endpoints = {"127.0.0.1:1"};
    ok.ucx_get_piece_bytes = piece;
    EXPECT_TRUE(Client::Create(ok).ok()) << piece;
  }
  for (uint64_t piece : {uint64_t{1}, (uint64_t{64} << 10) - 1, (uint64_t{1} << 30) + 1}) {
    ClientOptions bad;
    bad.endpoints = {"127.0.0.1:1"};
    bad.ucx_get_piece_bytes = piece;
    auto r = Client::Create(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << piece;
    EXPECT_TRUE(absl::StrContains(r.status().message(), "ucx_get_piece_bytes")) << r.status();
  }
}

TEST(ClientCreateTest, ChainHashesPassThroughToTheKernelsHelper) {
  std::vector<int32_t> tokens(300);
  for (int i = 0; i < 300; ++i) tokens[i] = i * 3;
  auto a = Client::ChainHashes("ns", tokens, 128);
  auto b = kernels::ChainHashes("ns", tokens, 128);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a, b);
  EXPECT_EQ(Client::ChainHashes("ns", tokens, 128, /*include_partial=*/true).size(), 3u);
}

}  // namespace
}  // namespace kvtier::client
