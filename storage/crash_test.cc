// Crash safety: a child process (storage_crash_child) writes blocks with sync on and is
// killed with SIGKILL at random moments, over many rounds. After each kill the store is
// reopened here: every block whose Put completed (acked by the child) is present and
// identical, every block returned validates, and nothing is reported corrupt.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include "kernels/payload.h"
#include "storage/testing.h"
#include "storage/tiered_store.h"

namespace kvtier::storage {
namespace {

std::vector<uint64_t> ReadAcks(const std::string& path) {
  std::vector<uint64_t> ids;
  std::ifstream in(path, std::ios::binary);
  unsigned char b[8];
  while (in.read(reinterpret_cast<char*>(b), 8)) {  // a torn last record is ignored
    uint64_t id = 0;
    for (int k = 0; k < 8; ++k) id |= uint64_t{b[k]} << (8 * k);
    ids.push_back(id);
  }
  return ids;
}

TEST(StorageCrashTest, SyncedPutsSurviveSigkill) {
  testing::TempDir dir;
  const std::string db = dir.path() + "/db";
  std::mt19937_64 rng(std::random_device{}());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(12);
  std::vector<uint64_t> all_acked;
  int rounds = 0;
  for (; rounds < 25 && std::chrono::steady_clock::now() < deadline; ++rounds) {
    const std::string ack = dir.path() + "/ack" + std::to_string(rounds);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const std::string seed = std::to_string(rounds + 1);
      execl(KVTIER_CRASH_CHILD, KVTIER_CRASH_CHILD, db.c_str(), ack.c_str(), seed.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    // Most rounds: let the child ack a first block (so the kill lands among Puts), then
    // kill at a random moment. Every fifth round: kill at a random moment of its start-up
    // (open and WAL recovery).
    if (rounds % 5 != 4) {
      const auto wait_until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (std::filesystem::exists(ack) ? std::filesystem::file_size(ack) < 8 : true) {
        ASSERT_LT(std::chrono::steady_clock::now(), wait_until) << "child never acked a Put";
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 250));
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child exited early with status " << status;

    const std::vector<uint64_t> acked = ReadAcks(ack);
    all_acked.insert(all_acked.end(), acked.begin(), acked.end());
    TieredStoreOptions o;
    o.memory_capacity_bytes = uint64_t{8} << 20;
    o.disk_path = db;
    o.disk_capacity_bytes = uint64_t{1} << 40;
    absl::StatusOr<std::unique_ptr<TieredStore>> store = TieredStore::Open(o);
    ASSERT_TRUE(store.ok()) << "round " << rounds << ": " << store.status();
    // Every acked block of every round so far, plus the few after the last ack that may
    // or may not have landed.
    std::vector<BlockKey> keys;
    std::vector<uint64_t> ids = all_acked;
    const uint64_t next = (rounds + 1) * 1'000'000ull + acked.size();
    for (uint64_t id = next; id < next + 3; ++id) ids.push_back(id);
    for (uint64_t id : ids) keys.push_back(testing::Key("crash/ns", id));
    std::vector<absl::StatusOr<Lease>> got = (*store)->Get(keys);
    for (size_t i = 0; i < ids.size(); ++i) {
      ASSERT_TRUE(got[i].ok()) << "id " << ids[i] << ": " << got[i].status();
      const bool must = i < all_acked.size();
      if (!*got[i]) {
        ASSERT_FALSE(must) << "round " << rounds << ": acked block " << ids[i] << " lost";
        continue;
      }
      ASSERT_TRUE(kernels::ValidatePayload(*got[i]->payload).ok());
      ASSERT_EQ(*got[i]->payload, *testing::RandomPayload(ids[i], 1 + ids[i] % 16));
    }
    EXPECT_EQ((*store)->Stats().corrupt_dropped, 0u);
  }
  EXPECT_GE(rounds, 8);
  EXPECT_GE(all_acked.size(), static_cast<size_t>(rounds * 4 / 5)) << "too few acked Puts";
  std::printf("%d rounds, %zu acked blocks verified\n", rounds, all_acked.size());
}

}  // namespace
}  // namespace kvtier::storage
