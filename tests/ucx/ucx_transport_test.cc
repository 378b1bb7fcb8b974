// The UCX data plane end to end on loopback: UcxConnection <-> UcxDataPlane over a real
// TieredStore (RAM tier). Transports: $KVTIER_UCX_TEST_TLS (default "tcp").
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/ucx/ucx_client.h"
#include "gtest/gtest.h"
#include "service/ucx/ucx_server.h"
#include "storage/testing.h"
#include "tests/ucx/ucx_test_util.h"

namespace kvtier {
namespace {

using client::UcxConnection;
using client::UcxConnectionOptions;
using client::UcxGetBlock;
using client::UcxPendingPut;
using kernels::ChainHash;
using service::UcxDataPlane;
using service::UcxDataPlaneOptions;
using storage::Payload;

constexpr char kNs[] = "tenant/llama-8b/k4v2_g128/tp1";
constexpr char kWriter[] = "writer-token";  // rw on tenant/
constexpr char kReader[] = "reader-token";  // r on everything

struct Finished {
  std::string method;
  absl::StatusCode code;
  uint64_t bytes_in;
  uint64_t bytes_out;
};

// Parameter: UcxDataPlaneOptions::store_threads (0 = store calls inline on the loop thread).
class UcxTransportTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { StartServer(UcxDataPlaneOptions()); }

  // Starts the data plane (stopping the running one first) over a fresh store.
  void StartServer(UcxDataPlaneOptions o) {
    if (server_) server_->Stop();
    o.store_threads = GetParam();
    storage::TieredStoreOptions so;
    so.memory_capacity_bytes = uint64_t{1} << 30;
    auto store = storage::TieredStore::Open(so);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    service::UcxHooks hooks;
    hooks.authorize = [this](absl::string_view token, absl::string_view ns,
                             bool write) -> absl::Status {
      absl::Duration stall;
      {
        absl::MutexLock lock(&mu_);
        stall = authorize_stall_;
      }
      if (stall > absl::ZeroDuration()) absl::SleepFor(stall);
      if (token == kReader) {
        return write ? absl::PermissionDeniedError("reader-token may not write") : absl::OkStatus();
      }
      if (token == kWriter) {
        return absl::StartsWith(ns, "tenant/")
                   ? absl::OkStatus()
                   : absl::PermissionDeniedError("writer-token may only use tenant/");
      }
      return absl::UnauthenticatedError("unknown session token");
    };
    hooks.on_request = [this](absl::string_view method, absl::StatusCode code, double seconds,
                              uint64_t in, uint64_t out) {
      absl::MutexLock lock(&mu_);
      finished_.push_back({std::string(method), code, in, out});
    };
    hooks.on_lookup = [this](absl::string_view ns, uint32_t requested, uint32_t present,
                             uint32_t block_tokens) {
      absl::MutexLock lock(&mu_);
      lookups_.push_back({requested, present, block_tokens});
    };
    hooks.on_put_block = [this](absl::string_view ns, absl::string_view result) {
      absl::MutexLock lock(&mu_);
      put_results_[std::string(result)]++;
    };
    hooks.on_get_block = [this](absl::string_view tier, absl::string_view result) {
      absl::MutexLock lock(&mu_);
      get_results_[absl::StrCat(tier, "/", result)]++;
    };
    o.listen_address = "127.0.0.1";
    o.drain_timeout = absl::Seconds(10);
    o.loop = ucx_test::LoopOptions("ucx-test-srv");
    auto server = UcxDataPlane::Start(o, store_.get(), std::move(hooks));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_NE(server_->port(), 0);
  }

  void TearDown() override {
    if (server_) server_->Stop();
  }

  std::unique_ptr<UcxConnection> Connect(
      std::string token = kWriter, absl::Duration request_timeout = absl::Seconds(20),
      uint64_t get_piece_bytes = UcxConnectionOptions().get_piece_bytes) {
    UcxConnectionOptions o;
    o.loop = ucx_test::LoopOptions("ucx-test-cli");
    o.request_timeout = request_timeout;
    o.get_piece_bytes = get_piece_bytes;
    auto c = UcxConnection::Connect("127.0.0.1", server_->port(), std::move(token),
                                    absl::Seconds(10), o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  std::vector<Finished> finished() {
    absl::MutexLock lock(&mu_);
    return finished_;
  }

  absl::Mutex mu_;
  absl::Duration authorize_stall_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  std::vector<Finished> finished_ ABSL_GUARDED_BY(mu_);
  std::vector<std::array<uint32_t, 3>> lookups_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> put_results_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> get_results_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<storage::TieredStore> store_;
  std::unique_ptr<UcxDataPlane> server_;
};

ChainHash H(uint64_t i) { return storage::testing::Hash(i); }

std::string HashBytes(const ChainHash& h) {
  return std::string(reinterpret_cast<const char*>(h.data()), h.size());
}

std::string PutHeader(const std::string& token, uint64_t id, const std::string& ns,
                      const std::string& hash, uint64_t payload_bytes) {
  v1::UcxRequest r;
  r.set_session_token(token);
  r.set_request_id(id);
  r.mutable_put()->mutable_key()->set_namespace_(ns);
  r.mutable_put()->mutable_key()->set_chain_hash(hash);
  r.mutable_put()->set_payload_bytes(payload_bytes);
  return r.SerializeAsString();
}

TEST_P(UcxTransportTest, PutGetRoundTripOfLargePayloads) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  const size_t sizes[] = {256 << 10, 1 << 20, 4 << 20, 16 << 20};
  std::vector<Payload> payloads;
  std::vector<ChainHash> chain;
  for (size_t i = 0; i < 4; ++i) {
    payloads.push_back(ucx_test::PayloadOfAtLeast(100 + i, sizes[i]));
    chain.push_back(H(i));
    auto outcome = c->Put(kNs, chain[i], 1, payloads[i]->data(), payloads[i]->size());
    ASSERT_TRUE(outcome.ok()) << outcome.status();
    EXPECT_EQ(*outcome, v1::PutResponse::STORED);
  }
  auto got = c->Get(kNs, 1, chain);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const UcxGetBlock& b = (*got)[i];
    ASSERT_TRUE(b.status.ok()) << b.status;
    ASSERT_TRUE(b.payload.has_value()) << i;
    EXPECT_EQ(*b.payload, *payloads[i]) << "block " << i << " of " << payloads[i]->size();
    EXPECT_EQ(b.tier, v1::TIER_MEMORY);
  }
  // The large payloads went over rendezvous (pulled by the server into its own buffer).
  EXPECT_GE(server_->stats().rendezvous_receives, 2u);
  // The same bytes again: deduplicated, not stored twice.
  auto again = c->Put(kNs, chain[3], 1, payloads[3]->data(), payloads[3]->size());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, v1::PutResponse::DEDUPLICATED);
  EXPECT_EQ(store_->Stats().puts_deduplicated, 1u);
  // Another part is another key.
  auto other_part = c->Get(kNs, 2, chain);
  ASSERT_TRUE(other_part.ok());
  for (const UcxGetBlock& b : *other_part) {
    EXPECT_TRUE(b.status.ok());
    EXPECT_FALSE(b.payload.has_value());
  }

  uint64_t put_in = 0, get_out = 0;
  for (const Finished& f : finished()) {
    EXPECT_EQ(f.code, absl::StatusCode::kOk) << f.method;
    if (f.method == "Put") put_in += f.bytes_in;
    if (f.method == "Get") get_out += f.bytes_out;
  }
  size_t total = 0;
  for (const Payload& p : payloads) total += p->size();
  EXPECT_EQ(put_in, total + payloads[3]->size());
  EXPECT_EQ(get_out, total);
}

// Hits of every size arrive exactly whatever piece size the client asks for (0: whole);
// a hit is sent in pieces only when it is larger than the piece size, one response per
// piece.
TEST_P(UcxTransportTest, StartedPutsAreInFlightTogetherAndEachWaitsForItsAnswer) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  // Eight puts (eager and rendezvous sizes) started back to back, then waited in reverse.
  std::vector<Payload> payloads;
  std::vector<ChainHash> chain;
  std::vector<UcxPendingPut> pending;
  for (size_t i = 0; i < 8; ++i) {
    payloads.push_back(
        ucx_test::PayloadOfAtLeast(700 + i, i % 2 == 0 ? (1 << 20) + i * 4096 : 2000));
    chain.push_back(H(700 + i));
    pending.push_back(c->StartPut(kNs, chain[i], 0, payloads[i]->data(), payloads[i]->size()));
  }
  for (size_t i = pending.size(); i-- > 0;) {
    auto r = pending[i].Wait();
    ASSERT_TRUE(r.ok()) << i << ": " << r.status();
    EXPECT_EQ(*r, v1::PutResponse::STORED) << i;
    EXPECT_EQ(*pending[i].Wait(), v1::PutResponse::STORED) << "a second Wait gives the same";
  }
  auto got = c->Get(kNs, 0, chain);
  ASSERT_TRUE(got.ok()) << got.status();
  for (size_t i = 0; i < chain.size(); ++i) {
    ASSERT_TRUE((*got)[i].payload.has_value()) << i;
    EXPECT_EQ(*(*got)[i].payload, *payloads[i]) << i;
  }
  // A moved-from handle says so; the moved-to one still has the answer.
  UcxPendingPut moved = std::move(pending[0]);
  EXPECT_EQ(pending[0].Wait().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(moved.Wait().ok());

  // Dropping a handle without Wait waits for the answer: the payload may be overwritten
  // right after, and the stored block is still the original.
  std::vector<uint8_t> buffer = *ucx_test::PayloadOfAtLeast(800, 4 << 20);
  const std::vector<uint8_t> original = buffer;
  { UcxPendingPut dropped = c->StartPut(kNs, H(800), 0, buffer.data(), buffer.size()); }
  std::fill(buffer.begin(), buffer.end(), 0xA5);
  auto back = c->Get(kNs, 0, std::vector<ChainHash>{H(800)});
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE((*back)[0].payload.has_value()) << (*back)[0].status;
  EXPECT_EQ(*(*back)[0].payload, original);

  // On a closed connection the started put fails with UNAVAILABLE when waited; the server
  // counts the endpoint as open until it sees it go.
  EXPECT_EQ(server_->stats().connections_open, 1u);
  c->Close();
  UcxPendingPut late = c->StartPut(kNs, H(801), 0, original.data(), original.size());
  EXPECT_EQ(late.Wait().status().code(), absl::StatusCode::kUnavailable);
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (server_->stats().connections_open != 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(server_->stats().connections_open, 0u);
  EXPECT_EQ(server_->stats().connections_accepted, 1u);
}

TEST_P(UcxTransportTest, GetInPiecesReturnsExactBytesForEveryPieceSize) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  const size_t sizes[] = {100 << 10, 1 << 20, (4 << 20) + 12345, 9 << 20};
  std::vector<Payload> payloads;
  std::vector<ChainHash> chain;
  for (size_t i = 0; i < 4; ++i) {
    payloads.push_back(ucx_test::PayloadOfAtLeast(200 + i, sizes[i]));
    chain.push_back(H(10 + i));
    ASSERT_TRUE(c->Put(kNs, chain.back(), 0, payloads[i]->data(), payloads[i]->size()).ok());
  }
  chain.insert(chain.begin() + 2, H(99));  // a miss between the hits
  const uint64_t pieces[] = {0, 64 << 10, 1 << 20, 3 << 20, uint64_t{1} << 30};
  for (uint64_t piece : pieces) {
    auto cp = Connect(kWriter, absl::Seconds(20), piece);
    ASSERT_NE(cp, nullptr);
    const uint64_t before = server_->stats().get_pieces;
    auto got = cp->Get(kNs, 0, chain);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), 5u);
    uint64_t expected_pieces = 0;
    for (size_t i = 0, p = 0; i < 5; ++i) {
      const UcxGetBlock& b = (*got)[i];
      ASSERT_TRUE(b.status.ok()) << "piece " << piece << " block " << i << ": " << b.status;
      if (i == 2) {
        EXPECT_FALSE(b.payload.has_value());
        continue;
      }
      const Payload& want = payloads[p++];
      ASSERT_TRUE(b.payload.has_value()) << "piece " << piece << " block " << i;
      EXPECT_TRUE(*b.payload == *want) << "piece " << piece << " block " << i;
      if (piece > 0 && want->size() > piece) expected_pieces += (want->size() + piece - 1) / piece;
    }
    EXPECT_EQ(server_->stats().get_pieces - before, expected_pieces) << "piece " << piece;
  }
}

// The wire format of pieces: consecutive responses of one block, each with its header and
// offset, in offset order, `last` only on the final piece of the final block. Piece sizes
// below 64 KiB or above 1 GiB are INVALID_ARGUMENT, from the server and from Connect.
TEST_P(UcxTransportTest, PiecesCarryOffsetsInOrderAndBadPieceSizesAreInvalidArgument) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  Payload big = ucx_test::PayloadOfAtLeast(31, 300 << 10);
  Payload small = storage::testing::RandomPayload(32);
  ASSERT_LT(small->size(), size_t{64} << 10);
  ASSERT_TRUE(c->Put(kNs, H(1), 0, big->data(), big->size()).ok());
  ASSERT_TRUE(c->Put(kNs, H(2), 0, small->data(), small->size()).ok());
  v1::UcxRequest r;
  r.set_session_token(kWriter);
  r.set_request_id(9);
  r.set_get_piece_bytes(64 << 10);
  r.mutable_get()->set_namespace_(kNs);
  for (uint64_t i : {1, 3, 2}) r.mutable_get()->add_chain_hashes(HashBytes(H(i)));
  auto resp = c->RawRequestForTesting(r.SerializeAsString(), 9, nullptr, 0, absl::Seconds(10));
  ASSERT_TRUE(resp.ok()) << resp.status();
  const size_t big_pieces = (big->size() + (64 << 10) - 1) / (64 << 10);
  ASSERT_EQ(resp->size(), big_pieces + 2);
  for (size_t k = 0; k < big_pieces; ++k) {
    const v1::UcxResponse& m = (*resp)[k];
    EXPECT_EQ(m.code(), 0);
    EXPECT_EQ(m.get().index(), 0u);
    EXPECT_EQ(m.get().header().payload_bytes(), big->size());
    EXPECT_EQ(m.offset(), k * (64 << 10));
    EXPECT_FALSE(m.last());
  }
  EXPECT_TRUE((*resp)[big_pieces].get().has_miss());
  EXPECT_FALSE((*resp)[big_pieces].last());
  const v1::UcxResponse& tail = (*resp)[big_pieces + 1];
  EXPECT_EQ(tail.get().index(), 2u);
  EXPECT_EQ(tail.get().header().payload_bytes(), small->size());
  EXPECT_EQ(tail.offset(), 0u);
  EXPECT_TRUE(tail.last());

  for (uint64_t bad : {uint64_t{1}, uint64_t{65535}, (uint64_t{1} << 30) + 1}) {
    r.set_request_id(10);
    r.set_get_piece_bytes(bad);
    resp = c->RawRequestForTesting(r.SerializeAsString(), 10, nullptr, 0, absl::Seconds(10));
    ASSERT_TRUE(resp.ok()) << resp.status();
    ASSERT_EQ(resp->size(), 1u);
    EXPECT_EQ((*resp)[0].code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
    EXPECT_EQ((*resp)[0].message(),
              absl::StrCat("get_piece_bytes is ", bad, "; expected 0 or 65536..1073741824"));
    UcxConnectionOptions o;
    o.loop = ucx_test::LoopOptions("ucx-test-cli");
    o.get_piece_bytes = bad;
    auto bad_conn =
        UcxConnection::Connect("127.0.0.1", server_->port(), kWriter, absl::Seconds(10), o);
    EXPECT_EQ(bad_conn.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  // Nothing changed and the server keeps serving.
  auto got = c->Get(kNs, 0, {H(1), H(2)});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE((*got)[0].payload == *big);
  EXPECT_TRUE((*got)[1].payload == *small);
}

// A server whose pieces go wrong (a bit flipped in one piece, a piece left out, a piece
// one byte short): that block is DATA_LOSS without bytes, the other blocks of the same Get
// are exact, and the connection keeps working.
TEST_P(UcxTransportTest, CorruptMissingOrShortPiecesAreDataLossNeverWrongBytes) {
  using F = UcxDataPlaneOptions::GetFaultForTesting;
  const std::pair<F, const char*> faults[] = {
      {F::kFlipBit, "checksum mismatch"}, {F::kSkipPiece, "was due"}, {F::kShortPiece, "was due"}};
  for (const auto& [fault, why] : faults) {
    UcxDataPlaneOptions o;
    o.get_fault_for_testing = fault;
    StartServer(o);
    auto c = Connect(kWriter, absl::Seconds(20), 64 << 10);
    ASSERT_NE(c, nullptr);
    Payload small = storage::testing::RandomPayload(41);
    Payload big = ucx_test::PayloadOfAtLeast(42, 300 << 10);
    ASSERT_TRUE(c->Put(kNs, H(1), 0, small->data(), small->size()).ok());
    ASSERT_TRUE(c->Put(kNs, H(2), 0, big->data(), big->size()).ok());
    for (int round = 0; round < 2; ++round) {
      auto got = c->Get(kNs, 0, {H(1), H(2), H(3)});
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(got->size(), 3u);
      EXPECT_TRUE((*got)[0].payload == *small);
      const UcxGetBlock& b = (*got)[1];
      EXPECT_EQ(b.status.code(), absl::StatusCode::kDataLoss) << static_cast<int>(fault);
      EXPECT_TRUE(absl::StrContains(b.status.message(), why)) << b.status;
      EXPECT_FALSE(b.payload.has_value());
      EXPECT_TRUE((*got)[2].status.ok());
      EXPECT_FALSE((*got)[2].payload.has_value());
    }
    // Whole payloads are not affected by the fault: the stored copy was always intact.
    auto whole = Connect(kWriter, absl::Seconds(20), 0);
    ASSERT_NE(whole, nullptr);
    auto got = whole->Get(kNs, 0, {H(2)});
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE((*got)[0].payload == *big);
  }
}

// Puts of one size are received into buffers prepared ahead (ready_put_buffers); with 0,
// never. Either way every block round-trips exactly.
TEST_P(UcxTransportTest, RepeatedPutSizeUsesPreparedBuffersUnlessDisabled) {
  for (int ready : {4, 0}) {
    SCOPED_TRACE(ready);
    UcxDataPlaneOptions o;
    o.ready_put_buffers = ready;
    StartServer(o);
    auto c = Connect();
    ASSERT_NE(c, nullptr);
    std::vector<Payload> sent;
    std::vector<ChainHash> chain;
    // At least 12 puts; with ready > 0, more (bounded) until one found a prepared buffer:
    // the background thread needs time to prepare, and a miss only allocates.
    for (int i = 0; i < 12 || (ready > 0 && i < 200 && server_->stats().put_buffers_ready == 0);
         ++i) {
      sent.push_back(ucx_test::PayloadOfAtLeast(500 + i, 1 << 20));
      chain.push_back(H(500 + i));
      auto r = c->Put(kNs, chain.back(), 0, sent.back()->data(), sent.back()->size());
      ASSERT_TRUE(r.ok()) << r.status();
      if (ready > 0 && i >= 1) absl::SleepFor(absl::Milliseconds(5));
    }
    auto got = c->Get(kNs, 0, chain);
    ASSERT_TRUE(got.ok()) << got.status();
    for (size_t i = 0; i < sent.size(); ++i) {
      ASSERT_TRUE((*got)[i].payload.has_value()) << i;
      EXPECT_EQ(*(*got)[i].payload, *sent[i]) << i;
    }
    if (ready > 0) {
      EXPECT_GE(server_->stats().put_buffers_ready, 1u);
    } else {
      EXPECT_EQ(server_->stats().put_buffers_ready, 0u);
    }
  }
}

// A Get prepares receive buffers of the last received size; a block of another size is
// received into a buffer of its own size. Bytes are exact either way.
TEST_P(UcxTransportTest, GetReceivesIntoPreparedBuffersOfTheLastSize) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  Payload a = ucx_test::PayloadOfAtLeast(601, 1 << 20);
  Payload b = ucx_test::PayloadOfAtLeast(602, 3 << 20);
  ASSERT_NE(a->size(), b->size());
  ASSERT_TRUE(c->Put(kNs, H(601), 0, a->data(), a->size()).ok());
  ASSERT_TRUE(c->Put(kNs, H(602), 0, b->data(), b->size()).ok());
  auto check = [&](const std::vector<ChainHash>& chain, const std::vector<Payload>& want) {
    auto got = c->Get(kNs, 0, chain);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_TRUE((*got)[i].payload.has_value()) << i;
      EXPECT_EQ(*(*got)[i].payload, *want[i]) << i;
    }
  };
  check({H(601)}, {a});  // nothing received yet: no hint
  EXPECT_EQ(c->PreparedReceivesForTesting(), 0u);
  check({H(601)}, {a});  // hint = a's size
  EXPECT_EQ(c->PreparedReceivesForTesting(), 1u);
  check({H(602), H(601)}, {b, a});  // b does not match the hint; a does (index 1)
  EXPECT_EQ(c->PreparedReceivesForTesting(), 2u);
  check({H(602)}, {b});  // the last block received was a: no match for b
  EXPECT_EQ(c->PreparedReceivesForTesting(), 2u);
  check({H(602)}, {b});
  EXPECT_EQ(c->PreparedReceivesForTesting(), 3u);
}

// inline_gets runs Get's store call on the loop thread even with store threads; hits,
// misses and the bytes are the same as through the pool.
TEST_P(UcxTransportTest, InlineGetsServeHitsAndMissesOnTheLoopThread) {
  UcxDataPlaneOptions o;
  o.inline_gets = true;
  StartServer(o);
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  Payload a = ucx_test::PayloadOfAtLeast(611, 4 << 20);
  ASSERT_TRUE(c->Put(kNs, H(611), 0, a->data(), a->size()).ok());
  auto got = c->Get(kNs, 0, {H(611), H(612)});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 2u);
  ASSERT_TRUE((*got)[0].payload.has_value());
  EXPECT_EQ(*(*got)[0].payload, *a);
  EXPECT_TRUE((*got)[1].status.ok());
  EXPECT_FALSE((*got)[1].payload.has_value());
  // With store_threads = 0 every call is inline anyway; the counter is for the pool case.
  EXPECT_EQ(server_->stats().inline_gets, GetParam() > 0 ? 1u : 0u);
}

TEST_P(UcxTransportTest, GetsUseTheStoreThreadsByDefault) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  Payload a = ucx_test::PayloadOfAtLeast(613, 1 << 20);
  ASSERT_TRUE(c->Put(kNs, H(613), 0, a->data(), a->size()).ok());
  auto got = c->Get(kNs, 0, {H(613)});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE((*got)[0].payload.has_value());
  EXPECT_EQ(*(*got)[0].payload, *a);
  EXPECT_EQ(server_->stats().inline_gets, 0u);
}

TEST_P(UcxTransportTest, NegativeReadyPutBuffersIsInvalidArgument) {
  storage::TieredStoreOptions so;
  so.memory_capacity_bytes = uint64_t{16} << 20;
  auto store = storage::TieredStore::Open(so);
  ASSERT_TRUE(store.ok());
  UcxDataPlaneOptions o;
  o.listen_address = "127.0.0.1";
  o.ready_put_buffers = -1;
  o.loop = ucx_test::LoopOptions("ucx-test-bad");
  EXPECT_EQ(UcxDataPlane::Start(o, store->get(), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(UcxTransportTest, LookupCountsTheLeadingPrefixOnly) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  std::vector<ChainHash> chain;
  for (int i = 0; i < 6; ++i) chain.push_back(H(1000 + i));
  for (int i : {0, 1, 2, 4}) {
    Payload p = storage::testing::RandomPayload(i + 1);
    ASSERT_TRUE(c->Put(kNs, chain[i], 0, p->data(), p->size()).ok());
  }
  auto n = c->Lookup(kNs, 0, chain, /*block_tokens=*/128);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 3u);
  std::vector<ChainHash> from_miss(chain.begin() + 3, chain.end());
  n = c->Lookup(kNs, 0, from_miss);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  n = c->Lookup("tenant/other", 0, chain);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  absl::MutexLock lock(&mu_);
  ASSERT_EQ(lookups_.size(), 3u);
  EXPECT_EQ(lookups_[0], (std::array<uint32_t, 3>{6, 3, 128}));
  EXPECT_EQ(lookups_[1], (std::array<uint32_t, 3>{3, 0, 0}));
  EXPECT_EQ(put_results_["stored"], 4);
}

TEST_P(UcxTransportTest, GetAnswersHitsAndMissesInOrder) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  Payload a = storage::testing::RandomPayload(7, 3);
  Payload b = storage::testing::RandomPayload(8, 2);
  ASSERT_TRUE(c->Put(kNs, H(1), 0, a->data(), a->size()).ok());
  ASSERT_TRUE(c->Put(kNs, H(3), 0, b->data(), b->size()).ok());
  auto got = c->Get(kNs, 0, {H(1), H(2), H(3), H(4)});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 4u);
  EXPECT_EQ((*got)[0].payload, *a);
  EXPECT_TRUE((*got)[1].status.ok());
  EXPECT_FALSE((*got)[1].payload.has_value());
  EXPECT_EQ((*got)[2].payload, *b);
  EXPECT_FALSE((*got)[3].payload.has_value());
  absl::MutexLock lock(&mu_);
  EXPECT_EQ(get_results_["memory/hit"], 2);
  EXPECT_EQ(get_results_["none/miss"], 2);
}

TEST_P(UcxTransportTest, PutMemoryBudgetQueuesRendezvousPutsInsteadOfFailing) {
  UcxDataPlaneOptions o;
  o.max_inflight_put_bytes = 1 << 20;  // smaller than one payload: one at a time
  StartServer(o);
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  std::vector<Payload> payloads;
  for (int i = 0; i < 6; ++i) payloads.push_back(ucx_test::PayloadOfAtLeast(60 + i, 2 << 20));
  std::atomic<int> ok{0}, ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      ready++;
      while (ready.load() < 6) std::this_thread::yield();  // all six at once
      if (c->Put(kNs, H(i), 0, payloads[i]->data(), payloads[i]->size()).ok()) ok++;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 6);
  EXPECT_GE(server_->stats().puts_queued, 1u);
  std::vector<ChainHash> chain;
  for (int i = 0; i < 6; ++i) chain.push_back(H(i));
  auto got = c->Get(kNs, 0, chain);
  ASSERT_TRUE(got.ok()) << got.status();
  for (int i = 0; i < 6; ++i) EXPECT_EQ((*got)[i].payload, *payloads[i]);
}

TEST_P(UcxTransportTest, DeleteRemovesBlocks) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  for (int i = 0; i < 3; ++i) {
    Payload p = storage::testing::RandomPayload(50 + i);
    ASSERT_TRUE(c->Put(kNs, H(i), 0, p->data(), p->size()).ok());
  }
  auto deleted = c->Delete(kNs, 0, {H(0), H(1), H(9)});
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 2u);
  auto n = c->Lookup(kNs, 0, {H(0), H(1), H(2)});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  auto got = c->Get(kNs, 0, {H(2)});
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE((*got)[0].payload.has_value());
  // A reader may not delete.
  auto r = Connect(kReader);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->Delete(kNs, 0, {H(2)}).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_P(UcxTransportTest, TokensAreCheckedAndNothingIsStoredWithoutRights) {
  Payload p = ucx_test::PayloadOfAtLeast(5, 1 << 20);  // rendezvous-sized
  auto stranger = Connect("no-such-token");
  ASSERT_NE(stranger, nullptr);
  EXPECT_EQ(stranger->Put(kNs, H(1), 0, p->data(), p->size()).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(stranger->Lookup(kNs, 0, {H(1)}).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(stranger->Get(kNs, 0, {H(1)}).status().code(), absl::StatusCode::kUnauthenticated);

  auto reader = Connect(kReader);
  ASSERT_NE(reader, nullptr);
  auto denied = reader->Put(kNs, H(1), 0, p->data(), p->size());
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.status().message(), "reader-token may not write");

  auto writer = Connect(kWriter);
  ASSERT_NE(writer, nullptr);
  EXPECT_EQ(writer->Put("other/ns", H(1), 0, p->data(), p->size()).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(store_->Stats().memory.blocks, 0u);

  // A request without any token (the client refuses to connect with an empty one, so send
  // it raw).
  v1::UcxRequest r;
  r.set_request_id(77);
  r.mutable_lookup()->set_namespace_(kNs);
  r.mutable_lookup()->add_chain_hashes(HashBytes(H(1)));
  auto resp =
      writer->RawRequestForTesting(r.SerializeAsString(), 77, nullptr, 0, absl::Seconds(10));
  ASSERT_TRUE(resp.ok()) << resp.status();
  ASSERT_EQ(resp->size(), 1u);
  EXPECT_EQ((*resp)[0].code(), static_cast<int>(absl::StatusCode::kUnauthenticated));
  EXPECT_TRUE((*resp)[0].last());
  EXPECT_EQ(
      UcxConnection::Connect("127.0.0.1", server_->port(), "", absl::Seconds(1)).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_P(UcxTransportTest, MalformedRequestsAreInvalidArgumentAndServerKeepsServing) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  // Not a protobuf at all: answered with request_id 0.
  auto resp = c->RawRequestForTesting(std::string("\xff\xff\xff\xff garbage", 12), 0, nullptr, 0,
                                      absl::Seconds(10));
  ASSERT_TRUE(resp.ok()) << resp.status();
  ASSERT_EQ(resp->size(), 1u);
  EXPECT_EQ((*resp)[0].code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ((*resp)[0].message(), "malformed UcxRequest header");

  // No operation.
  v1::UcxRequest empty;
  empty.set_session_token(kWriter);
  empty.set_request_id(5);
  resp = c->RawRequestForTesting(empty.SerializeAsString(), 5, nullptr, 0, absl::Seconds(10));
  ASSERT_TRUE(resp.ok());
  EXPECT_EQ((*resp)[0].code(), static_cast<int>(absl::StatusCode::kInvalidArgument));

  // Bad namespaces, hashes and chains.
  for (const std::string& ns :
       {std::string(""), std::string("tenant/../x"), std::string("tenant/sp ace"),
        std::string("tenant/") + std::string(300, 'a')}) {
    EXPECT_EQ(c->Lookup(ns, 0, {H(1)}).status().code(), absl::StatusCode::kInvalidArgument) << ns;
  }
  v1::UcxRequest short_hash;
  short_hash.set_session_token(kWriter);
  short_hash.set_request_id(6);
  short_hash.mutable_get()->set_namespace_(kNs);
  short_hash.mutable_get()->add_chain_hashes(std::string(31, 'x'));
  resp = c->RawRequestForTesting(short_hash.SerializeAsString(), 6, nullptr, 0, absl::Seconds(10));
  ASSERT_TRUE(resp.ok());
  EXPECT_EQ((*resp)[0].code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ((*resp)[0].message(), "chain hash 0 is 31 bytes; it must be 32");
  EXPECT_EQ(c->Get(kNs, 0, {}).status().code(), absl::StatusCode::kInvalidArgument);

  // Data attached to a Lookup.
  uint8_t junk[16] = {1, 2, 3};
  v1::UcxRequest lookup;
  lookup.set_session_token(kWriter);
  lookup.set_request_id(8);
  lookup.mutable_lookup()->set_namespace_(kNs);
  lookup.mutable_lookup()->add_chain_hashes(HashBytes(H(1)));
  resp =
      c->RawRequestForTesting(lookup.SerializeAsString(), 8, junk, sizeof(junk), absl::Seconds(10));
  ASSERT_TRUE(resp.ok());
  EXPECT_EQ((*resp)[0].code(), static_cast<int>(absl::StatusCode::kInvalidArgument));

  // Still serving.
  Payload p = storage::testing::RandomPayload(3);
  EXPECT_TRUE(c->Put(kNs, H(1), 0, p->data(), p->size()).ok());
  EXPECT_EQ(*c->Lookup(kNs, 0, {H(1)}), 1u);
}

TEST_P(UcxTransportTest, ChainLengthLimitAndLongChainsAsData) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  std::vector<ChainHash> chain;
  for (int i = 0; i < 4096; ++i) chain.push_back(H(i));  // ~140 KiB: beyond the AM header
  Payload p = storage::testing::RandomPayload(11);
  ASSERT_TRUE(c->Put(kNs, chain[0], 0, p->data(), p->size()).ok());
  ASSERT_TRUE(c->Put(kNs, chain[1], 0, p->data(), p->size()).ok());
  auto n = c->Lookup(kNs, 0, chain);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 2u);
  auto got = c->Get(kNs, 0, chain);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 4096u);
  EXPECT_EQ((*got)[1].payload, *p);
  EXPECT_FALSE((*got)[4095].payload.has_value());
  chain.push_back(H(5000));
  auto too_long = c->Lookup(kNs, 0, chain);
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(too_long.status().message(), "chain has 4097 hashes; the limit is 4096");
}

TEST_P(UcxTransportTest, WrongPayloadSizeIsRejectedAndNothingStored) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  for (size_t size : {size_t{8} << 10, size_t{4} << 20}) {  // eager and rendezvous
    Payload p = ucx_test::PayloadOfAtLeast(21, size);
    for (uint64_t claimed : {p->size() + 1, p->size() - 1}) {
      auto resp = c->RawRequestForTesting(PutHeader(kWriter, 9, kNs, HashBytes(H(2)), claimed), 9,
                                          p->data(), p->size(), absl::Seconds(10));
      ASSERT_TRUE(resp.ok()) << resp.status();
      ASSERT_EQ(resp->size(), 1u);
      EXPECT_EQ((*resp)[0].code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
      EXPECT_EQ((*resp)[0].message(), absl::StrCat("put header says ", claimed,
                                                   " payload bytes but ", p->size(), " arrived"));
    }
    // A payload whose own header disagrees with its length.
    std::vector<uint8_t> cut(p->begin(), p->end() - 8);
    auto cut_put = c->Put(kNs, H(2), 0, cut.data(), cut.size());
    EXPECT_EQ(cut_put.status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(*c->Lookup(kNs, 0, {H(2)}), 0u);
  EXPECT_EQ(store_->Stats().memory.blocks, 0u);
  // The 4 MiB rejects were dropped without pulling their data.
  EXPECT_GE(server_->stats().rejected_before_receive, 2u);
  Payload ok = ucx_test::PayloadOfAtLeast(22, 4 << 20);
  EXPECT_TRUE(c->Put(kNs, H(2), 0, ok->data(), ok->size()).ok());
}

TEST_P(UcxTransportTest, ChecksumCorruptionIsDataLossAndNothingStored) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  for (size_t size : {size_t{8} << 10, size_t{2} << 20}) {
    Payload p = ucx_test::PayloadOfAtLeast(31, size);
    std::vector<uint8_t> bad(*p);
    bad[bad.size() / 2] ^= 0x40;  // one bit of the body
    auto r = c->Put(kNs, H(3), 0, bad.data(), bad.size());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << size;
    std::vector<uint8_t> bad_header(*p);
    bad_header[30] ^= 0x01;  // a size field: header checksum no longer matches
    r = c->Put(kNs, H(3), 0, bad_header.data(), bad_header.size());
    EXPECT_TRUE(r.status().code() == absl::StatusCode::kDataLoss ||
                r.status().code() == absl::StatusCode::kInvalidArgument)
        << r.status();
  }
  EXPECT_EQ(*c->Lookup(kNs, 0, {H(3)}), 0u);
  EXPECT_EQ(store_->Stats().memory.blocks, 0u);
  int data_loss = 0;
  for (const Finished& f : finished()) {
    if (f.method == "Put" && f.code == absl::StatusCode::kDataLoss) data_loss++;
  }
  EXPECT_GE(data_loss, 2);
}

TEST_P(UcxTransportTest, RequestWithoutAnswerInTimeIsDeadlineExceeded) {
  auto c = Connect(kWriter, absl::Seconds(10));
  ASSERT_NE(c, nullptr);
  {
    absl::MutexLock lock(&mu_);
    authorize_stall_ = absl::Milliseconds(1500);  // blocks the server's loop thread
  }
  absl::Time start = absl::Now();
  auto n = c->Lookup(kNs, 0, {H(1)}, 0, absl::Milliseconds(100));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1200));  // well before the answer
  {
    absl::MutexLock lock(&mu_);
    authorize_stall_ = absl::ZeroDuration();
  }
  EXPECT_EQ(c->Lookup(kNs, 0, {H(1)}, 0, absl::Milliseconds(-1)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  // The late answer is dropped; the connection keeps working.
  absl::SleepFor(absl::Milliseconds(1500));
  n = c->Lookup(kNs, 0, {H(1)});
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 0u);
}

TEST_P(UcxTransportTest, ClientClosingWithQueuedPutsLeavesTheServerServing) {
  UcxDataPlaneOptions o;
  o.max_inflight_put_bytes = 1 << 20;  // the server pulls one payload at a time
  StartServer(o);
  Payload big = ucx_test::PayloadOfAtLeast(70, 8 << 20);
  auto a = Connect();
  ASSERT_NE(a, nullptr);
  std::vector<std::thread> threads;
  std::vector<absl::StatusCode> codes(6, absl::StatusCode::kUnknown);
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      codes[i] = a->Put(kNs, H(100 + i), 0, big->data(), big->size()).status().code();
    });
  }
  absl::SleepFor(absl::Milliseconds(20));
  a->Close();  // puts still queued on the server, some payloads not pulled yet
  for (auto& t : threads) t.join();
  std::printf("puts before Close: %d of 6 finished OK\n",
              static_cast<int>(std::count(codes.begin(), codes.end(), absl::StatusCode::kOk)));
  for (absl::StatusCode code : codes) {
    EXPECT_TRUE(code == absl::StatusCode::kOk || code == absl::StatusCode::kUnavailable)
        << absl::StatusCodeToString(code);
  }
  // Another client is served normally, including a rendezvous put, and the server stops
  // cleanly afterwards.
  auto b = Connect();
  ASSERT_NE(b, nullptr);
  Payload p = ucx_test::PayloadOfAtLeast(71, 2 << 20);
  auto r = b->Put(kNs, H(200), 0, p->data(), p->size());
  ASSERT_TRUE(r.ok()) << r.status();
  auto got = b->Get(kNs, 0, {H(200)});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)[0].payload, *p);
  // Whatever was stored from the closed client is complete and valid.
  for (int i = 0; i < 6; ++i) {
    auto g = b->Get(kNs, 0, {H(100 + i)});
    ASSERT_TRUE(g.ok());
    if ((*g)[0].payload.has_value()) {
      EXPECT_EQ(*(*g)[0].payload, *big);
    }
  }
}

TEST_P(UcxTransportTest, StopDrainsInFlightRequestsThenClientsSeeUnavailable) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  std::vector<Payload> payloads;
  std::vector<ChainHash> chain;
  for (int i = 0; i < 8; ++i) {
    payloads.push_back(ucx_test::PayloadOfAtLeast(40 + i, 4 << 20));
    chain.push_back(H(i));
    ASSERT_TRUE(c->Put(kNs, chain[i], 0, payloads[i]->data(), payloads[i]->size()).ok());
  }
  absl::StatusOr<std::vector<UcxGetBlock>> got;
  std::thread getter([&] { got = c->Get(kNs, 0, chain); });
  absl::SleepFor(absl::Milliseconds(2));
  server_->Stop();
  getter.join();
  // Either the Get was received before Stop (drained: every block correct) or it was not
  // (UNAVAILABLE); never wrong bytes.
  if (got.ok()) {
    for (int i = 0; i < 8; ++i) {
      if ((*got)[i].payload.has_value()) {
        EXPECT_EQ(*(*got)[i].payload, *payloads[i]);
      }
    }
  } else {
    EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  }
  EXPECT_EQ(server_->inflight_requests(), 0u);
  // The server closed the endpoint: later calls fail fast.
  absl::Time start = absl::Now();
  auto n = c->Lookup(kNs, 0, chain);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kUnavailable) << n.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_FALSE(c->connected());
}

TEST_P(UcxTransportTest, ConnectToClosedPortIsUnavailable) {
  uint16_t port = server_->port();
  server_->Stop();
  UcxConnectionOptions o;
  o.loop = ucx_test::LoopOptions("ucx-test-cli");
  auto c = UcxConnection::Connect("127.0.0.1", port, kWriter, absl::Seconds(5), o);
  EXPECT_TRUE(c.status().code() == absl::StatusCode::kUnavailable ||
              c.status().code() == absl::StatusCode::kDeadlineExceeded)
      << c.status();
}

TEST_P(UcxTransportTest, ManyConcurrentClients) {
  constexpr int kClients = 12;
  constexpr int kThreadsPerClient = 2;
  constexpr int kBlocksPerThread = 6;
  std::vector<std::unique_ptr<UcxConnection>> conns;
  for (int i = 0; i < kClients; ++i) {
    conns.push_back(Connect());
    ASSERT_NE(conns.back(), nullptr);
  }
  std::atomic<int> errors{0};
  std::atomic<int> checked{0};
  std::vector<std::thread> threads;
  for (int ci = 0; ci < kClients; ++ci) {
    for (int t = 0; t < kThreadsPerClient; ++t) {
      threads.emplace_back([&, ci, t] {
        UcxConnection& c = *conns[ci];
        std::vector<ChainHash> chain;
        std::vector<Payload> mine;
        for (int b = 0; b < kBlocksPerThread; ++b) {
          uint64_t id = (ci * kThreadsPerClient + t) * 100 + b;
          // Sizes from 8 KiB (eager) to ~512 KiB (rendezvous).
          mine.push_back(ucx_test::PayloadOfAtLeast(id, size_t{8} << (10 + b % 7)));
          chain.push_back(H(id));
          auto r = c.Put(kNs, chain.back(), 0, mine.back()->data(), mine.back()->size());
          if (!r.ok()) errors++;
          // Every thread also re-puts a block shared by all: dedup under concurrency.
          Payload shared = storage::testing::RandomPayload(999, 4);
          if (!c.Put(kNs, H(999999), 0, shared->data(), shared->size()).ok()) errors++;
        }
        auto n = c.Lookup(kNs, 0, chain);
        if (!n.ok() || *n != kBlocksPerThread) errors++;
        auto got = c.Get(kNs, 0, chain);
        if (!got.ok()) {
          errors++;
          return;
        }
        for (int b = 0; b < kBlocksPerThread; ++b) {
          if (!(*got)[b].payload.has_value() || *(*got)[b].payload != *mine[b]) {
            errors++;
          } else {
            checked++;
          }
        }
      });
    }
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(checked.load(), kClients * kThreadsPerClient * kBlocksPerThread);
  storage::StoreStats stats = store_->Stats();
  EXPECT_EQ(stats.puts_stored, 1u + kClients * kThreadsPerClient * kBlocksPerThread);
  EXPECT_EQ(stats.puts_deduplicated, uint64_t{kClients * kThreadsPerClient * kBlocksPerThread} - 1);
}

INSTANTIATE_TEST_SUITE_P(StoreThreads, UcxTransportTest, ::testing::Values(0, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return info.param == 0 ? std::string("Inline")
                                                  : absl::StrCat("Pool", info.param);
                         });

// Which lane carries rendezvous payloads between two processes' worth of UCX contexts on
// one host (here: two loops of one process, which UCX treats the same way). `defaults`
// replaces UcxLoopOptions::ucx_defaults on both sides (nullopt: keep kvtier's defaults).
// Returns the client endpoint's description after a verified 4 MiB round trip.
std::string LanesAfterRoundTrip(
    const std::optional<std::vector<ucx::UcxLoopOptions::Setting>>& defaults) {
  storage::TieredStoreOptions so;
  so.memory_capacity_bytes = uint64_t{64} << 20;
  auto store = storage::TieredStore::Open(so);
  EXPECT_TRUE(store.ok()) << store.status();
  if (!store.ok()) return "";
  UcxDataPlaneOptions o;
  o.listen_address = "127.0.0.1";
  o.loop.ucx_config = {{"TLS", "tcp,cma"}};
  if (defaults) o.loop.ucx_defaults = *defaults;
  auto server = UcxDataPlane::Start(o, store->get(), {});
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return "";
  UcxConnectionOptions co;
  co.loop.ucx_config = {{"TLS", "tcp,cma"}};
  if (defaults) co.loop.ucx_defaults = *defaults;
  auto c = UcxConnection::Connect("127.0.0.1", (*server)->port(), "t", absl::Seconds(10), co);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return "";
  Payload p = ucx_test::PayloadOfAtLeast(7, 4 << 20);
  auto put = (*c)->Put(kNs, H(1), 0, p->data(), p->size());
  EXPECT_TRUE(put.ok()) << put.status();
  auto got = (*c)->Get(kNs, 0, std::vector<ChainHash>{H(1)});
  EXPECT_TRUE(got.ok()) << got.status();
  if (got.ok()) {
    EXPECT_TRUE((*got)[0].payload.has_value() && *(*got)[0].payload == *p);
  }
  EXPECT_EQ((*server)->stats().rendezvous_receives, 1u);
  absl::StatusOr<std::string> info = (*c)->EndpointInfo();
  EXPECT_TRUE(info.ok()) << info.status();
  (*c)->Close();
  EXPECT_EQ((*c)->EndpointInfo().status().code(), absl::StatusCode::kUnavailable);
  (*server)->Stop();
  return info.ok() ? *info : "";
}

bool HasCmaRendezvousLane(const std::string& info) {
  for (absl::string_view line : absl::StrSplit(info, '\n')) {
    if (absl::StrContains(line, "cma/") && absl::StrContains(line, "rma_bw")) return true;
  }
  return false;
}

// kvtier's default UCX settings make CMA carry rendezvous payloads on one host; without
// them (UCX 1.13 and error-handling endpoints) the payloads go over TCP loopback.
TEST(UcxLanesTest, DefaultsMovePayloadsByCmaOnOneHost) {
  if (!ucx::CrossMemoryAttachPermitted()) {
    GTEST_SKIP() << "process_vm_readv is not permitted here (Yama ptrace_scope or seccomp)";
  }
  ASSERT_FALSE(ucx::UcxLoopOptions::DefaultUcxSettings().empty());
  const std::string with = LanesAfterRoundTrip(std::nullopt);
  EXPECT_TRUE(HasCmaRendezvousLane(with)) << with;
  const std::string without = LanesAfterRoundTrip(std::vector<ucx::UcxLoopOptions::Setting>{});
  EXPECT_FALSE(HasCmaRendezvousLane(without)) << without;
  EXPECT_TRUE(absl::StrContains(without, "tcp/")) << without;
}

// UCX_<name> in the environment wins over a kvtier default.
TEST(UcxLanesTest, EnvironmentOverridesTheDefaults) {
  if (!ucx::CrossMemoryAttachPermitted()) {
    GTEST_SKIP() << "process_vm_readv is not permitted here (Yama ptrace_scope or seccomp)";
  }
  ASSERT_EQ(setenv("UCX_CMA_MEMORY_INVALIDATE", "n", 1), 0);
  const std::string info = LanesAfterRoundTrip(std::nullopt);
  unsetenv("UCX_CMA_MEMORY_INVALIDATE");
  EXPECT_FALSE(HasCmaRendezvousLane(info)) << info;
}

// A default this UCX version does not know is skipped, not an error.
TEST(UcxLanesTest, UnknownDefaultIsSkipped) {
  ucx::UcxLoopOptions o;
  o.ucx_config = {{"TLS", "tcp"}};
  o.ucx_defaults = {{"NO_SUCH_KVTIER_SETTING", "UCX_NO_SUCH_KVTIER_SETTING", "1"}};
  auto loop = ucx::UcxLoop::Start(o, nullptr);
  EXPECT_TRUE(loop.ok()) << loop.status();
}

}  // namespace
}  // namespace kvtier
