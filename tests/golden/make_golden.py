#!/usr/bin/python3
"""Golden vectors for the KVarN tile codec, computed independently of the C++ code.

Implements DESIGN.md §3.1-§3.2 from the text (rotation, log-domain normalization, RTN,
scale absorption, packing, record layout) in numpy and writes, for one tile per preset
and head_dim 64/128 (and k4v2_g64 with D = 256):
    <preset>_d<D>_k.npy, <preset>_d<D>_v.npy   inputs: [G][D] float16, NOT rotated
    <preset>_d<D>.rec                           the expected tile record bytes
The fp32 operation order is the one kernels/cpu/codec_internal.h documents (sequential
sums, exp/log in float64 rounded to float32, (X / e^lc) / e^lr, butterflies then one
multiply by float32(1/sqrt(D))), so the bytes must match exactly.

Run: /usr/bin/python3 tests/golden/make_golden.py [out_dir]
"""
import math
import os
import sys

import numpy as np

F32 = np.float32
PRESETS = {  # name: (key bits, value bits, G)
    "k4v2_g128": (4, 2, 128),
    "k4v4_g128": (4, 4, 128),
    "k4v2_g64": (4, 2, 64),
    "k4v4_g64": (4, 4, 64),
}


def fwht_rows(x):
    """x: [rows][n] float32 -> x · H / sqrt(n), Sylvester order, butterflies h = 1, 2, 4..."""
    rows, n = x.shape
    y = x.astype(F32).copy()
    h = 1
    while h < n:
        y = y.reshape(rows, n // (2 * h), 2, h)
        a = y[:, :, 0, :].copy()
        b = y[:, :, 1, :].copy()
        y[:, :, 0, :] = a + b
        y[:, :, 1, :] = a - b
        y = y.reshape(rows, n)
        h *= 2
    return (y * F32(1.0 / math.sqrt(n))).astype(F32)


def exp32(x):
    return np.exp(np.asarray(x, dtype=np.float64)).astype(F32)


def log32(x):
    return np.log(np.asarray(x, dtype=np.float64)).astype(F32)


def col_std(y):
    """Per-column unbiased std of y [R][C]: sequential sums over rows, in fp32."""
    r = y.shape[0]
    s = np.zeros(y.shape[1], F32)
    for i in range(r):
        s = s + y[i]
    mean = s / F32(r)
    ss = np.zeros(y.shape[1], F32)
    for i in range(r):
        d = y[i] - mean
        ss = ss + d * d
    return np.sqrt(ss / F32(r - 1)).astype(F32)


def row_std(y):
    return col_std(np.ascontiguousarray(y.T))


def imbalance(y):
    cs, rs = col_std(y), row_std(y)
    floor = F32(1e-8)
    return F32(cs.max() / max(cs.min(), floor)) + F32(rs.max() / max(rs.min(), floor))


def scaled(x, lc, lr):
    return ((x / exp32(lc)[None, :]) / exp32(lr)[:, None]).astype(F32)


def normalize(x, iters=8):
    """Returns (lc, lr), the best log scales of DESIGN §3.1."""
    rows, cols = x.shape
    lc = np.zeros(cols, F32)
    lr = np.zeros(rows, F32)
    best = (imbalance(x), lc.copy(), lr.copy())
    for _ in range(iters):
        y = scaled(x, lc, lr)
        lc = np.clip(lc + log32(np.clip(col_std(y), F32(1e-3), F32(1e3))), F32(-0.3), F32(10))
        y = scaled(x, lc, lr)
        lr = np.clip(lr + log32(np.clip(row_std(y), F32(1e-3), F32(1e3))), F32(-0.3), F32(10))
        y = scaled(x, lc, lr)
        imb = imbalance(y)
        if imb <= best[0]:
            best = (imb, lc.copy(), lr.copy())
    return best[1], best[2]


def compress(x, bits):
    """x [R][C] fp32 -> codes [R][C], row_scale fp16 [R], row_zero fp16 [R], col fp16 [C]."""
    lc, lr = normalize(x)
    s_col, s_row = exp32(lc), exp32(lr)
    bal = ((x / s_col[None, :]) / s_row[:, None]).astype(F32)
    qmax = F32(2**bits - 1)
    lo = bal.min(axis=1)
    hi = bal.max(axis=1)
    scale = np.maximum((hi - lo) / qmax, F32(1e-10)).astype(F32)
    q = np.clip(np.rint((bal - lo[:, None]) / scale[:, None]), 0, qmax).astype(np.uint8)
    return (q, (s_row * scale).astype(np.float16), (s_row * lo).astype(np.float16),
            s_col.astype(np.float16))


def pack(codes, bits):
    per = 8 // bits
    r, n = codes.shape
    c = codes.reshape(r, n // per, per).astype(np.uint16)
    out = np.zeros((r, n // per), np.uint16)
    for j in range(per):
        out |= c[:, :, j] << (j * bits)
    return out.astype(np.uint8).tobytes()


def record(k, v, preset, d):
    kb, vb, g = PRESETS[preset]
    k_rot, v_rot = fwht_rows(k), fwht_rows(v)
    qk, s_col_k, zp_k, s_row_k = compress(np.ascontiguousarray(k_rot.T), kb)  # [D][G]
    qv, s_row_v, zp_v, s_col_v = compress(v_rot, vb)  # [G][D]
    parts = [pack(qk, kb), s_col_k.astype("<f2").tobytes(), zp_k.astype("<f2").tobytes(),
             s_row_k.astype("<f2").tobytes(), pack(qv, vb), s_col_v.astype("<f2").tobytes(),
             s_row_v.astype("<f2").tobytes(), zp_v.astype("<f2").tobytes()]
    body = b"".join(parts)
    if d <= 128:
        size = (len(body) + 7) // 8 * 8
    else:
        slot = 1
        while slot < -(-len(body) // g):
            slot *= 2
        size = slot * g
    return body + bytes(size - len(body))


def make_input(g, d, seed):
    """Keys with two outlier channels and a per-channel bias, Student-t noise; values
    Gaussian with a few outlier tokens. Rounded to fp16, as a paged cache holds them."""
    rng = np.random.default_rng(seed)
    k = rng.standard_t(5, size=(g, d)) * rng.uniform(0.5, 1.5, size=d)
    k += rng.normal(0, 1.0, size=d)
    k[:, d - 3] *= 12.0
    k[:, d // 2 - 3] *= 8.0
    v = rng.normal(0, 1.0, size=(g, d))
    v[rng.integers(0, g, size=2)] *= 6.0
    return k.astype(np.float16), v.astype(np.float16)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    cases = [(i, preset, d) for i, preset in enumerate(PRESETS) for d in (64, 128)]
    cases.append((2, "k4v2_g64", 256))  # D >= 256: the power-of-two per-token slot padding
    for i, preset, d in cases:
        g = PRESETS[preset][2]
        k16, v16 = make_input(g, d, seed=1000 + 10 * i + d)
        rec = record(k16.astype(F32), v16.astype(F32), preset, d)
        base = os.path.join(out_dir, f"{preset}_d{d}")
        np.save(base + "_k.npy", k16)
        np.save(base + "_v.npy", v16)
        with open(base + ".rec", "wb") as f:
            f.write(rec)
        print(f"{base}: {len(rec)} bytes")


if __name__ == "__main__":
    main()
