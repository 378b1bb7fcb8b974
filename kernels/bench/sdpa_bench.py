#!/usr/bin/env python3
"""PyTorch FP16 SDPA baseline for the decode shapes of issue 3, side by side with the
kvarn_cuda_bench results (CSV from argv[1]); prints the combined table last.

  python3 sdpa_bench.py ours.csv [out.md]

SDPA: q [B, 32, 1, 128], k/v [B, 8, ctx, 128] fp16, enable_gqa=True (falls back to
repeat_interleave'd K/V if this torch lacks it). Median of CUDA-event timings; K/V sets
rotated so that small shapes do not run from L2.
"""
import sys

import torch
import torch.nn.functional as F


def median_ms(fn, iters=30):
    for _ in range(3):
        fn(0)
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
    ev[0].record()
    for i in range(iters):
        fn(i)
        ev[i + 1].record()
    torch.cuda.synchronize()
    t = sorted(ev[i].elapsed_time(ev[i + 1]) for i in range(iters))
    return t[len(t) // 2]


def main():
    csv = sys.argv[1]
    rows = [line.strip().split(",") for line in open(csv) if line.strip()]
    read_gbs = copy_gbs = None
    ours = {}
    comp = []
    for r in rows:
        if r[0] == "bandwidth":
            read_gbs, copy_gbs = float(r[1]), float(r[2])
        elif r[0] == "attn":
            ours[(int(r[1]), int(r[2]))] = (float(r[3]), float(r[4]), float(r[5]))
        elif r[0] == "compress":
            comp.append((int(r[1]), float(r[2]), float(r[3])))
    hq, hk, d = 32, 8, 128
    out = []
    gen = torch.Generator(device="cuda").manual_seed(1)
    for (b, ctx), (our_us, comp_mb, our_gbs) in sorted(ours.items(), key=lambda x: (x[0][1] * x[0][0])):
        kv_bytes = 2 * b * hk * ctx * d * 2
        sets = max(1, -(-(512 << 20) // kv_bytes))
        q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.float16, generator=gen)
        ks = [torch.randn(b, hk, ctx, d, device="cuda", dtype=torch.float16, generator=gen) for _ in range(sets)]
        vs = [torch.randn(b, hk, ctx, d, device="cuda", dtype=torch.float16, generator=gen) for _ in range(sets)]
        try:
            F.scaled_dot_product_attention(q, ks[0], vs[0], enable_gqa=True)
            fn = lambda i: F.scaled_dot_product_attention(q, ks[i % sets], vs[i % sets], enable_gqa=True)
            how = "enable_gqa"
        except TypeError:
            ke = [k.repeat_interleave(hq // hk, dim=1) for k in ks]
            ve = [v.repeat_interleave(hq // hk, dim=1) for v in vs]
            fn = lambda i: F.scaled_dot_product_attention(q, ke[i % sets], ve[i % sets])
            how = "expanded"
        with torch.no_grad():
            ms = median_ms(fn)
        sdpa_us = ms * 1e3
        sdpa_gbs = kv_bytes / (ms * 1e6)
        out.append((b, ctx, our_us, comp_mb, our_gbs, sdpa_us, sdpa_gbs, how))
        del ks, vs
        torch.cuda.empty_cache()
    lines = []
    lines.append(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    if read_gbs:
        lines.append(f"measured read bandwidth {read_gbs:.0f} GB/s; D2D copy {copy_gbs:.0f} GB/s (read+write)")
    lines.append("")
    lines.append("| B | ctx | ours (us) | compressed MB | ours GB/s | % of read BW | SDPA fp16 (us) | SDPA GB/s | speed-up |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for b, ctx, our_us, comp_mb, our_gbs, sdpa_us, sdpa_gbs, how in out:
        pct = 100.0 * our_gbs / read_gbs if read_gbs else float("nan")
        lines.append(f"| {b} | {ctx} | {our_us:.1f} | {comp_mb:.1f} | {our_gbs:.0f} | {pct:.1f}% | "
                     f"{sdpa_us:.1f} | {sdpa_gbs:.0f} | {sdpa_us / our_us:.2f}x |")
    lines.append("")
    lines.append("| compress tiles | ms | GB/s of fp16 input |")
    lines.append("|---|---|---|")
    for tiles, ms, gbs in comp:
        lines.append(f"| {tiles} | {ms:.3f} | {gbs:.0f} |")
    text = "\n".join(lines)
    print(text)
    if len(sys.argv) > 2:
        open(sys.argv[2], "w").write(text + "\n")


if __name__ == "__main__":
    main()
