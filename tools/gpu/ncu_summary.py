"""Where one graph-replayed step spends its time, from Nsight Compute's CSV of that step's kernels
(gpu__time_duration per kernel, in launch order), as `PROFILE=1 gpu-bundle/run.sh` records it:

    ncu --profile-from-start off --clock-control none --cache-control none \\
        --metrics gpu__time_duration.sum --csv --log-file step.csv stages --bench   # CASCADE_BENCH_PROFILE=1
    python3 tools/gpu/ncu_summary.py step.csv --title stage_c

Prints the kernels grouped by name (count, total µs, share of the step, mean µs), then the
slowest single launches with their grid. ncu runs kernels one at a time, so the sum is the
step's time without overlap or launch gaps: compare it with the graph replay's BENCH line.
"""
import argparse
import csv
import io
import re
import sys
from collections import defaultdict

# Time units ncu may print, in microseconds.
UNITS = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}
METRIC = "gpu__time_duration.sum"


def short(name):
    """The kernel's name without its parameter list (template arguments stay: cuBLAS's kernels
    are templates whose arguments carry the tile shapes)."""
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(depth - 1, 0)
        elif ch == "(" and depth == 0:
            cut = i
            break
    name = re.sub(r"^(void|static)\s+", "", name[:cut].strip())
    return name[:90]


def launches(text):
    """(kernel name, grid, µs) per profiled launch, from either of ncu's CSV layouts."""
    rows = list(csv.reader(io.StringIO("\n".join(l for l in text.splitlines() if l.startswith('"')))))
    if not rows:
        return []
    head, body = rows[0], rows[1:]
    col = {h: i for i, h in enumerate(head)}
    out = []
    if "Metric Name" in col:  # the details page: one row per (kernel, metric)
        for r in body:
            if r[col["Metric Name"]] != METRIC:
                continue
            unit = r[col["Metric Unit"]].strip().lower()
            value = float(r[col["Metric Value"]].replace(",", ""))
            out.append((r[col["Kernel Name"]], r[col.get("Grid Size", 0)] if "Grid Size" in col else "", value * UNITS.get(unit, 1e-3)))
    elif METRIC in col:  # the raw page: one row per kernel, the first row holds the units
        unit = body[0][col[METRIC]].strip().lower() if body and not re.match(r"^[\d.,]+$", body[0][col[METRIC]]) else "ns"
        for r in body:
            v = r[col[METRIC]].replace(",", "")
            if not re.match(r"^[\d.]+$", v):
                continue
            grid = r[col["Grid Size"]] if "Grid Size" in col else ""
            out.append((r[col["Kernel Name"]], grid, float(v) * UNITS.get(unit, 1e-3)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--title", default="step")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    runs = launches(open(args.csv, errors="replace").read())
    if not runs:
        print(f"== kernel time, {args.title}: no kernels in {args.csv} (did ncu run? see its log) ==")
        return 1
    total = sum(t for _, _, t in runs)
    groups = defaultdict(lambda: [0, 0.0])
    for name, _, t in runs:
        g = groups[short(name)]
        g[0] += 1
        g[1] += t
    print(f"== kernel time, {args.title}: {len(runs)} kernels, {total / 1e3:.3f} ms in sum (ncu, one at a time) ==")
    print(f"{'kernel':<90} {'count':>6} {'total µs':>10} {'share':>7} {'mean µs':>9}")
    for name, (n, t) in sorted(groups.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"{name:<90} {n:>6} {t:>10.1f} {100 * t / total:>6.1f}% {t / n:>9.1f}")
    print(f"slowest single launches:")
    for name, grid, t in sorted(runs, key=lambda r: -r[2])[: min(args.top, 8)]:
        print(f"  {t:>9.1f} µs  {short(name)}  grid {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
