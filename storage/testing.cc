#include "storage/testing.h"

#include <stdlib.h>

#include <filesystem>
#include <random>
#include <vector>

#include "kernels/payload.h"

namespace kvtier::storage::testing {

Payload RandomPayload(uint64_t seed, int layers, int heads) {
  kernels::PayloadHeader h =
      kernels::MakeTilesHeader(kernels::Preset::kK4V2G128, 64, layers, heads);
  std::vector<uint8_t> body(h.layer_section_bytes * layers);
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 1);
  for (size_t i = 0; i < body.size(); i += 8) {
    uint64_t v = rng() | 1;  // never an all-zero word
    for (size_t j = 0; j < 8 && i + j < body.size(); ++j) body[i + j] = uint8_t(v >> (8 * j));
  }
  std::vector<absl::Span<const uint8_t>> sections;
  for (int l = 0; l < layers; ++l) {
    sections.push_back(
        absl::MakeConstSpan(body).subspan(l * h.layer_section_bytes, h.layer_section_bytes));
  }
  absl::StatusOr<std::vector<uint8_t>> p = kernels::BuildPayload(h, sections);
  if (!p.ok()) return nullptr;
  return std::make_shared<const std::vector<uint8_t>>(std::move(p).value());
}

uint64_t RandomPayloadBytes(int layers, int heads) {
  return kernels::MakeTilesHeader(kernels::Preset::kK4V2G128, 64, layers, heads).total_bytes();
}

ChainHash Hash(uint64_t i) {
  ChainHash h{};
  std::mt19937_64 rng(i ^ 0xC0FFEEull);
  for (size_t j = 0; j < h.size(); j += 8) {
    const uint64_t v = rng();
    for (size_t k = 0; k < 8; ++k) h[j + k] = uint8_t(v >> (8 * k));
  }
  return h;
}

BlockKey Key(const std::string& ns, uint64_t i, uint32_t part) {
  return BlockKey{ns, Hash(i), part};
}

TempDir::TempDir() {
  const char* base = getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/kvtier_storage_XXXXXX";
  if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace kvtier::storage::testing
