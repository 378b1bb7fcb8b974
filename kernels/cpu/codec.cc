#include "kernels/cpu/codec.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/codec_internal.h"
#include "kernels/cpu/half.h"

static_assert(std::endian::native == std::endian::little,
              "the tile record is little-endian; this codec assumes a little-endian host");

// The hot elementwise loops get an AVX2 clone next to the baseline one, picked at load
// time. Lane width never changes a result here: every operation is an exactly rounded IEEE
// add, subtract, multiply, divide or sqrt on independent lanes, in the same order, and
// -ffp-contract=off keeps multiplies and adds unfused.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define KVTIER_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KVTIER_VECTOR_CLONES
#endif

namespace kvtier::kernels::cpu {
namespace internal {

float ExpF(float x) { return static_cast<float>(std::exp(static_cast<double>(x))); }
float LogF(float x) { return static_cast<float>(std::log(static_cast<double>(x))); }

float StdDev(const float* v, int n, int stride) {
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) sum += v[static_cast<size_t>(i) * stride];
  const float mean = sum / static_cast<float>(n);
  float ss = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float d = v[static_cast<size_t>(i) * stride] - mean;
    ss += d * d;
  }
  return std::sqrt(ss / static_cast<float>(n - 1));
}

namespace {

// Column stds of a row-major [rows × cols] matrix: out[c] = StdDev(y + c, rows, cols), with
// the sums over rows vectorized across columns (same order per column, same bits). Columns
// go in chunks of kChunk so that the accumulators stay in registers.
template <int kChunk>
inline void ColumnStdsChunk(const float* y, int rows, int cols, int c0, float* out) {
  float acc[kChunk] = {};
  for (int r = 0; r < rows; ++r) {
    const float* row = y + static_cast<size_t>(r) * cols + c0;
    for (int j = 0; j < kChunk; ++j) acc[j] += row[j];
  }
  float mean[kChunk];
  const float n = static_cast<float>(rows);
  for (int j = 0; j < kChunk; ++j) {
    mean[j] = acc[j] / n;
    acc[j] = 0.0f;
  }
  for (int r = 0; r < rows; ++r) {
    const float* row = y + static_cast<size_t>(r) * cols + c0;
    for (int j = 0; j < kChunk; ++j) {
      const float d = row[j] - mean[j];
      acc[j] += d * d;
    }
  }
  const float n1 = static_cast<float>(rows - 1);
  for (int j = 0; j < kChunk; ++j) out[c0 + j] = std::sqrt(acc[j] / n1);
}

// Row stds of a row-major [rows × cols] matrix: out[r] = StdDev(y + r*cols, cols, 1), each
// row summed sequentially; kRows rows at a time for independent dependency chains.
template <int kRows>
inline void RowStdsChunk(const float* y, int cols, int r0, float* out) {
  float acc[kRows] = {};
  for (int c = 0; c < cols; ++c) {
    for (int j = 0; j < kRows; ++j) acc[j] += y[static_cast<size_t>(r0 + j) * cols + c];
  }
  float mean[kRows];
  const float n = static_cast<float>(cols);
  for (int j = 0; j < kRows; ++j) {
    mean[j] = acc[j] / n;
    acc[j] = 0.0f;
  }
  for (int c = 0; c < cols; ++c) {
    for (int j = 0; j < kRows; ++j) {
      const float d = y[static_cast<size_t>(r0 + j) * cols + c] - mean[j];
      acc[j] += d * d;
    }
  }
  const float n1 = static_cast<float>(cols - 1);
  for (int j = 0; j < kRows; ++j) out[r0 + j] = std::sqrt(acc[j] / n1);
}

KVTIER_VECTOR_CLONES void RowStdsDirect(const float* y, int rows, int cols, float* out) {
  constexpr int kRows = 8;
  int r0 = 0;
  for (; r0 + kRows <= rows; r0 += kRows) RowStdsChunk<kRows>(y, cols, r0, out);
  for (; r0 < rows; ++r0) RowStdsChunk<1>(y, cols, r0, out);
}

KVTIER_VECTOR_CLONES void ColumnStds(const float* y, int rows, int cols, float* sum, float* out) {
  constexpr int kChunk = 32;
  int c0 = 0;
  for (; c0 + kChunk <= cols; c0 += kChunk) ColumnStdsChunk<kChunk>(y, rows, cols, c0, out);
  for (; c0 < cols; ++c0) ColumnStdsChunk<1>(y, rows, cols, c0, out);
  (void)sum;
}

// Row stds of a row-major [rows × cols] matrix: out[r] = StdDev(y + r*cols, cols, 1), with
// independent accumulators per row (same order per row, same bits).
void RowStds(const float* y, int rows, int cols, float* sum, float* out) {
  std::fill(sum, sum + rows, 0.0f);
  for (int c = 0; c < cols; ++c) {
    for (int r = 0; r < rows; ++r) sum[r] += y[static_cast<size_t>(r) * cols + c];
  }
  const float n = static_cast<float>(cols);
  for (int r = 0; r < rows; ++r) sum[r] = sum[r] / n;
  std::fill(out, out + rows, 0.0f);
  for (int c = 0; c < cols; ++c) {
    for (int r = 0; r < rows; ++r) {
      const float d = y[static_cast<size_t>(r) * cols + c] - sum[r];
      out[r] += d * d;
    }
  }
  const float n1 = static_cast<float>(cols - 1);
  for (int r = 0; r < rows; ++r) out[r] = std::sqrt(out[r] / n1);
}

float ImbalanceFromStds(const float* cs, int cols, const float* rs, int rows) {
  const auto [cmin, cmax] = std::minmax_element(cs, cs + cols);
  const auto [rmin, rmax] = std::minmax_element(rs, rs + rows);
  return *cmax / std::max(*cmin, kImbalanceFloor) + *rmax / std::max(*rmin, kImbalanceFloor);
}

// y = (x / ec[col]) / er[row].
KVTIER_VECTOR_CLONES void Scale(const float* x, int rows, int cols, const float* ec,
                                const float* er, float* y) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * cols;
    float* yr = y + static_cast<size_t>(r) * cols;
    const float e = er[r];
    for (int c = 0; c < cols; ++c) yr[c] = xr[c] / ec[c] / e;
  }
}

// out[c][r] = in[r][c] for a row-major [rows × cols] matrix, in 8×8 blocks.
KVTIER_VECTOR_CLONES void Transpose(const float* in, int rows, int cols, float* out) {
  constexpr int kB = 16;
  for (int r0 = 0; r0 < rows; r0 += kB) {
    for (int c0 = 0; c0 < cols; c0 += kB) {
      const int r1 = std::min(rows, r0 + kB), c1 = std::min(cols, c0 + kB);
      for (int r = r0; r < r1; ++r) {
        const float* i = in + static_cast<size_t>(r) * cols;
        for (int c = c0; c < c1; ++c) out[static_cast<size_t>(c) * rows + r] = i[c];
      }
    }
  }
}

// yt = Y^T for Y = (x / ec[col]) / er[row], computed from xt = x^T ([cols × rows]):
// yt[c][r] = (xt[c][r] / ec[c]) / er[r], the same operations as Scale.
KVTIER_VECTOR_CLONES void ScaleTransposed(const float* xt, int rows, int cols, const float* ec,
                                          const float* er, float* yt) {
  for (int c = 0; c < cols; ++c) {
    const float* xc = xt + static_cast<size_t>(c) * rows;
    float* yc = yt + static_cast<size_t>(c) * rows;
    const float e = ec[c];
    for (int r = 0; r < rows; ++r) yc[r] = xc[r] / e / er[r];
  }
}

}  // namespace

float Imbalance(const float* y, int rows, int cols) {
  std::vector<float> sum(std::max(rows, cols)), cs(cols), rs(rows);
  ColumnStds(y, rows, cols, sum.data(), cs.data());
  RowStds(y, rows, cols, sum.data(), rs.data());
  return ImbalanceFromStds(cs.data(), cols, rs.data(), rows);
}

NormalizeResult NormalizeLog(const float* x, int rows, int cols, int iterations, float* lc,
                             float* lr, std::vector<NormalizeStep>* trace) {
  // Mid-iteration row statistics are column statistics of Y^T, computed from X^T with the
  // same two divisions per element (so the same values), vectorized across rows; the
  // end-of-iteration row stds are summed along each row of Y directly. Every reduction runs
  // sequentially per row/column either way. The column stds of Y at the end of iteration i
  // are exactly those the column pass of iteration i+1 needs (same lc, lr, same Y), so they
  // are computed once.
  thread_local std::vector<float> xt, y, yt, sum, cs, rs, cur_lc, cur_lr, ec, er;
  const size_t n = static_cast<size_t>(rows) * cols;
  xt.resize(n);
  y.resize(n);
  yt.resize(n);
  Transpose(x, rows, cols, xt.data());
  sum.resize(std::max(rows, cols));
  cs.resize(cols);
  rs.resize(rows);
  cur_lc.assign(cols, 0.0f);
  cur_lr.assign(rows, 0.0f);
  ec.assign(cols, 1.0f);
  er.assign(rows, 1.0f);

  // Y = X / exp(0) / exp(0) == X exactly.
  ColumnStds(x, rows, cols, sum.data(), cs.data());
  ColumnStds(xt.data(), cols, rows, sum.data(), rs.data());
  NormalizeResult best;
  best.best_imbalance = ImbalanceFromStds(cs.data(), cols, rs.data(), rows);
  best.best_iteration = 0;
  std::fill(lc, lc + cols, 0.0f);
  std::fill(lr, lr + rows, 0.0f);

  for (int it = 1; it <= iterations; ++it) {
    for (int c = 0; c < cols; ++c) {
      const float s = std::clamp(cs[c], kStdClampLo, kStdClampHi);
      cur_lc[c] = std::clamp(cur_lc[c] + LogF(s), kLogScaleLo, kLogScaleHi);
      ec[c] = ExpF(cur_lc[c]);
    }
    ScaleTransposed(xt.data(), rows, cols, ec.data(), er.data(), yt.data());
    ColumnStds(yt.data(), cols, rows, sum.data(), rs.data());
    for (int r = 0; r < rows; ++r) {
      const float s = std::clamp(rs[r], kStdClampLo, kStdClampHi);
      cur_lr[r] = std::clamp(cur_lr[r] + LogF(s), kLogScaleLo, kLogScaleHi);
      er[r] = ExpF(cur_lr[r]);
    }
    Scale(x, rows, cols, ec.data(), er.data(), y.data());
    ColumnStds(y.data(), rows, cols, sum.data(), cs.data());
    RowStdsDirect(y.data(), rows, cols, rs.data());
    const float imb = ImbalanceFromStds(cs.data(), cols, rs.data(), rows);
    if (trace != nullptr) trace->push_back({cur_lc, cur_lr, imb});
    if (imb <= best.best_imbalance) {  // later ties win
      best.best_imbalance = imb;
      best.best_iteration = it;
      std::copy(cur_lc.begin(), cur_lc.end(), lc);
      std::copy(cur_lr.begin(), cur_lr.end(), lr);
    }
  }
  return best;
}

KVTIER_VECTOR_CLONES void QuantizeRows(const float* x, int rows, int cols, int bits, uint8_t* codes,
                                       float* scale, float* lo) {
  const int qmax = (1 << bits) - 1;
  const float qmax_f = static_cast<float>(qmax);
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * cols;
    uint8_t* cr = codes + static_cast<size_t>(r) * cols;
    float mn = xr[0], mx = xr[0];
    for (int c = 1; c < cols; ++c) {
      mn = std::min(mn, xr[c]);
      mx = std::max(mx, xr[c]);
    }
    const float s = std::max((mx - mn) / qmax_f, kMinScale);
    for (int c = 0; c < cols; ++c) {
      const float q = std::nearbyint((xr[c] - mn) / s);
      cr[c] = static_cast<uint8_t>(std::clamp(q, 0.0f, qmax_f));
    }
    scale[r] = s;
    lo[r] = mn;
  }
}

void PackRow(const uint8_t* codes, int n, int bits, uint8_t* out) {
  const int per_byte = 8 / bits;
  const uint8_t mask = static_cast<uint8_t>((1u << bits) - 1u);
  for (int b = 0; b < n / per_byte; ++b) {
    uint8_t v = 0;
    for (int j = 0; j < per_byte; ++j) {
      v = static_cast<uint8_t>(v | ((codes[b * per_byte + j] & mask) << (j * bits)));
    }
    out[b] = v;
  }
}

void UnpackRow(const uint8_t* packed, int n, int bits, uint8_t* codes) {
  const int per_byte = 8 / bits;
  const uint8_t mask = static_cast<uint8_t>((1u << bits) - 1u);
  for (int c = 0; c < n; ++c) {
    codes[c] = static_cast<uint8_t>((packed[c / per_byte] >> ((c % per_byte) * bits)) & mask);
  }
}

}  // namespace internal

namespace {

using internal::ExpF;

template <typename T>
KVTIER_VECTOR_CLONES void FwhtT(T* x, int n, T scale) {
  for (int h = 1; h < n; h <<= 1) {
    for (int i = 0; i < n; i += 2 * h) {
      for (int j = i; j < i + h; ++j) {
        const T a = x[j];
        const T b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  for (int i = 0; i < n; ++i) x[i] *= scale;
}

float FwhtScale(int n) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(n))); }

void PutHalf(uint8_t* out, uint16_t h) {
  out[0] = static_cast<uint8_t>(h);
  out[1] = static_cast<uint8_t>(h >> 8);
}
uint16_t GetHalfBits(const uint8_t* in) {
  return static_cast<uint16_t>(in[0] | (static_cast<uint16_t>(in[1]) << 8));
}
float GetHalf(const uint8_t* in) { return HalfToFloat(GetHalfBits(in)); }

bool IsFiniteHalf(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }

absl::Status CheckLayout(const TileLayout& l) {
  if (l.record_bytes == 0 || !IsSupportedHeadDim(l.head_dim) ||
      (l.group_size != 64 && l.group_size != 128) || l.key_bits != 4 ||
      (l.value_bits != 2 && l.value_bits != 4)) {
    return absl::InvalidArgumentError("KVarN codec: unsupported tile layout");
  }
  return absl::OkStatus();
}

// Normalizes and quantizes one [rows × cols] tile: codes (unpacked), per-row
// s_row·scale and s_row·lo, and per-column s_col, all fp16 bits.
void CompressMatrix(const float* x, int rows, int cols, int bits, int iterations,
                    std::vector<uint8_t>& codes, std::vector<uint16_t>& row_scale,
                    std::vector<uint16_t>& row_zero, std::vector<uint16_t>& col_scale) {
  thread_local std::vector<float> lc, lr, s_col, s_row, balanced, scale, lo;
  lc.resize(cols);
  lr.resize(rows);
  s_col.resize(cols);
  s_row.resize(rows);
  balanced.resize(static_cast<size_t>(rows) * cols);
  scale.resize(rows);
  lo.resize(rows);
  internal::NormalizeLog(x, rows, cols, iterations, lc.data(), lr.data());
  for (int c = 0; c < cols; ++c) s_col[c] = ExpF(lc[c]);
  for (int r = 0; r < rows; ++r) s_row[r] = ExpF(lr[r]);
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * cols;
    float* br = balanced.data() + static_cast<size_t>(r) * cols;
    const float e = s_row[r];
    for (int c = 0; c < cols; ++c) br[c] = xr[c] / s_col[c] / e;
  }
  codes.resize(static_cast<size_t>(rows) * cols);
  internal::QuantizeRows(balanced.data(), rows, cols, bits, codes.data(), scale.data(), lo.data());
  row_scale.resize(rows);
  row_zero.resize(rows);
  col_scale.resize(cols);
  for (int r = 0; r < rows; ++r) {
    row_scale[r] = FloatToHalf(s_row[r] * scale[r]);
    row_zero[r] = FloatToHalf(s_row[r] * lo[r]);
  }
  for (int c = 0; c < cols; ++c) col_scale[c] = FloatToHalf(s_col[c]);
}

}  // namespace

void Fwht(float* x, int n) { FwhtT<float>(x, n, FwhtScale(n)); }

absl::Status EncodeRotatedTile(const TileLayout& layout, const float* k_rot, const float* v_rot,
                               uint8_t* out, const CodecOptions& options) {
  if (absl::Status s = CheckLayout(layout); !s.ok()) return s;
  if (options.iterations < 0 || options.iterations > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("KVarN codec: iterations must be in [0, 64], got ", options.iterations));
  }
  const int d = layout.head_dim, g = layout.group_size;
  const size_t n = static_cast<size_t>(d) * g;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(k_rot[i]) || !std::isfinite(v_rot[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("KVarN codec: non-finite input at token ", i / d, ", channel ", i % d));
    }
  }
  thread_local std::vector<float> kt;
  thread_local std::vector<uint8_t> codes, record;
  thread_local std::vector<uint16_t> row_scale, row_zero, col_scale;
  // K tile: [D rows × G cols] (rows = channels, the quantization axis).
  kt.resize(n);
  for (int t = 0; t < g; ++t) {
    for (int c = 0; c < d; ++c)
      kt[static_cast<size_t>(c) * g + t] = k_rot[static_cast<size_t>(t) * d + c];
  }
  record.assign(layout.record_bytes, 0);
  uint8_t* rec = record.data();
  bool finite = true;

  CompressMatrix(kt.data(), d, g, layout.key_bits, options.iterations, codes, row_scale, row_zero,
                 col_scale);
  for (int c = 0; c < d; ++c) {
    internal::PackRow(codes.data() + static_cast<size_t>(c) * g, g, layout.key_bits,
                      rec + layout.k_codes_offset + c * layout.k_row_bytes);
    PutHalf(rec + layout.s_col_k_offset + 2 * c, row_scale[c]);
    PutHalf(rec + layout.zp_k_offset + 2 * c, row_zero[c]);
    finite = finite && IsFiniteHalf(row_scale[c]) && IsFiniteHalf(row_zero[c]);
  }
  for (int t = 0; t < g; ++t) {
    PutHalf(rec + layout.s_row_k_offset + 2 * t, col_scale[t]);
    finite = finite && IsFiniteHalf(col_scale[t]);
  }

  // V tile: [G rows × D cols] (rows = tokens).
  CompressMatrix(v_rot, g, d, layout.value_bits, options.iterations, codes, row_scale, row_zero,
                 col_scale);
  for (int t = 0; t < g; ++t) {
    internal::PackRow(codes.data() + static_cast<size_t>(t) * d, d, layout.value_bits,
                      rec + layout.v_codes_offset + t * layout.v_row_bytes);
    PutHalf(rec + layout.s_row_v_offset + 2 * t, row_scale[t]);
    PutHalf(rec + layout.zp_v_offset + 2 * t, row_zero[t]);
    finite = finite && IsFiniteHalf(row_scale[t]) && IsFiniteHalf(row_zero[t]);
  }
  for (int c = 0; c < d; ++c) {
    PutHalf(rec + layout.s_col_v_offset + 2 * c, col_scale[c]);
    finite = finite && IsFiniteHalf(col_scale[c]);
  }
  if (!finite) {
    return absl::InvalidArgumentError(
        "KVarN codec: tile values exceed the fp16 range of the stored scales");
  }
  std::memcpy(out, rec, layout.record_bytes);
  return absl::OkStatus();
}

absl::Status EncodeTile(const TileLayout& layout, const float* k, const float* v, uint8_t* out,
                        const CodecOptions& options) {
  if (absl::Status s = CheckLayout(layout); !s.ok()) return s;
  const int d = layout.head_dim, g = layout.group_size;
  thread_local std::vector<float> kr, vr;
  kr.assign(k, k + static_cast<size_t>(d) * g);
  vr.assign(v, v + static_cast<size_t>(d) * g);
  for (int t = 0; t < g; ++t) {
    Fwht(kr.data() + static_cast<size_t>(t) * d, d);
    Fwht(vr.data() + static_cast<size_t>(t) * d, d);
  }
  return EncodeRotatedTile(layout, kr.data(), vr.data(), out, options);
}

void DecodeTile(const TileLayout& layout, const uint8_t* record, float* k_rot, float* v_rot) {
  const int d = layout.head_dim, g = layout.group_size;
  thread_local std::vector<uint8_t> codes;
  thread_local std::vector<float> s_row_k, s_col_v;
  codes.resize(std::max(d, g));
  s_row_k.resize(g);
  s_col_v.resize(d);
  for (int t = 0; t < g; ++t) s_row_k[t] = GetHalf(record + layout.s_row_k_offset + 2 * t);
  for (int c = 0; c < d; ++c) {
    internal::UnpackRow(record + layout.k_codes_offset + c * layout.k_row_bytes, g, layout.key_bits,
                        codes.data());
    const float s = GetHalf(record + layout.s_col_k_offset + 2 * c);
    const float z = GetHalf(record + layout.zp_k_offset + 2 * c);
    for (int t = 0; t < g; ++t) {
      k_rot[static_cast<size_t>(t) * d + c] = (static_cast<float>(codes[t]) * s + z) * s_row_k[t];
    }
  }
  for (int c = 0; c < d; ++c) s_col_v[c] = GetHalf(record + layout.s_col_v_offset + 2 * c);
  for (int t = 0; t < g; ++t) {
    internal::UnpackRow(record + layout.v_codes_offset + t * layout.v_row_bytes, d,
                        layout.value_bits, codes.data());
    const float s = GetHalf(record + layout.s_row_v_offset + 2 * t);
    const float z = GetHalf(record + layout.zp_v_offset + 2 * t);
    float* vt = v_rot + static_cast<size_t>(t) * d;
    for (int c = 0; c < d; ++c) vt[c] = (static_cast<float>(codes[c]) * s + z) * s_col_v[c];
  }
}

void RotateToHalf(int head_dim, int tokens, const float* x, uint16_t* out) {
  std::vector<float> row(head_dim);
  for (int t = 0; t < tokens; ++t) {
    std::copy(x + static_cast<size_t>(t) * head_dim, x + static_cast<size_t>(t + 1) * head_dim,
              row.begin());
    Fwht(row.data(), head_dim);
    for (int c = 0; c < head_dim; ++c)
      out[static_cast<size_t>(t) * head_dim + c] = FloatToHalf(row[c]);
  }
}

void EncodeFp16Section(int head_dim, int num_kv_heads, int tokens, const float* k, const float* v,
                       uint16_t* out) {
  const size_t d = head_dim;
  std::vector<float> row(d);
  for (int h = 0; h < num_kv_heads; ++h) {
    uint16_t* kout = out + static_cast<size_t>(h) * 2 * tokens * d;
    uint16_t* vout = kout + static_cast<size_t>(tokens) * d;
    for (int t = 0; t < tokens; ++t) {
      const size_t src = (static_cast<size_t>(t) * num_kv_heads + h) * d;
      std::copy(k + src, k + src + d, row.begin());
      Fwht(row.data(), head_dim);
      for (size_t c = 0; c < d; ++c) kout[t * d + c] = FloatToHalf(row[c]);
      std::copy(v + src, v + src + d, row.begin());
      Fwht(row.data(), head_dim);
      for (size_t c = 0; c < d; ++c) vout[t * d + c] = FloatToHalf(row[c]);
    }
  }
}

void DecompressTile(const TileLayout& layout, const uint8_t* record, uint16_t* k, uint16_t* v,
                    bool rotated) {
  const int d = layout.head_dim, g = layout.group_size;
  thread_local std::vector<float> kf, vf;
  kf.resize(static_cast<size_t>(d) * g);
  vf.resize(static_cast<size_t>(d) * g);
  DecodeTile(layout, record, kf.data(), vf.data());
  for (int t = 0; t < g; ++t) {
    float* kt = kf.data() + static_cast<size_t>(t) * d;
    float* vt = vf.data() + static_cast<size_t>(t) * d;
    if (!rotated) {
      Fwht(kt, d);
      Fwht(vt, d);
    }
    for (int c = 0; c < d; ++c) {
      k[static_cast<size_t>(t) * d + c] = FloatToHalf(kt[c]);
      v[static_cast<size_t>(t) * d + c] = FloatToHalf(vt[c]);
    }
  }
}

namespace {

// K and V rows [tokens][D] (rotated frame, fp32) of one KV head of one block.
void LoadBlockHead(const TileLayout& layout, const BlockSection& b, int num_kv_heads, int head,
                   float* k, float* v) {
  const int d = layout.head_dim;
  if (b.encoding == BlockEncoding::kTiles) {
    DecodeTile(layout, b.data + static_cast<size_t>(head) * layout.record_bytes, k, v);
    return;
  }
  const size_t n = static_cast<size_t>(b.tokens) * d;
  const uint8_t* base = b.data + static_cast<size_t>(head) * 2 * n * 2;
  for (size_t i = 0; i < n; ++i) {
    k[i] = GetHalf(base + 2 * i);
    v[i] = GetHalf(base + 2 * (n + i));
  }
}

template <typename T>
void Attend(const TileLayout& layout, int num_kv_heads, absl::Span<const BlockSection> blocks,
            const float* q, int num_q_heads, float softmax_scale, float* out, float* lse) {
  const int d = layout.head_dim, g = layout.group_size;
  const int group = num_q_heads / num_kv_heads;
  size_t total = 0;
  for (const auto& b : blocks) total += b.tokens;
  const T fwht_scale = std::is_same_v<T, float>
                           ? static_cast<T>(FwhtScale(d))
                           : static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
  std::vector<T> q_rot(static_cast<size_t>(num_q_heads) * d);
  for (size_t i = 0; i < q_rot.size(); ++i) q_rot[i] = static_cast<T>(q[i]);
  for (int h = 0; h < num_q_heads; ++h)
    FwhtT<T>(q_rot.data() + static_cast<size_t>(h) * d, d, fwht_scale);

  std::vector<T> scores(static_cast<size_t>(num_q_heads) * total);
  std::vector<float> kf(static_cast<size_t>(g) * d), vf(static_cast<size_t>(g) * d);
  const T scale = static_cast<T>(softmax_scale);
  size_t base = 0;
  for (const auto& b : blocks) {
    for (int kv = 0; kv < num_kv_heads; ++kv) {
      LoadBlockHead(layout, b, num_kv_heads, kv, kf.data(), vf.data());
      for (int qh = kv * group; qh < (kv + 1) * group; ++qh) {
        const T* qr = q_rot.data() + static_cast<size_t>(qh) * d;
        for (int t = 0; t < b.tokens; ++t) {
          const float* kt = kf.data() + static_cast<size_t>(t) * d;
          T s = 0;
          for (int c = 0; c < d; ++c) s += qr[c] * static_cast<T>(kt[c]);
          scores[static_cast<size_t>(qh) * total + base + t] = s * scale;
        }
      }
    }
    base += b.tokens;
  }
  std::vector<T> m(num_q_heads), l(num_q_heads, 0);
  for (int qh = 0; qh < num_q_heads; ++qh) {
    T* s = scores.data() + static_cast<size_t>(qh) * total;
    m[qh] = *std::max_element(s, s + total);
    for (size_t t = 0; t < total; ++t) {
      s[t] = std::exp(s[t] - m[qh]);
      l[qh] += s[t];
    }
  }
  std::vector<T> acc(static_cast<size_t>(num_q_heads) * d, 0);
  base = 0;
  for (const auto& b : blocks) {
    for (int kv = 0; kv < num_kv_heads; ++kv) {
      LoadBlockHead(layout, b, num_kv_heads, kv, kf.data(), vf.data());
      for (int qh = kv * group; qh < (kv + 1) * group; ++qh) {
        T* a = acc.data() + static_cast<size_t>(qh) * d;
        const T* p = scores.data() + static_cast<size_t>(qh) * total + base;
        for (int t = 0; t < b.tokens; ++t) {
          const float* vt = vf.data() + static_cast<size_t>(t) * d;
          for (int c = 0; c < d; ++c) a[c] += p[t] * static_cast<T>(vt[c]);
        }
      }
    }
    base += b.tokens;
  }
  for (int qh = 0; qh < num_q_heads; ++qh) {
    T* a = acc.data() + static_cast<size_t>(qh) * d;
    for (int c = 0; c < d; ++c) a[c] /= l[qh];
    FwhtT<T>(a, d, fwht_scale);
    for (int c = 0; c < d; ++c) out[static_cast<size_t>(qh) * d + c] = static_cast<float>(a[c]);
    if (lse != nullptr) lse[qh] = static_cast<float>(m[qh] + std::log(l[qh]));
  }
}

}  // namespace

absl::Status AttendReference(const TileLayout& layout, int num_kv_heads,
                             absl::Span<const BlockSection> blocks, const float* q, int num_q_heads,
                             float softmax_scale, float* out, float* lse, bool use_float64) {
  if (absl::Status s = CheckLayout(layout); !s.ok()) return s;
  if (num_kv_heads <= 0 || num_q_heads <= 0 || num_q_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("attention: ", num_q_heads,
                                                   " query heads is not a positive multiple of ",
                                                   num_kv_heads, " KV heads"));
  }
  if (blocks.empty()) return absl::InvalidArgumentError("attention: no blocks");
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockSection& b = blocks[i];
    const bool ok = b.data != nullptr && (b.encoding == BlockEncoding::kTiles
                                              ? b.tokens == layout.group_size
                                              : (b.encoding == BlockEncoding::kFp16 &&
                                                 b.tokens >= 1 && b.tokens <= layout.group_size));
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("attention: block ", i, " is malformed (encoding ",
                       static_cast<int>(b.encoding), ", ", b.tokens, " tokens)"));
    }
  }
  if (use_float64) {
    Attend<double>(layout, num_kv_heads, blocks, q, num_q_heads, softmax_scale, out, lse);
  } else {
    Attend<float>(layout, num_kv_heads, blocks, q, num_q_heads, softmax_scale, out, lse);
  }
  return absl::OkStatus();
}

}  // namespace kvtier::kernels::cpu
