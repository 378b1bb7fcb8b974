#include "service/auth.h"

#include <gtest/gtest.h>

namespace kvtier::service {
namespace {

constexpr char kFile[] = R"(# kvtier tokens
reader-1 r tenantA/,tenantB/shared/   # two prefixes
writer-1 rw tenantA/
admin    rw *
wonly    w  tenantC/

split r tenantD/
split w tenantE/
)";

TEST(AuthorizerTest, ParsesTokensPrefixesAndRights) {
  auto a = Authorizer::Parse(kFile);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE((*a)->enabled());
  EXPECT_EQ((*a)->num_tokens(), 5u);

  auto reader = (*a)->Authenticate("Bearer reader-1");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_TRUE(reader->Check("tenantA/m/k4v2_g128/tp0", false).ok());
  EXPECT_TRUE(reader->Check("tenantB/shared/x", false).ok());
  EXPECT_EQ(reader->Check("tenantB/private/x", false).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(reader->Check("tenantA/m", true).code(), absl::StatusCode::kPermissionDenied);

  auto writer = (*a)->Authenticate("Bearer writer-1");
  ASSERT_TRUE(writer.ok());
  EXPECT_TRUE(writer->Check("tenantA/x", true).ok());
  EXPECT_TRUE(writer->Check("tenantA/x", false).ok());
  EXPECT_EQ(writer->Check("tenantAB/x", true).code(), absl::StatusCode::kPermissionDenied);

  auto admin = (*a)->Authenticate("Bearer admin");
  ASSERT_TRUE(admin.ok());
  EXPECT_TRUE(admin->Check("anything/at/all", true).ok());

  auto wonly = (*a)->Authenticate("Bearer wonly");
  ASSERT_TRUE(wonly.ok());
  EXPECT_TRUE(wonly->Check("tenantC/a", true).ok());
  EXPECT_EQ(wonly->Check("tenantC/a", false).code(), absl::StatusCode::kPermissionDenied);
}

TEST(AuthorizerTest, RepeatedTokenLinesAreUnioned) {
  auto a = Authorizer::Parse(kFile);
  ASSERT_TRUE(a.ok());
  auto g = (*a)->Authenticate("Bearer split");
  ASSERT_TRUE(g.ok());
  EXPECT_TRUE(g->Check("tenantD/x", false).ok());
  EXPECT_TRUE(g->Check("tenantE/x", true).ok());
  EXPECT_EQ(g->Check("tenantD/x", true).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(g->Check("tenantE/x", false).code(), absl::StatusCode::kPermissionDenied);
}

TEST(AuthorizerTest, MissingMalformedOrUnknownTokenIsUnauthenticated) {
  auto a = Authorizer::Parse(kFile);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->Authenticate("").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*a)->Authenticate("reader-1").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*a)->Authenticate("Basic reader-1").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*a)->Authenticate("Bearer reader-2").status().code(),
            absl::StatusCode::kUnauthenticated);
  // Comments are not part of a token.
  EXPECT_EQ((*a)->Authenticate("Bearer #").status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(AuthorizerTest, MalformedLinesAreRejectedWithLineNumber) {
  auto bad_rights = Authorizer::Parse("ok r a/\nt x a/\n");
  ASSERT_EQ(bad_rights.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_rights.status().message().find("line 2"), std::string::npos) << bad_rights.status();
  EXPECT_EQ(Authorizer::Parse("lonely-token\n").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Authorizer::Parse("t r a/ extra\n").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Authorizer::Parse("t r ,,,\n").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Authorizer::FromFile("/nonexistent/kvtier-tokens").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(AuthorizerTest, AllowAllGrantsEverythingWithoutToken) {
  auto a = Authorizer::AllowAll();
  EXPECT_FALSE(a->enabled());
  auto g = a->Authenticate("");
  ASSERT_TRUE(g.ok());
  EXPECT_TRUE(g->unrestricted());
  EXPECT_TRUE(g->Check("x", true).ok());
}

}  // namespace
}  // namespace kvtier::service
