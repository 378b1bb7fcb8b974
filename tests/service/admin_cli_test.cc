// The `kvtier` admin commands (put, lookup, get, stats, health) against a real server.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "kernels/payload.h"
#include "tests/service/harness.h"

namespace kvtier::testing {
namespace {

std::string RunCli(const std::string& args, int* rc) {
  FILE* p = popen((std::string(KVTIER_CLI_BIN) + " " + args + " 2>&1").c_str(), "r");
  std::string out;
  char buf[512];
  while (p && fgets(buf, sizeof(buf), p)) out += buf;
  const int status = p ? pclose(p) : -1;
  *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

TEST(AdminCliTest, PutLookupGetStatsHealthRoundTrip) {
  ServerProcess s;
  ASSERT_TRUE(s.Start({}).ok());
  TempDir d;
  const auto payload = MakePayload(40000, 11);
  WriteFile(d.File("blk.bin"), std::string(payload.begin(), payload.end()));
  const auto chain = RandomChain(2, 11);
  const std::string h0 = kernels::ChainHashHex(chain[0]);
  const std::string h1 = kernels::ChainHashHex(chain[1]);
  const std::string common = absl::StrCat("--endpoints=", s.endpoint(), " --ns=t/m/k4v2_g128/tp0");
  int rc = 0;

  std::string out =
      RunCli(absl::StrCat("put ", common, " --hash=", h0, " --file=", d.File("blk.bin")), &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "stored\n");
  out = RunCli(absl::StrCat("put ", common, " --hash=", h0, " --file=", d.File("blk.bin")), &rc);
  EXPECT_EQ(out, "deduplicated\n");

  out = RunCli(absl::StrCat("lookup ", common, " --hashes=", h0, ",", h1), &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(out, "1 of 2 blocks present\n");

  out = RunCli(absl::StrCat("get ", common, " --hash=", h0, " --out=", d.File("out.bin")), &rc);
  EXPECT_EQ(rc, 0) << out;
  std::ifstream in(d.File("out.bin"), std::ios::binary);
  std::vector<uint8_t> back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(back, payload);
  out = RunCli(absl::StrCat("get ", common, " --hash=", h1), &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_EQ(out, "miss\n");

  out = RunCli(absl::StrCat("stats --endpoints=", s.endpoint()), &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(out.find("puts: stored=1 deduplicated=1"), std::string::npos) << out;
  out = RunCli(absl::StrCat("health --endpoints=", s.endpoint()), &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(out, s.endpoint() + " SERVING\n");

  // A corrupt file is refused with the server's DATA_LOSS, and usage errors exit 2.
  auto bad = payload;
  bad[100] ^= 1;
  WriteFile(d.File("bad.bin"), std::string(bad.begin(), bad.end()));
  out = RunCli(absl::StrCat("put ", common, " --hash=", h1, " --file=", d.File("bad.bin")), &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("DATA_LOSS"), std::string::npos) << out;
  RunCli("lookup --endpoints=" + s.endpoint(), &rc);
  EXPECT_EQ(rc, 2);
}

}  // namespace
}  // namespace kvtier::testing
