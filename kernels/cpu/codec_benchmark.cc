// CPU codec throughput (one core): MB/s of FP16 K+V for encode (fp16 -> rotate ->
// normalize -> quantize -> pack) and decode (record -> dequantize -> unrotate -> fp16).
//   build/kernels/cpu/codec_benchmark --benchmark_min_time=2
#include <benchmark/benchmark.h>

#include <vector>

#include "kernels/cpu/codec.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/synth.h"

namespace kvtier::kernels::cpu {
namespace {

struct TileInput {
  TileLayout layout;
  std::vector<uint16_t> k16, v16;  // [G][D] fp16, one KV head of one block
};

TileInput MakeInput(Preset preset, int d) {
  TileInput in;
  in.layout = MakeTileLayout(preset, d);
  const int g = in.layout.group_size;
  auto kv = GenerateSynthKv({.tokens = 2 * g,
                             .num_kv_heads = 1,
                             .num_q_heads = 1,
                             .head_dim = d,
                             .num_queries = 1,
                             .seed = 11});
  // Block 1 (not the sink block), head 0.
  for (size_t i = 0; i < static_cast<size_t>(g) * d; ++i) {
    in.k16.push_back(FloatToHalf(kv->k[static_cast<size_t>(g) * d + i]));
    in.v16.push_back(FloatToHalf(kv->v[static_cast<size_t>(g) * d + i]));
  }
  return in;
}

void BM_EncodeTile(benchmark::State& state) {
  const TileInput in =
      MakeInput(static_cast<Preset>(state.range(0)), static_cast<int>(state.range(1)));
  const size_t n = in.k16.size();
  std::vector<float> k(n), v(n);
  std::vector<uint8_t> rec(in.layout.record_bytes);
  for (auto _ : state) {
    for (size_t i = 0; i < n; ++i) {
      k[i] = HalfToFloat(in.k16[i]);
      v[i] = HalfToFloat(in.v16[i]);
    }
    if (!EncodeTile(in.layout, k.data(), v.data(), rec.data()).ok()) state.SkipWithError("encode");
    benchmark::DoNotOptimize(rec.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 4 * n);
  state.SetLabel(std::string(PresetName(static_cast<Preset>(state.range(0)))));
}

void BM_DecompressTile(benchmark::State& state) {
  const TileInput in =
      MakeInput(static_cast<Preset>(state.range(0)), static_cast<int>(state.range(1)));
  const size_t n = in.k16.size();
  std::vector<float> k(n), v(n);
  for (size_t i = 0; i < n; ++i) {
    k[i] = HalfToFloat(in.k16[i]);
    v[i] = HalfToFloat(in.v16[i]);
  }
  std::vector<uint8_t> rec(in.layout.record_bytes);
  if (!EncodeTile(in.layout, k.data(), v.data(), rec.data()).ok()) state.SkipWithError("encode");
  std::vector<uint16_t> k16(n), v16(n);
  for (auto _ : state) {
    DecompressTile(in.layout, rec.data(), k16.data(), v16.data());
    benchmark::DoNotOptimize(k16.data());
    benchmark::DoNotOptimize(v16.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 4 * n);
  state.SetLabel(std::string(PresetName(static_cast<Preset>(state.range(0)))));
}

void BM_DecodeTileRotated(benchmark::State& state) {
  const TileInput in =
      MakeInput(static_cast<Preset>(state.range(0)), static_cast<int>(state.range(1)));
  const size_t n = in.k16.size();
  std::vector<float> k(n), v(n);
  for (size_t i = 0; i < n; ++i) {
    k[i] = HalfToFloat(in.k16[i]);
    v[i] = HalfToFloat(in.v16[i]);
  }
  std::vector<uint8_t> rec(in.layout.record_bytes);
  if (!EncodeTile(in.layout, k.data(), v.data(), rec.data()).ok()) state.SkipWithError("encode");
  for (auto _ : state) {
    DecodeTile(in.layout, rec.data(), k.data(), v.data());
    benchmark::DoNotOptimize(k.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 4 * n);
  state.SetLabel(std::string(PresetName(static_cast<Preset>(state.range(0)))));
}

void Args(benchmark::internal::Benchmark* b) {
  for (Preset p : {Preset::kK4V2G128, Preset::kK4V4G128, Preset::kK4V2G64}) {
    for (int d : {64, 128, 256}) b->Args({static_cast<int64_t>(p), d});
  }
  b->ArgNames({"preset", "D"});
}

BENCHMARK(BM_EncodeTile)->Apply(Args);
BENCHMARK(BM_DecompressTile)->Apply(Args);
BENCHMARK(BM_DecodeTileRotated)->Apply(Args);

}  // namespace
}  // namespace kvtier::kernels::cpu
