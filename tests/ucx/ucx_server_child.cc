// A kvtier UCX data plane in its own process for the fault tests: RAM-only TieredStore,
// listener on 127.0.0.1 (port 0), every non-empty session token allowed. Prints
// "PORT <n>" on stdout, then serves until stdin closes or the process is killed.
#include <unistd.h>

#include <cstdio>

#include "service/ucx/ucx_server.h"
#include "tests/ucx/ucx_test_util.h"

int main() {
  kvtier::storage::TieredStoreOptions so;
  so.memory_capacity_bytes = uint64_t{1} << 30;
  auto store = kvtier::storage::TieredStore::Open(so);
  if (!store.ok()) {
    std::fprintf(stderr, "store: %s\n", store.status().ToString().c_str());
    return 1;
  }
  kvtier::service::UcxDataPlaneOptions o;
  o.listen_address = "127.0.0.1";
  o.loop = kvtier::ucx_test::LoopOptions("ucx-child-srv");
  auto server = kvtier::service::UcxDataPlane::Start(o, store->get(), {});
  if (!server.ok()) {
    std::fprintf(stderr, "server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("PORT %u\n", static_cast<unsigned>((*server)->port()));
  std::fflush(stdout);
  char buf[64];
  while (read(STDIN_FILENO, buf, sizeof(buf)) > 0) {
  }
  (*server)->Stop();
  return 0;
}
