"""PyTorch's SDPA on the engine's attention shapes, in the same run as the ops bench, plus the
card's two ceilings measured through PyTorch (a device-to-device copy and a large bf16 matrix
product). The shapes are read from the ops bench's own summary lines, so both sides time the same
problems:

    gpu-bundle/benches/ops --bench | tee ops.log
    python tools/gpu/sdpa_bench.py ops.log

Prints `BENCH sdpa/...` and `BENCH ceiling/...` lines in the ops bench's format, then a table:
per shape, the engine's fastest attention kernel, SDPA, and their ratio (TFLOP/s counted the
same way on both sides: 4·B·H·Lq·Lk·64, masked shapes as if unmasked). Timing follows the ops
bench: median of 7 batches of 20 calls after a warm-up batch.
"""
import argparse
import re
import sys
import time

import torch
import torch.nn.functional as F

LINE = re.compile(r"^BENCH (attention\w*)/([\w.]+)/(\d+)x(\d+)x(\d+)x(\d+)/bf16\s+([\d.]+) ms")
# Shapes run with CLIP's causal (and padding) mask, as in cascade::ops::shapes::ATTENTION.
MASKED = {"clip", "odd_masked"}


def parse(path):
    """{(name, b, heads, lq, lk): [(kernel, ms), ...]} from the ops bench's summary lines."""
    shapes = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if m:
                kernel, name = m.group(1), m.group(2)
                b, h, lq, lk = (int(m.group(i)) for i in range(3, 7))
                shapes.setdefault((name, b, h, lq, lk), []).append((kernel, float(m.group(7))))
    return shapes


def median_ms(fn, device):
    """Median over 7 batches of 20 calls, after a warm-up batch of 3 (the ops bench's method)."""

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(20):
            fn()
        sync()
        times.append((time.perf_counter() - t) / 20)
    times.sort()
    return times[3] * 1e3


def attention_flops(b, h, lq, lk):
    return 4.0 * b * h * lq * lk * 64


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ops_log", help="output of the ops bench (its BENCH lines)")
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run of the script itself")
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("sdpa bench: skipped (no CUDA device visible to PyTorch)")
        return 0
    shapes = parse(args.ops_log)
    if not shapes:
        print(f"sdpa bench: no attention lines in {args.ops_log}", file=sys.stderr)
        return 1
    dt = torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(7)

    # The ceilings, measured here rather than taken from a datasheet.
    if dev == "cuda":
        n = 256 << 20  # 256 Mi bf16 elements: 512 MiB read and 512 MiB written
        src = torch.randn(n, device=dev, dtype=dt, generator=gen)
        dst = torch.empty_like(src)
        ms = median_ms(lambda: dst.copy_(src), dev)
        print(f"BENCH {'ceiling/copy/512MiB/bf16':<56} {ms:>10.4f} ms  {2 * n * 2 / ms / 1e6:8.0f} GB/s")
        del src, dst
        a = torch.randn(8192, 8192, device=dev, dtype=dt, generator=gen)
        bm = torch.randn(8192, 8192, device=dev, dtype=dt, generator=gen)
        ms = median_ms(lambda: a @ bm, dev)
        print(f"BENCH {'ceiling/torch_matmul/8192x8192x8192/bf16':<56} {ms:>10.4f} ms  {2 * 8192**3 / ms / 1e9:8.1f} TFLOP/s")
        del a, bm

    rows = []
    for (name, b, h, lq, lk), kernels in sorted(shapes.items(), key=lambda kv: kv[0]):
        # The model's layout: [B, L, H·64] rows viewed as [B, H, L, 64] (what diffusers passes).
        q = torch.randn(b, lq, h, 64, device=dev, dtype=dt, generator=gen).transpose(1, 2)
        k = torch.randn(b, lk, h, 64, device=dev, dtype=dt, generator=gen).transpose(1, 2)
        v = torch.randn(b, lk, h, 64, device=dev, dtype=dt, generator=gen).transpose(1, 2)
        causal = name in MASKED
        with torch.no_grad():
            ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.125), dev)
        fl = attention_flops(b, h, lq, lk)
        label = f"sdpa/{name}/{b}x{h}x{lq}x{lk}/bf16"
        print(f"BENCH {label:<56} {ms:>10.4f} ms  {fl / ms / 1e9:8.1f} TFLOP/s")
        kernel, best = min(kernels, key=lambda kv: kv[1])
        rows.append((f"{name} {b}x{h}x{lq}x{lk}", kernel, fl / best / 1e9, fl / ms / 1e9, ms / best))

    print("\n== attention beside SDPA (bf16, TFLOP/s; ratio > 1: the engine is faster) ==")
    print(f"{'shape':<30}{'engine kernel':<24}{'engine':>9}{'SDPA':>9}{'ratio':>8}")
    for shape, kernel, eng, ref, ratio in rows:
        print(f"{shape:<30}{kernel:<24}{eng:9.1f}{ref:9.1f}{ratio:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
