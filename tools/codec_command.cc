// `kvtier codec ...`: the KVarN codec on the CPU from the command line (issue 2).
// Subcommands: encode, decode, attend, inspect, eval, synth, tiles, demo. See Usage().
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/codec.h"
#include "kernels/cpu/evaluate.h"
#include "kernels/cpu/sequence.h"
#include "kernels/cpu/synth.h"
#include "tools/codec_file.h"
#include "tools/codec_npy.h"
#include "tools/command.h"

namespace kvtier::tools {
namespace {

using kernels::PayloadView;
using kernels::Preset;
using kernels::cpu::AttentionInputs;
using kernels::cpu::MethodResult;
using kernels::cpu::SequenceOptions;

constexpr const char kUsage[] = R"(usage: kvtier codec <subcommand> [flags]

KVarN KV-cache codec on the CPU (docs/codec.md). K and V files are .npy arrays
[tokens, kv_heads, head_dim], float16 or float32, C order.

  encode  --k K.npy --v V.npy --out F [--preset P] [--sink-blocks N] [--iterations I]
          Compress into a codec file: one block payload per G tokens; the first
          --sink-blocks blocks (default 1) and a partial tail stay FP16 (rotated).
  decode  F --out-k K.npy --out-v V.npy [--dtype float16|float32]
          Dequantize back to [tokens, kv_heads, head_dim] (default float32).
  attend  F --q Q.npy --out O.npy [--float64]
          Decode attention of q [q_heads, head_dim] (or [n, q_heads, head_dim]) over
          all tokens, reading the compressed blocks; softmax scale 1/sqrt(head_dim).
  inspect F
          Header, blocks, sizes, bits per element, compression ratio.
  eval    --k K.npy --v V.npy --q Q.npy [--preset P] [--sink-blocks N] [--iterations I]
          Accuracy of KVarN vs plain RTN (KIVI-style) and FP8 e4m3, vs float64.
  synth   [--out-dir DIR] [--tokens N] [--kv-heads H] [--q-heads H] [--head-dim D]
          [--queries N] [--seed S] [--dtype float16|float32]
          Write synthetic K.npy, V.npy, Q.npy ([queries, q_heads, head_dim]) to DIR.
  tiles   --k K.npy --v V.npy --out R.bin [--preset P] [--iterations I]
          Raw tile records [blocks][kv_heads][record] of every full block: no header,
          no sink (the bytes a KVarN paged cache holds).
  demo    [--tokens N] [--kv-heads H] [--q-heads H] [--head-dim D] [--queries N] [--seed S]
          Synthetic KV -> encode -> evaluate; prints a table.

Presets: k4v2_g128 (default), k4v4_g128, k4v2_g64, k4v4_g64. head_dim: 64, 128, 256.
)";

// Exit codes (tools/command.h): 0 success, 1 failure, 2 usage error.
constexpr int kFailure = 1;
constexpr int kUsageError = 2;

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;  // "--k" -> "K.npy"; switches map to "1"
};

const char* const kSwitches[] = {"--float64", "--help", "-h"};

absl::StatusOr<Args> ParseArgs(int argc, char** argv, int first) {
  Args a;
  for (int i = first; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("-", 0) != 0 || s == "-") {
      a.positional.push_back(s);
      continue;
    }
    bool is_switch = false;
    for (const char* sw : kSwitches) is_switch = is_switch || s == sw;
    if (is_switch) {
      a.flags[s] = "1";
      continue;
    }
    const size_t eq = s.find('=');
    if (eq != std::string::npos) {
      a.flags[s.substr(0, eq)] = s.substr(eq + 1);
    } else if (i + 1 < argc) {
      a.flags[s] = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("flag ", s, " needs a value"));
    }
  }
  return a;
}

// Usage errors are kInvalidArgument with this prefix, so main can tell them apart.
constexpr char kUsagePrefix[] = "usage: ";

absl::Status UsageError(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(kUsagePrefix, what));
}

absl::Status CheckKnown(const Args& a, std::initializer_list<const char*> known,
                        size_t max_positional) {
  for (const auto& [k, v] : a.flags) {
    bool ok = false;
    for (const char* n : known) ok = ok || k == n;
    if (!ok) return UsageError(absl::StrCat("unknown flag ", k));
  }
  if (a.positional.size() > max_positional) {
    return UsageError(absl::StrCat("unexpected argument ", a.positional[max_positional]));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Required(const Args& a, const char* flag) {
  auto it = a.flags.find(flag);
  if (it == a.flags.end() || it->second.empty()) return UsageError(absl::StrCat("missing ", flag));
  return it->second;
}

absl::StatusOr<int> IntFlag(const Args& a, const char* flag, int def, int lo, int hi) {
  auto it = a.flags.find(flag);
  if (it == a.flags.end()) return def;
  int v;
  if (!absl::SimpleAtoi(it->second, &v) || v < lo || v > hi) {
    return UsageError(
        absl::StrCat(flag, " must be an integer in [", lo, ", ", hi, "], got '", it->second, "'"));
  }
  return v;
}

absl::StatusOr<SequenceOptions> CodecFlags(const Args& a) {
  SequenceOptions o;
  auto it = a.flags.find("--preset");
  if (it != a.flags.end()) {
    std::optional<Preset> p = kernels::PresetFromName(it->second);
    if (!p) {
      return UsageError(absl::StrCat("unknown preset '", it->second,
                                     "' (k4v2_g128, k4v4_g128, k4v2_g64, k4v4_g64)"));
    }
    o.preset = *p;
  }
  KVTIER_ASSIGN_OR_RETURN(o.sink_blocks, IntFlag(a, "--sink-blocks", 1, 0, 255));
  KVTIER_ASSIGN_OR_RETURN(o.codec.iterations, IntFlag(a, "--iterations", 8, 0, 64));
  return o;
}

absl::StatusOr<NpyDtype> DtypeFlag(const Args& a, NpyDtype def) {
  auto it = a.flags.find("--dtype");
  if (it == a.flags.end()) return def;
  if (it->second == "float16" || it->second == "fp16") return NpyDtype::kFloat16;
  if (it->second == "float32" || it->second == "fp32") return NpyDtype::kFloat32;
  return UsageError(absl::StrCat("--dtype must be float16 or float32, got '", it->second, "'"));
}

struct KvArrays {
  NpyArray k, v;
  int tokens = 0, heads = 0, dim = 0;
};

// Reads K and V and checks they are [tokens, kv_heads, head_dim] with the same shape.
absl::StatusOr<KvArrays> ReadKv(const Args& a) {
  KVTIER_ASSIGN_OR_RETURN(std::string kp, Required(a, "--k"));
  KVTIER_ASSIGN_OR_RETURN(std::string vp, Required(a, "--v"));
  KvArrays kv;
  KVTIER_ASSIGN_OR_RETURN(kv.k, ReadNpy(kp));
  KVTIER_ASSIGN_OR_RETURN(kv.v, ReadNpy(vp));
  if (kv.k.shape.size() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat(kp, ": shape ", kv.k.ShapeString(), " is not [tokens, kv_heads, head_dim]"));
  }
  if (kv.v.shape != kv.k.shape) {
    return absl::InvalidArgumentError(
        absl::StrCat(vp, ": shape ", kv.v.ShapeString(), " differs from K's ", kv.k.ShapeString()));
  }
  if (kv.k.shape[0] > (int64_t{1} << 30) || kv.k.shape[1] > 65535 || kv.k.shape[2] > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(kp, ": shape ", kv.k.ShapeString(), " too large"));
  }
  kv.tokens = static_cast<int>(kv.k.shape[0]);
  kv.heads = static_cast<int>(kv.k.shape[1]);
  kv.dim = static_cast<int>(kv.k.shape[2]);
  absl::Status s = kernels::cpu::CheckSequenceShape(kv.dim, kv.heads, kv.tokens);
  if (!s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kp, ": shape ", kv.k.ShapeString(), ": ", s.message()));
  }
  return kv;
}

// Q as [n, q_heads, head_dim] (a 2-D [q_heads, head_dim] is n = 1).
struct Queries {
  NpyArray q;
  int n = 0, heads = 0;
};

absl::StatusOr<Queries> ReadQueries(const std::string& path, int head_dim, int kv_heads) {
  Queries r;
  KVTIER_ASSIGN_OR_RETURN(r.q, ReadNpy(path));
  const auto& s = r.q.shape;
  if (s.size() == 2) {
    r.n = 1;
    r.heads = static_cast<int>(s[0]);
  } else if (s.size() == 3) {
    r.n = static_cast<int>(s[0]);
    r.heads = static_cast<int>(s[1]);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": shape ", r.q.ShapeString(), " is not [q_heads, head_dim]"));
  }
  if (s.back() != head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": head_dim ", s.back(), " differs from the cache's ", head_dim));
  }
  if (r.n < 1 || r.heads < 1 || r.heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", r.heads, " query heads is not a positive multiple of ", kv_heads, " KV heads"));
  }
  return r;
}

absl::StatusOr<std::vector<uint8_t>> ReadCodecFileBytes(const Args& a) {
  if (a.positional.empty()) return UsageError("missing the codec file argument");
  return ReadFileBytes(a.positional[0]);
}

absl::Status PrefixPath(const std::string& path, absl::Status s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
}

// ------------------------------------------------------------------ subcommands

absl::Status Encode(const Args& a) {
  KVTIER_RETURN_IF_ERROR(
      CheckKnown(a, {"--k", "--v", "--out", "--preset", "--sink-blocks", "--iterations"}, 0));
  KVTIER_ASSIGN_OR_RETURN(std::string out, Required(a, "--out"));
  KVTIER_ASSIGN_OR_RETURN(SequenceOptions opt, CodecFlags(a));
  KVTIER_ASSIGN_OR_RETURN(KvArrays kv, ReadKv(a));
  KVTIER_ASSIGN_OR_RETURN(auto payloads,
                          kernels::cpu::EncodeSequence(opt, kv.dim, kv.heads, kv.tokens,
                                                       kv.k.data.data(), kv.v.data.data()));
  KvFileInfo info{opt.preset, opt.sink_blocks, kv.dim, kv.heads, kv.tokens};
  const std::vector<uint8_t> bytes = SerializeKvFile(info, payloads);
  KVTIER_RETURN_IF_ERROR(WriteFileBytes(out, bytes));
  const double fp16 = 4.0 * kv.tokens * kv.heads * kv.dim;
  std::printf("wrote %s: %zu blocks, %zu bytes (%.2fx smaller than FP16)\n", out.c_str(),
              payloads.size(), bytes.size(), fp16 / bytes.size());
  return absl::OkStatus();
}

absl::StatusOr<std::pair<std::vector<uint8_t>, KvFile>> LoadCodecFile(const Args& a) {
  KVTIER_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, ReadCodecFileBytes(a));
  std::pair<std::vector<uint8_t>, KvFile> r;
  r.first = std::move(bytes);
  absl::StatusOr<KvFile> f = ParseKvFile(r.first);  // views into r.first's heap buffer
  if (!f.ok()) return PrefixPath(a.positional[0], f.status());
  r.second = *std::move(f);
  return r;
}

absl::Status Decode(const Args& a) {
  KVTIER_RETURN_IF_ERROR(CheckKnown(a, {"--out-k", "--out-v", "--dtype"}, 1));
  KVTIER_ASSIGN_OR_RETURN(std::string ok, Required(a, "--out-k"));
  KVTIER_ASSIGN_OR_RETURN(std::string ov, Required(a, "--out-v"));
  KVTIER_ASSIGN_OR_RETURN(NpyDtype dtype, DtypeFlag(a, NpyDtype::kFloat32));
  KVTIER_ASSIGN_OR_RETURN(auto file, LoadCodecFile(a));
  const KvFile& f = file.second;
  std::vector<float> k, v;
  KVTIER_RETURN_IF_ERROR(kernels::cpu::DecodeSequence(f.blocks, &k, &v));
  const std::vector<int64_t> shape = {f.info.tokens, f.info.kv_heads, f.info.head_dim};
  KVTIER_RETURN_IF_ERROR(WriteNpy(ok, shape, k.data(), dtype));
  KVTIER_RETURN_IF_ERROR(WriteNpy(ov, shape, v.data(), dtype));
  std::printf("wrote %s and %s: (%lld, %d, %d)\n", ok.c_str(), ov.c_str(),
              static_cast<long long>(f.info.tokens), f.info.kv_heads, f.info.head_dim);
  return absl::OkStatus();
}

absl::Status Attend(const Args& a) {
  KVTIER_RETURN_IF_ERROR(CheckKnown(a, {"--q", "--out", "--float64"}, 1));
  KVTIER_ASSIGN_OR_RETURN(std::string qp, Required(a, "--q"));
  KVTIER_ASSIGN_OR_RETURN(std::string out, Required(a, "--out"));
  KVTIER_ASSIGN_OR_RETURN(auto file, LoadCodecFile(a));
  const KvFile& f = file.second;
  KVTIER_ASSIGN_OR_RETURN(Queries q, ReadQueries(qp, f.info.head_dim, f.info.kv_heads));
  KVTIER_ASSIGN_OR_RETURN(auto sections, kernels::cpu::SectionsOf(f.blocks));
  const auto layout = kernels::MakeTileLayout(f.info.preset, f.info.head_dim);
  const size_t per = static_cast<size_t>(q.heads) * f.info.head_dim;
  std::vector<float> o(q.n * per);
  const float scale = 1.0f / std::sqrt(static_cast<float>(f.info.head_dim));
  for (int i = 0; i < q.n; ++i) {
    KVTIER_RETURN_IF_ERROR(kernels::cpu::AttendReference(
        layout, f.info.kv_heads, sections, q.q.data.data() + i * per, q.heads, scale,
        o.data() + i * per, nullptr, a.flags.count("--float64") > 0));
  }
  KVTIER_RETURN_IF_ERROR(WriteNpy(out, q.q.shape, o.data(), NpyDtype::kFloat32));
  std::printf("wrote %s: %s\n", out.c_str(), q.q.ShapeString().c_str());
  return absl::OkStatus();
}

absl::Status Inspect(const Args& a) {
  KVTIER_RETURN_IF_ERROR(CheckKnown(a, {}, 1));
  KVTIER_ASSIGN_OR_RETURN(auto file, LoadCodecFile(a));
  const KvFile& f = file.second;
  const auto layout = kernels::MakeTileLayout(f.info.preset, f.info.head_dim);
  std::printf("file         %s (%zu bytes, format version %d)\n", a.positional[0].c_str(),
              file.first.size(), kKvFileVersion);
  std::printf("preset       %s (key %d bits, value %d bits, G = %d)\n",
              std::string(kernels::PresetName(f.info.preset)).c_str(), layout.key_bits,
              layout.value_bits, layout.group_size);
  std::printf("shape        tokens %lld, kv_heads %d, head_dim %d\n",
              static_cast<long long>(f.info.tokens), f.info.kv_heads, f.info.head_dim);
  std::printf("tile record  %zu bytes (%zu data + %zu padding), %.3f bits/element\n",
              layout.record_bytes, layout.data_end, layout.record_bytes - layout.data_end,
              kernels::BitsPerElement(layout));
  std::printf("\n%5s  %-6s %6s  %-10s %10s\n", "block", "kind", "tokens", "flags", "bytes");
  size_t tiles = 0, fp16 = 0, stored = 0;
  for (size_t i = 0; i < f.blocks.size(); ++i) {
    const auto& h = f.blocks[i].header;
    const bool t = h.encoding == kernels::BlockEncoding::kTiles;
    std::string flags;
    if (h.flags & kernels::kFlagSink) flags += "sink ";
    if (h.flags & kernels::kFlagTail) flags += "tail";
    if (flags.empty()) flags = "-";
    std::printf("%5zu  %-6s %6u  %-10s %10zu\n", i, t ? "tiles" : "fp16", h.token_count,
                flags.c_str(), h.total_bytes());
    (t ? tiles : fp16)++;
    stored += h.total_bytes();
  }
  const double elements = 2.0 * f.info.tokens * f.info.kv_heads * f.info.head_dim;
  std::printf("\nblocks       %zu compressed, %zu fp16\n", tiles, fp16);
  std::printf("payloads     %zu bytes, %.3f bits/element (headers and FP16 blocks included)\n",
              stored, stored * 8.0 / elements);
  std::printf("ratio        %.2fx smaller than FP16 (%.0f bytes)\n", elements * 2.0 / stored,
              elements * 2.0);
  return absl::OkStatus();
}

void PrintTable(const std::vector<MethodResult>& rows, bool with_speed) {
  std::printf("%-18s %6s %6s %8s %8s %8s %8s %8s %8s %9s %9s", "method", "ratio", "bits", "K err",
              "V err", "logit", "logit", "logit", "attn", "attn", "attn KL");
  if (with_speed) std::printf(" %9s %9s", "encode", "decode");
  std::printf("\n%-18s %6s %6s %8s %8s %8s %8s %8s %8s %9s %9s", "", "x", "/elem", "rel", "rel",
              "mean|e|", "std", "max|e|", "rel L2", "cosine", "mean");
  if (with_speed) std::printf(" %9s %9s", "MB/s", "MB/s");
  std::printf("\n");
  for (const auto& r : rows) {
    const auto& m = r.metrics;
    std::printf("%-18s %6.2f %6.3f %8.4f %8.4f %8.4f %8.4f %8.4f %8.4f %9.6f %9.2e", r.name.c_str(),
                16.0 / m.bits_per_element, m.bits_per_element, m.k_rel_error, m.v_rel_error,
                m.logit_error_mean, m.logit_error_std, m.logit_error_max, m.attn_rel_l2,
                m.attn_cosine, m.attn_kl_mean);
    if (with_speed) {
      if (r.encode_mb_per_s > 0) {
        std::printf(" %9.1f %9.1f", r.encode_mb_per_s, r.decode_mb_per_s);
      } else {
        std::printf(" %9s %9s", "-", "-");
      }
    }
    std::printf("\n");
  }
}

absl::Status Eval(const Args& a) {
  KVTIER_RETURN_IF_ERROR(
      CheckKnown(a, {"--k", "--v", "--q", "--preset", "--sink-blocks", "--iterations"}, 0));
  KVTIER_ASSIGN_OR_RETURN(std::string qp, Required(a, "--q"));
  KVTIER_ASSIGN_OR_RETURN(SequenceOptions opt, CodecFlags(a));
  KVTIER_ASSIGN_OR_RETURN(KvArrays kv, ReadKv(a));
  KVTIER_ASSIGN_OR_RETURN(Queries q, ReadQueries(qp, kv.dim, kv.heads));
  AttentionInputs in{kv.tokens, kv.heads,         q.heads,          kv.dim,
                     q.n,       kv.k.data.data(), kv.v.data.data(), q.q.data.data()};
  KVTIER_ASSIGN_OR_RETURN(auto rows, kernels::cpu::EvaluateCodecs(in, opt));
  std::printf(
      "tokens %d, kv_heads %d, q_heads %d, head_dim %d, queries %d; sink blocks %d, "
      "iterations %d; errors vs a float64 reference\n\n",
      kv.tokens, kv.heads, q.heads, kv.dim, q.n, opt.sink_blocks, opt.codec.iterations);
  PrintTable(rows, /*with_speed=*/false);
  return absl::OkStatus();
}

absl::StatusOr<kernels::cpu::SynthOptions> SynthFlags(const Args& a, kernels::cpu::SynthOptions o) {
  KVTIER_ASSIGN_OR_RETURN(o.tokens, IntFlag(a, "--tokens", o.tokens, 2, 1 << 22));
  KVTIER_ASSIGN_OR_RETURN(o.num_kv_heads, IntFlag(a, "--kv-heads", o.num_kv_heads, 1, 256));
  KVTIER_ASSIGN_OR_RETURN(o.num_q_heads, IntFlag(a, "--q-heads", o.num_q_heads, 1, 1024));
  KVTIER_ASSIGN_OR_RETURN(o.head_dim, IntFlag(a, "--head-dim", o.head_dim, 1, 65535));
  KVTIER_ASSIGN_OR_RETURN(o.num_queries, IntFlag(a, "--queries", o.num_queries, 1, 4096));
  int seed;
  KVTIER_ASSIGN_OR_RETURN(seed, IntFlag(a, "--seed", static_cast<int>(o.seed), 0, 1 << 30));
  o.seed = static_cast<uint64_t>(seed);
  return o;
}

absl::Status Synth(const Args& a) {
  KVTIER_RETURN_IF_ERROR(CheckKnown(a,
                                    {"--out-dir", "--tokens", "--kv-heads", "--q-heads",
                                     "--head-dim", "--queries", "--seed", "--dtype"},
                                    0));
  KVTIER_ASSIGN_OR_RETURN(auto o, SynthFlags(a, {}));
  KVTIER_ASSIGN_OR_RETURN(NpyDtype dtype, DtypeFlag(a, NpyDtype::kFloat16));
  const std::string dir = a.flags.count("--out-dir") ? a.flags.at("--out-dir") : ".";
  KVTIER_ASSIGN_OR_RETURN(auto kv, kernels::cpu::GenerateSynthKv(o));
  const std::vector<int64_t> kv_shape = {kv.tokens, kv.num_kv_heads, kv.head_dim};
  const std::vector<int64_t> q_shape = {kv.num_queries, kv.num_q_heads, kv.head_dim};
  KVTIER_RETURN_IF_ERROR(WriteNpy(dir + "/K.npy", kv_shape, kv.k.data(), dtype));
  KVTIER_RETURN_IF_ERROR(WriteNpy(dir + "/V.npy", kv_shape, kv.v.data(), dtype));
  KVTIER_RETURN_IF_ERROR(WriteNpy(dir + "/Q.npy", q_shape, kv.q.data(), dtype));
  std::printf("wrote %s/{K,V}.npy (%d, %d, %d) and %s/Q.npy (%d, %d, %d), seed %llu\n", dir.c_str(),
              kv.tokens, kv.num_kv_heads, kv.head_dim, dir.c_str(), kv.num_queries, kv.num_q_heads,
              kv.head_dim, static_cast<unsigned long long>(o.seed));
  return absl::OkStatus();
}

absl::Status Tiles(const Args& a) {
  KVTIER_RETURN_IF_ERROR(CheckKnown(a, {"--k", "--v", "--out", "--preset", "--iterations"}, 0));
  KVTIER_ASSIGN_OR_RETURN(std::string out, Required(a, "--out"));
  KVTIER_ASSIGN_OR_RETURN(SequenceOptions opt, CodecFlags(a));
  KVTIER_ASSIGN_OR_RETURN(KvArrays kv, ReadKv(a));
  const auto layout = kernels::MakeTileLayout(opt.preset, kv.dim);
  KVTIER_ASSIGN_OR_RETURN(auto bytes,
                          kernels::cpu::EncodeTiles(layout, kv.heads, kv.tokens, kv.k.data.data(),
                                                    kv.v.data.data(), opt.codec));
  KVTIER_RETURN_IF_ERROR(WriteFileBytes(out, bytes));
  std::printf("wrote %s: %d blocks x %d kv_heads x %zu-byte records (%d trailing tokens dropped)\n",
              out.c_str(), kv.tokens / layout.group_size, kv.heads, layout.record_bytes,
              kv.tokens % layout.group_size);
  return absl::OkStatus();
}

absl::Status Demo(const Args& a) {
  KVTIER_RETURN_IF_ERROR(CheckKnown(
      a, {"--tokens", "--kv-heads", "--q-heads", "--head-dim", "--queries", "--seed"}, 0));
  kernels::cpu::SynthOptions defaults;
  defaults.tokens = 4096;
  defaults.num_kv_heads = 8;
  defaults.num_q_heads = 32;
  defaults.head_dim = 128;
  defaults.num_queries = 4;
  KVTIER_ASSIGN_OR_RETURN(auto o, SynthFlags(a, defaults));
  std::printf("kvtier codec demo: the KVarN codec on the CPU (one core) on synthetic KV\n");
  std::printf(
      "synthetic KV: %d tokens, %d KV heads, %d query heads, head_dim %d, %d queries, "
      "seed %llu\n",
      o.tokens, o.num_kv_heads, o.num_q_heads, o.head_dim, o.num_queries,
      static_cast<unsigned long long>(o.seed));
  std::printf(
      "(post-RoPE keys with outlier channels, Student-t noise, an attention sink; "
      "docs/codec.md)\n");
  KVTIER_ASSIGN_OR_RETURN(auto kv, kernels::cpu::GenerateSynthKv(o));
  AttentionInputs in{kv.tokens,      kv.num_kv_heads, kv.num_q_heads, kv.head_dim,
                     kv.num_queries, kv.k.data(),     kv.v.data(),    kv.q.data()};
  for (Preset p : {Preset::kK4V2G128, Preset::kK4V4G128}) {
    SequenceOptions opt;
    opt.preset = p;
    KVTIER_ASSIGN_OR_RETURN(auto rows, kernels::cpu::EvaluateCodecs(in, opt));
    std::printf(
        "\n== %s (first block and partial tail kept FP16; every method gets the same "
        "FP16 tokens)\n",
        std::string(kernels::PresetName(p)).c_str());
    PrintTable(rows, /*with_speed=*/true);
  }
  std::printf(
      "\nratio = 16 / bits per element, all metadata, block headers and FP16 sink/tail "
      "included;\nerrors vs a float64 reference; MB/s: FP16 K+V bytes per second of one core's CPU "
      "time\n"
      "(encode: blocks -> payloads; decode: payloads -> fp32 K, V).\n");
  return absl::OkStatus();
}

int RunCodec(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? kUsageError : 0;
  }
  const std::string sub = argv[1];
  absl::StatusOr<Args> args = ParseArgs(argc, argv, 2);
  if (args.ok() && (args->flags.count("--help") || args->flags.count("-h"))) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  using Fn = absl::Status (*)(const Args&);
  const std::map<std::string, Fn> subs = {
      {"encode", Encode}, {"decode", Decode}, {"attend", Attend}, {"inspect", Inspect},
      {"eval", Eval},     {"synth", Synth},   {"tiles", Tiles},   {"demo", Demo}};
  auto it = subs.find(sub);
  if (it == subs.end()) {
    std::fprintf(stderr, "kvtier codec: unknown subcommand '%s'\n\n%s", sub.c_str(), kUsage);
    return kUsageError;
  }
  absl::Status s = args.ok() ? it->second(*args) : UsageError(std::string(args.status().message()));
  if (s.ok()) return 0;
  const std::string msg(s.message());
  if (s.code() == absl::StatusCode::kInvalidArgument && msg.rfind(kUsagePrefix, 0) == 0) {
    std::fprintf(stderr, "kvtier codec %s: %s\n(see `kvtier codec --help`)\n", sub.c_str(),
                 msg.substr(sizeof(kUsagePrefix) - 1).c_str());
    return kUsageError;
  }
  std::fprintf(stderr, "kvtier codec %s: error: %s\n", sub.c_str(), s.ToString().c_str());
  return kFailure;
}

}  // namespace
}  // namespace kvtier::tools

KVTIER_REGISTER_COMMAND(codec, "codec",
                        "KVarN codec on the CPU: encode, decode, attend, inspect, eval, synth, "
                        "tiles, demo",
                        kvtier::tools::RunCodec);
