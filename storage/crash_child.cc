// storage_crash_child DIR ACK_FILE SEED: the writer of storage_crash_test. Opens a
// TieredStore on DIR with sync_writes, then Puts blocks with ids SEED*1e6 + 0, 1, 2, ...
// forever (payload: testing::RandomPayload(id, 1 + id % 16), so values span inline and
// blob sizes). After each Put returns OK it appends the id (u64 little-endian) to
// ACK_FILE and fdatasyncs it: an acked id is one whose Put completed with sync on.
// The parent kills it with SIGKILL. Exit code 1 when the store cannot be used.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "storage/testing.h"
#include "storage/tiered_store.h"

int main(int argc, char** argv) {
  using namespace kvtier::storage;
  if (argc != 4) {
    std::fprintf(stderr, "usage: storage_crash_child DIR ACK_FILE SEED\n");
    return 2;
  }
  TieredStoreOptions o;
  o.memory_capacity_bytes = uint64_t{8} << 20;
  o.disk_path = argv[1];
  o.disk_capacity_bytes = uint64_t{1} << 40;
  o.sync_writes = true;
  o.write_through = true;
  absl::StatusOr<std::unique_ptr<TieredStore>> store = TieredStore::Open(o);
  if (!store.ok()) {
    std::fprintf(stderr, "open: %s\n", std::string(store.status().message()).c_str());
    return 1;
  }
  const int ack = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (ack < 0) return 1;
  const uint64_t base = std::strtoull(argv[3], nullptr, 10) * 1'000'000;
  for (uint64_t i = 0;; ++i) {
    const uint64_t id = base + i;
    absl::StatusOr<PutOutcome> r =
        (*store)->Put(testing::Key("crash/ns", id), testing::RandomPayload(id, 1 + id % 16));
    if (!r.ok()) {
      std::fprintf(stderr, "put: %s\n", std::string(r.status().message()).c_str());
      return 1;
    }
    unsigned char b[8];
    for (int k = 0; k < 8; ++k) b[k] = static_cast<unsigned char>(id >> (8 * k));
    if (write(ack, b, 8) != 8 || fdatasync(ack) != 0) return 1;
  }
}
