// Malformed and hostile requests against a real kvtier-server: each is rejected with the
// exact status code, nothing is stored, and the server keeps serving.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstring>

#include "client/client.h"
#include "kvtier/v1/kvtier.grpc.pb.h"
#include "tests/service/harness.h"

namespace kvtier::testing {
namespace {

constexpr char kNs[] = "tenantA/bad/k4v2_g128/tp0";

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess();
    ServerProcess::Options o;
    o.extra_flags = {"--max_blocks_per_put=4", "--max_chain_length=64"};
    ASSERT_TRUE(server_->Start(o).ok());
  }
  static void TearDownTestSuite() { delete server_; }

  void SetUp() override {
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(64 << 20);
    args.SetMaxReceiveMessageSize(64 << 20);
    stub_ = v1::KvTier::NewStub(
        grpc::CreateCustomChannel(server_->endpoint(), grpc::InsecureChannelCredentials(), args));
  }

  static v1::PutRequest Header(const kernels::ChainHash& h, uint64_t bytes,
                               const std::string& ns = kNs) {
    v1::PutRequest m;
    m.mutable_header()->mutable_key()->set_namespace_(ns);
    m.mutable_header()->mutable_key()->set_chain_hash(h.data(), h.size());
    m.mutable_header()->set_payload_bytes(bytes);
    return m;
  }
  static v1::PutRequest Chunk(const uint8_t* p, size_t n) {
    v1::PutRequest m;
    m.set_chunk(p, n);
    return m;
  }
  // A well-formed stream for one block: header + chunks of `chunk` bytes.
  static void AppendBlock(std::vector<v1::PutRequest>* msgs, const kernels::ChainHash& h,
                          const std::vector<uint8_t>& payload, size_t chunk = 1 << 20) {
    msgs->push_back(Header(h, payload.size()));
    for (size_t off = 0; off < payload.size(); off += chunk) {
      msgs->push_back(Chunk(payload.data() + off, std::min(chunk, payload.size() - off)));
    }
  }

  grpc::Status PutRaw(const std::vector<v1::PutRequest>& msgs, v1::PutResponse* resp = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::PutResponse local;
    auto w = stub_->Put(&ctx, resp ? resp : &local);
    for (const auto& m : msgs) {
      if (!w->Write(m)) break;
    }
    w->WritesDone();
    return w->Finish();
  }

  uint32_t LookupRaw(const std::vector<kernels::ChainHash>& chain) {
    grpc::ClientContext ctx;
    v1::LookupRequest req;
    req.set_namespace_(kNs);
    for (const auto& h : chain) req.add_chain_hashes(h.data(), h.size());
    v1::LookupResponse resp;
    EXPECT_TRUE(stub_->Lookup(&ctx, req, &resp).ok());
    return resp.num_present();
  }

  uint64_t StoredBlocks() {
    grpc::ClientContext ctx;
    v1::StatsResponse s;
    EXPECT_TRUE(stub_->Stats(&ctx, {}, &s).ok());
    return s.memory().blocks();
  }

  // After every rejection: the server serves a good Put and nothing new was stored by the
  // bad request.
  void ExpectStillServingAndNothingStored(uint64_t blocks_before) {
    EXPECT_EQ(StoredBlocks(), blocks_before) << "a rejected request stored something";
    const auto h = RandomChain(1, ++good_seed_ + 100000);
    std::vector<v1::PutRequest> msgs;
    AppendBlock(&msgs, h[0], MakePayload(20000, good_seed_));
    v1::PutResponse resp;
    ASSERT_TRUE(PutRaw(msgs, &resp).ok());
    EXPECT_EQ(resp.outcomes(0), v1::PutResponse::STORED);
  }

  static ServerProcess* server_;
  std::unique_ptr<v1::KvTier::Stub> stub_;
  static int good_seed_;
};

ServerProcess* BadInputTest::server_ = nullptr;
int BadInputTest::good_seed_ = 0;

TEST_F(BadInputTest, WrongSizesAreInvalidArgument) {
  const uint64_t before = StoredBlocks();
  const auto h = RandomChain(3, 1);
  auto payload = MakePayload(50000, 1);
  // Chunks short of payload_bytes, then half-close.
  std::vector<v1::PutRequest> shorter = {Header(h[0], payload.size()),
                                         Chunk(payload.data(), payload.size() - 1)};
  grpc::Status s = PutRaw(shorter);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("stream ended inside block 0"), std::string::npos);
  // Chunks beyond payload_bytes.
  std::vector<v1::PutRequest> longer = {Header(h[0], payload.size() - 8),
                                        Chunk(payload.data(), payload.size())};
  EXPECT_EQ(PutRaw(longer).error_code(), grpc::INVALID_ARGUMENT);
  // PutBlockHeader size disagrees with the payload's own header (caught at 64 bytes).
  auto padded = payload;
  padded.resize(payload.size() + 64);
  std::vector<v1::PutRequest> mismatch;
  AppendBlock(&mismatch, h[1], padded);
  s = PutRaw(mismatch);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("payload header says"), std::string::npos) << s.error_message();
  // payload_bytes outside [64, 1 GiB].
  EXPECT_EQ(PutRaw({Header(h[2], 10)}).error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_EQ(PutRaw({Header(h[2], uint64_t{1} << 40)}).error_code(), grpc::INVALID_ARGUMENT);
  // Zero-length chunk.
  EXPECT_EQ(PutRaw({Header(h[2], payload.size()), Chunk(payload.data(), 0)}).error_code(),
            grpc::INVALID_ARGUMENT);
  EXPECT_EQ(LookupRaw({h[0]}), 0u);
  ExpectStillServingAndNothingStored(before);
}

TEST_F(BadInputTest, BadChecksumIsDataLossAndUnknownPresetIsInvalidArgument) {
  const uint64_t before = StoredBlocks();
  const auto h = RandomChain(2, 2);
  auto payload = MakePayload(60000, 2);
  auto flipped = payload;
  flipped[payload.size() / 2] ^= 0x40;
  std::vector<v1::PutRequest> msgs;
  AppendBlock(&msgs, h[0], flipped);
  grpc::Status s = PutRaw(msgs);
  EXPECT_EQ(s.error_code(), grpc::DATA_LOSS) << s.error_message();
  EXPECT_NE(s.error_message().find("checksum"), std::string::npos);

  auto preset = payload;
  preset[8] = 9;  // no such preset
  msgs.clear();
  AppendBlock(&msgs, h[1], preset);
  s = PutRaw(msgs);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("preset"), std::string::npos) << s.error_message();

  auto magic = payload;
  magic[0] ^= 1;
  msgs.clear();
  AppendBlock(&msgs, h[1], magic);
  EXPECT_EQ(PutRaw(msgs).error_code(), grpc::INVALID_ARGUMENT);

  // Every single-byte corruption of the header region is rejected.
  for (size_t i = 0; i < kernels::kPayloadHeaderBytes; i += 3) {
    auto bad = payload;
    bad[i] ^= 0x5A;
    msgs.clear();
    AppendBlock(&msgs, h[1], bad);
    const auto code = PutRaw(msgs).error_code();
    EXPECT_TRUE(code == grpc::INVALID_ARGUMENT || code == grpc::DATA_LOSS) << i << " " << code;
  }
  EXPECT_EQ(LookupRaw({h[0]}), 0u);
  EXPECT_EQ(LookupRaw({h[1]}), 0u);
  ExpectStillServingAndNothingStored(before);
}

TEST_F(BadInputTest, OutOfOrderStreamPartsAreInvalidArgument) {
  const uint64_t before = StoredBlocks();
  const auto h = RandomChain(2, 3);
  auto payload = MakePayload(30000, 3);
  grpc::Status s = PutRaw({Chunk(payload.data(), 100)});
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("chunk before any header"), std::string::npos);
  // A second header before the first block is complete.
  s = PutRaw(
      {Header(h[0], payload.size()), Chunk(payload.data(), 1000), Header(h[1], payload.size())});
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("before block 0's payload was complete"), std::string::npos)
      << s.error_message();
  // A message with neither part.
  EXPECT_EQ(PutRaw({v1::PutRequest()}).error_code(), grpc::INVALID_ARGUMENT);
  ExpectStillServingAndNothingStored(before);
}

TEST_F(BadInputTest, OversizedMessagesAndChunksAreRejected) {
  const uint64_t before = StoredBlocks();
  const auto h = RandomChain(1, 4);
  auto big = MakePayload(size_t{10} << 20, 4);
  // One 10 MiB message exceeds --max_message_bytes (8 MiB): gRPC refuses it.
  grpc::Status s = PutRaw({Header(h[0], big.size()), Chunk(big.data(), big.size())});
  EXPECT_EQ(s.error_code(), grpc::RESOURCE_EXHAUSTED) << s.error_message();
  // A 5 MiB chunk fits a message but breaks the 4 MiB chunk rule.
  s = PutRaw({Header(h[0], big.size()), Chunk(big.data(), size_t{5} << 20)});
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT) << s.error_message();
  EXPECT_EQ(LookupRaw({h[0]}), 0u);
  ExpectStillServingAndNothingStored(before);
}

TEST_F(BadInputTest, HugeChainsBadHashesAndNamespacesAreInvalidArgument) {
  const uint64_t before = StoredBlocks();
  auto check = [&](const v1::LookupRequest& req, const char* what) {
    grpc::ClientContext ctx;
    v1::LookupResponse resp;
    grpc::Status s = stub_->Lookup(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT) << what << ": " << s.error_message();
  };
  v1::LookupRequest req;
  req.set_namespace_(kNs);
  for (const auto& h : RandomChain(65, 5)) req.add_chain_hashes(h.data(), h.size());
  check(req, "65 hashes over --max_chain_length=64");
  v1::LookupRequest huge;
  huge.set_namespace_(kNs);
  for (int i = 0; i < 100000; ++i) huge.add_chain_hashes(std::string(32, static_cast<char>(i)));
  check(huge, "100000 hashes");
  v1::LookupRequest empty;
  empty.set_namespace_(kNs);
  check(empty, "empty chain");
  v1::LookupRequest short_hash;
  short_hash.set_namespace_(kNs);
  short_hash.add_chain_hashes(std::string(31, 'x'));
  check(short_hash, "31-byte hash");
  for (const std::string& ns : {std::string(""), std::string("a b"), std::string("x/../y"),
                                std::string(300, 'n'), std::string("nul\0ns", 6)}) {
    v1::LookupRequest r;
    r.set_namespace_(ns);
    r.add_chain_hashes(std::string(32, 'h'));
    check(r, "bad namespace");
  }
  // Get and Delete validate the same way.
  {
    grpc::ClientContext ctx;
    v1::GetRequest g;
    g.set_namespace_(kNs);
    for (int i = 0; i < 65; ++i) g.add_chain_hashes(std::string(32, static_cast<char>(i)));
    auto reader = stub_->Get(&ctx, g);
    v1::GetResponse m;
    EXPECT_FALSE(reader->Read(&m));
    EXPECT_EQ(reader->Finish().error_code(), grpc::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    v1::DeleteRequest d;
    d.set_namespace_("bad ns");
    d.add_chain_hashes(std::string(32, 'h'));
    v1::DeleteResponse resp;
    EXPECT_EQ(stub_->Delete(&ctx, d, &resp).error_code(), grpc::INVALID_ARGUMENT);
  }
  // A Put header with a bad key.
  auto payload = MakePayload(20000, 6);
  v1::PutRequest bad_hash = Header(RandomChain(1, 6)[0], payload.size());
  bad_hash.mutable_header()->mutable_key()->set_chain_hash("short");
  EXPECT_EQ(PutRaw({bad_hash}).error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_EQ(PutRaw({Header(RandomChain(1, 6)[0], payload.size(), "bad ns")}).error_code(),
            grpc::INVALID_ARGUMENT);
  ExpectStillServingAndNothingStored(before);
}

TEST_F(BadInputTest, PutStreamIsAllOrNothing) {
  const uint64_t before = StoredBlocks();
  const auto h = RandomChain(5, 7);
  std::vector<std::vector<uint8_t>> p;
  for (int i = 0; i < 5; ++i) p.push_back(MakePayload(25000, 70 + i));
  // Two good blocks, then a corrupt one: nothing of the stream is stored.
  std::vector<v1::PutRequest> msgs;
  AppendBlock(&msgs, h[0], p[0]);
  AppendBlock(&msgs, h[1], p[1]);
  auto bad = p[2];
  bad[bad.size() - 1] ^= 1;
  AppendBlock(&msgs, h[2], bad);
  EXPECT_EQ(PutRaw(msgs).error_code(), grpc::DATA_LOSS);
  EXPECT_EQ(LookupRaw({h[0]}), 0u);
  EXPECT_EQ(LookupRaw({h[1]}), 0u);
  // More blocks than --max_blocks_per_put=4.
  msgs.clear();
  for (int i = 0; i < 5; ++i) AppendBlock(&msgs, h[i], p[i]);
  grpc::Status s = PutRaw(msgs);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("more than 4 blocks"), std::string::npos) << s.error_message();
  EXPECT_EQ(LookupRaw({h[0]}), 0u);
  ExpectStillServingAndNothingStored(before);
  // The same four good blocks in one stream are stored together.
  msgs.clear();
  for (int i = 0; i < 4; ++i) AppendBlock(&msgs, h[i], p[i]);
  v1::PutResponse resp;
  ASSERT_TRUE(PutRaw(msgs, &resp).ok());
  EXPECT_EQ(resp.outcomes_size(), 4);
  EXPECT_EQ(LookupRaw({h[0], h[1], h[2], h[3], h[4]}), 4u);
}

}  // namespace
}  // namespace kvtier::testing
