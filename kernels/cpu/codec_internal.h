// Internal stages of the CPU KVarN codec (DESIGN.md §3.1), exposed for the unit tests,
// the golden-vector test and the GPU kernels' step-by-step comparisons. Production
// callers use kernels/cpu/codec.h.
//
// Arithmetic contract (what the numpy golden script mirrors and what a bit-exact port
// must reproduce):
//   - every value is fp32; no fused multiply-add (the sources build with
//     -ffp-contract=off);
//   - sums run sequentially in index order (mean = Σv / n, var = Σ(v-mean)² / (n-1),
//     std = sqrt(var));
//   - exp and log are computed in double and rounded once to fp32 (the correctly
//     rounded fp32 result in all but astronomically rare cases, identical on every libm);
//   - Y = (X / exp(lc)[col]) / exp(lr)[row], two divisions, in that order;
//   - the FWHT runs the Sylvester butterflies h = 1, 2, 4, ... with (a+b, a-b) and then
//     multiplies every element by the fp32 constant (float)(1/sqrt(n)).
//
// Thread safety: pure functions.
#ifndef KVTIER_KERNELS_CPU_CODEC_INTERNAL_H_
#define KVTIER_KERNELS_CPU_CODEC_INTERNAL_H_

#include <cstdint>
#include <vector>

namespace kvtier::kernels::cpu::internal {

// Normalization constants of DESIGN §3.1.
inline constexpr float kStdClampLo = 1e-3f;
inline constexpr float kStdClampHi = 1e3f;
inline constexpr float kLogScaleLo = -0.3f;
inline constexpr float kLogScaleHi = 10.0f;
inline constexpr float kImbalanceFloor = 1e-8f;
inline constexpr float kMinScale = 1e-10f;

float ExpF(float x);  // (float)exp((double)x)
float LogF(float x);  // (float)log((double)x)

// Unbiased, mean-subtracted standard deviation of n values at v[0], v[stride], ...
float StdDev(const float* v, int n, int stride);

// imb(Y) of DESIGN §3.1 for a row-major [rows × cols] matrix.
float Imbalance(const float* y, int rows, int cols);

struct NormalizeResult {
  float best_imbalance = 0;
  int best_iteration = 0;  // 0: the untouched tile won; i: the state after iteration i
};

// The state after one iteration (for tests).
struct NormalizeStep {
  std::vector<float> lc, lr;
  float imbalance = 0;
};

// Log-domain normalization of a row-major [rows × cols] fp32 matrix x (rows >= 2,
// cols >= 2). Writes the best log scales: lc[cols], lr[rows]. trace (optional): receives
// the state after every iteration.
NormalizeResult NormalizeLog(const float* x, int rows, int cols, int iterations, float* lc,
                             float* lr, std::vector<NormalizeStep>* trace = nullptr);

// Per-row asymmetric RTN (DESIGN §3.1 step 3) of a row-major [rows × cols] matrix:
// codes[rows*cols] (one code per byte, unpacked), scale[rows], lo[rows].
void QuantizeRows(const float* x, int rows, int cols, int bits, uint8_t* codes, float* scale,
                  float* lo);

// Packs n codes of `bits` bits (2 or 4; n a multiple of 8/bits) LSB first: n*bits/8 bytes.
void PackRow(const uint8_t* codes, int n, int bits, uint8_t* out);
// Inverse of PackRow.
void UnpackRow(const uint8_t* packed, int n, int bits, uint8_t* codes);

}  // namespace kvtier::kernels::cpu::internal

#endif  // KVTIER_KERNELS_CPU_CODEC_INTERNAL_H_
