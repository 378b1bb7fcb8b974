// Option validation and device detection of the GPU export/import (no server needed).
// The round trip through a real server is tests/e2e/gpu_transfer_e2e_test.cc.
#include "client/gpu/gpu_transfer.h"

#include <cuda_runtime_api.h>

#include "gtest/gtest.h"

namespace kvtier::client::gpu {
namespace {

TransferOptions Valid() {
  TransferOptions o;
  o.ns = "t/model/k4v2_g128";
  o.num_kv_heads = 8;
  o.num_layers = 64;
  return o;
}

bool HaveDevice() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();
  return ok;
}

TEST(TransferOptionsTest, AcceptsQwen3Shapes) {
  EXPECT_TRUE(ValidateTransferOptions(Valid()).ok());
}

TEST(TransferOptionsTest, RejectsEachBadField) {
  auto expect_invalid = [](TransferOptions o) {
    EXPECT_EQ(ValidateTransferOptions(o).code(), absl::StatusCode::kInvalidArgument);
  };
  TransferOptions o = Valid();
  o.ns = "";
  expect_invalid(o);
  o = Valid();
  o.head_dim = 96;
  expect_invalid(o);
  o = Valid();
  o.num_kv_heads = 0;
  expect_invalid(o);
  o = Valid();
  o.num_layers = 2000;
  expect_invalid(o);
  o = Valid();
  o.sink_blocks = -1;
  expect_invalid(o);
  o = Valid();
  o.blocks_per_batch = 0;
  expect_invalid(o);
  o = Valid();
  o.pool_slots = 0;
  expect_invalid(o);
}

TEST(TransferOptionsTest, PayloadSizes) {
  const TransferOptions o = Valid();
  // 64 layers x 8 heads x 13824-byte records + the 64-byte header.
  EXPECT_EQ(TilesPayloadBytes(o), 64u + 64u * 8u * 13824u);
  // FP16: K and V, 128 tokens x 128 channels x 2 bytes, per head and layer.
  EXPECT_EQ(Fp16PayloadBytes(o, 128), 64u + 64u * 8u * 2u * 128u * 128u * 2u);
  EXPECT_EQ(Fp16PayloadBytes(o, 5), 64u + 64u * 8u * 2u * 5u * 128u * 2u);
}

TEST(ExporterTest, CreateNeedsClientAndDevice) {
  EXPECT_EQ(Exporter::Create(nullptr, Valid()).status().code(), absl::StatusCode::kInvalidArgument);
  ClientOptions co;
  co.endpoints = {"127.0.0.1:1"};
  auto client = Client::Create(co);
  ASSERT_TRUE(client.ok());
  auto e = Exporter::Create(client->get(), Valid());
  auto i = Importer::Create(client->get(), Valid());
  if (!HaveDevice()) {
    EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(i.status().code(), absl::StatusCode::kFailedPrecondition);
    return;
  }
  EXPECT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(i.ok()) << i.status();
  TransferOptions bad = Valid();
  bad.device = 1000;
  EXPECT_EQ(Exporter::Create(client->get(), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ExporterTest, ExportRejectsMismatchedArguments) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  ClientOptions co;
  co.endpoints = {"127.0.0.1:1"};
  auto client = Client::Create(co);
  ASSERT_TRUE(client.ok());
  TransferOptions o = Valid();
  o.num_layers = 2;
  auto e = Exporter::Create(client->get(), o);
  ASSERT_TRUE(e.ok()) << e.status();
  std::vector<PagedLayer> one(1);
  std::vector<int32_t> ids = {0};
  std::vector<ChainHash> chain(1);
  EXPECT_EQ((*e)->Export(one, CacheDType::kFloat16, ids, chain).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier::client::gpu
