// Shared helpers of the UCX tests and benchmark: payloads of a given size, the UCX
// transport list used on loopback, a server over a real TieredStore.
#ifndef KVTIER_TESTS_UCX_UCX_TEST_UTIL_H_
#define KVTIER_TESTS_UCX_UCX_TEST_UTIL_H_

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "common/ucx/ucx_loop.h"
#include "storage/testing.h"
#include "storage/tiered_store.h"

namespace kvtier::ucx_test {

// UCX transports for loopback tests: $KVTIER_UCX_TEST_TLS, else "tcp" (works on any CI
// machine without RDMA or shared-memory permissions).
inline std::string TestTls() {
  const char* tls = std::getenv("KVTIER_UCX_TEST_TLS");
  return tls != nullptr && *tls != '\0' ? std::string(tls) : std::string("tcp");
}

inline ucx::UcxLoopOptions LoopOptions(std::string name) {
  ucx::UcxLoopOptions o;
  o.name = std::move(name);
  o.ucx_config = {{"TLS", TestTls()}};
  // Experiments: $KVTIER_UCX_TEST_BUSY_POLL_US, $KVTIER_UCX_TEST_MAX_SLEEP_MS.
  if (const char* v = std::getenv("KVTIER_UCX_TEST_BUSY_POLL_US")) {
    o.busy_poll = absl::Microseconds(std::atoi(v));
  }
  if (const char* v = std::getenv("KVTIER_UCX_TEST_MAX_SLEEP_MS")) {
    o.max_sleep = absl::Milliseconds(std::atoi(v));
  }
  return o;
}

// A valid k4v2_g128 / head_dim 64 payload of at least `min_bytes` (7296 bytes per tile
// record), random body. Same seed and size, same bytes.
inline storage::Payload PayloadOfAtLeast(uint64_t seed, size_t min_bytes) {
  const size_t tile = storage::testing::RandomPayloadBytes(1, 1) - 64;
  size_t tiles = (min_bytes + tile - 1) / tile;
  int heads = 1;
  while (tiles / heads > 1024) heads *= 2;  // layers <= 1024
  int layers = static_cast<int>((tiles + heads - 1) / heads);
  return storage::testing::RandomPayload(seed, layers, heads);
}

}  // namespace kvtier::ucx_test

#endif  // KVTIER_TESTS_UCX_UCX_TEST_UTIL_H_
