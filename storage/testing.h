// Helpers for the storage tests and the crash child (not part of the library API).
//
//   Payload p = testing::RandomPayload(/*seed=*/7, /*layers=*/2);   // valid, random body
//   BlockKey k = testing::Key("tenant/a", /*i=*/3);
//   testing::TempDir dir;   // removed (recursively) on destruction
//
// Thread safety: functions are pure; TempDir is not shared between threads.
#ifndef KVTIER_STORAGE_TESTING_H_
#define KVTIER_STORAGE_TESTING_H_

#include <cstdint>
#include <string>

#include "storage/tiered_store.h"

namespace kvtier::storage::testing {

// A valid k4v2_g128 payload (head_dim 64) with `layers` x `heads` tile records of
// pseudo-random bytes drawn from `seed` (never all zero). Same seed, same bytes.
Payload RandomPayload(uint64_t seed, int layers = 1, int heads = 1);

// Payload bytes of RandomPayload(_, layers, heads).
uint64_t RandomPayloadBytes(int layers = 1, int heads = 1);

// A deterministic chain hash for index i (SHA-256 chain from a fixed seed is not needed:
// the tests only need distinct, stable hashes).
ChainHash Hash(uint64_t i);
BlockKey Key(const std::string& ns, uint64_t i, uint32_t part = 0);

// A fresh directory under $TMPDIR (or /tmp), removed recursively on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace kvtier::storage::testing

#endif  // KVTIER_STORAGE_TESTING_H_
