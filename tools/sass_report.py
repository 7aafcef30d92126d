"""Static facts about every kernel, no GPU needed: registers, spills and shared memory from
ptxas, and from the SASS (when cuobjdump and nvdisasm are at hand) the instruction count, the
tensor-core instructions, how wide the global loads and stores are, the size of the largest
loop, and how many global loads are waited on before the next is issued ("serial", over every
code path of the kernel, scalar fallbacks included: compare a kernel with its variants, not
kernels with each other). These are the numbers behind docs/performance.md's instruction counts.

    python3 tools/sass_report.py [--arch sm_90] [--install-tools] [--kernel NAME ...]

nvcc comes from CUDA_HOME or the repository's .venv-cuda (scripts/setup-cuda.sh). cuobjdump and
nvdisasm come from PATH, or from target/sass-tools after --install-tools (which downloads the
nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm wheels: network needed, once).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "target" / "sass-tools"


def find_nvcc():
    for home in [os.environ.get("CUDA_HOME")] + glob.glob(str(ROOT / ".venv-cuda/lib/python3*/site-packages/nvidia/cu13")):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def install_tools():
    TOOLS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        for pkg in ["nvidia-cuda-cuobjdump==13.2.78", "nvidia-cuda-nvdisasm==13.2.78"]:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", d, pkg], check=True)
        for whl in glob.glob(d + "/*.whl"):
            with zipfile.ZipFile(whl) as z:
                for name in z.namelist():
                    if name.endswith("/bin/cuobjdump") or name.endswith("/bin/nvdisasm"):
                        out = TOOLS / Path(name).name
                        out.write_bytes(z.read(name))
                        out.chmod(0o755)


def resources(nvcc, src, arch, cubin):
    """{kernel: (registers, spill bytes, shared bytes)} from ptxas' report."""
    r = subprocess.run([nvcc, "--resource-usage", "-cubin", f"-arch={arch}", "-O3", "-I", str(ROOT / "kernels"), "-o", cubin, src],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"sass_report: nvcc failed on {src}:\n{r.stderr}")
    out, name = {}, None
    for line in r.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and name:
            spill = int(m.group(1))
            out.setdefault(name, [0, 0, 0])[1] = spill
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            out.setdefault(name, [0, 0, 0])[0] = int(m.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            out[name][2] = int(smem.group(1)) if smem else 0
    return out


def sass_stats(cuobjdump, cubin, kernel):
    r = subprocess.run([cuobjdump, "--dump-sass", "-fun", kernel, cubin], capture_output=True, text=True,
                       env=dict(os.environ, PATH=str(Path(cuobjdump).parent) + os.pathsep + os.environ.get("PATH", "")))
    ins = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,6})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    ops = Counter()
    for _, text in ins:
        words = text.split()
        op = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
        ops[op] += 1
    # Plain global loads and stores (cp.async's LDGSTS counted apart from them).
    loads = sum(n for op, n in ops.items() if op.split(".")[0] == "LDG")
    wide = sum(n for op, n in ops.items() if op.split(".")[0] == "LDG" and op.endswith(".128"))
    stores = sum(n for op, n in ops.items() if op.split(".")[0] == "STG")
    wide_st = sum(n for op, n in ops.items() if op.split(".")[0] == "STG" and op.endswith(".128"))
    loop = 0
    for addr, text in ins:
        m = re.search(r"BRA (0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            loop = max(loop, (addr - int(m.group(1), 16)) // 16 + 1)
    mma = sum(n for op, n in ops.items() if op.startswith(("HMMA", "HGMMA")))
    return len(ins), mma, f"{wide}/{loads}", f"{wide_st}/{stores}", loop, serial_loads(ins)


def serial_loads(ins):
    """Global loads whose value is read before the next global load is issued, in program
    order: each is a round trip to memory the thread sits out before it can issue more. A kernel
    that loads several values per thread should have few (docs/performance.md: the depthwise and
    LayerNorm kernels had one per tap and per vector, each load behind its own bounds branch). A
    grid-stride loop of one load per step counts one, correctly: that is its structure. Program
    order stands in for control flow, so the count is a comparison between versions of a kernel,
    not an exact number of round trips."""

    def parse(text):
        words = text.split(None, 2) if text.startswith("@") else [None] + text.split(None, 1)
        op = words[1] if len(words) > 1 else ""
        operands = [o.strip() for o in words[2].split(",")] if len(words) > 2 else []
        return op, operands

    def regs(operand, width=1):
        m = re.search(r"\bR(\d+)\b", operand)
        return {int(m.group(1)) + k for k in range(width)} if m else set()

    decoded = [parse(text) for _, text in ins]
    count = 0
    for i, (op, operands) in enumerate(decoded):
        if op.split(".")[0] != "LDG" or not operands:
            continue
        width = 4 if op.endswith(".128") else 2 if op.endswith(".64") else 1
        dest = regs(operands[0], width)
        for op2, operands2 in decoded[i + 1:]:
            if op2.split(".")[0] == "LDG":
                break  # the next load was issued first
            stores = op2.split(".")[0] in ("STG", "STS", "ST", "STL", "RED", "ATOM", "ATOMG")
            sources = operands2 if stores else operands2[1:]
            if any(regs(o) & dest for o in sources):
                # read before any further load; counts only if another load follows somewhere
                count += any(o.split(".")[0] == "LDG" for o, _ in decoded[i + 1:])
                break
    return count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--install-tools", action="store_true", help="download cuobjdump and nvdisasm into target/sass-tools")
    ap.add_argument("--kernel", nargs="*", help="only these kernels (default: all)")
    args = ap.parse_args()
    nvcc = find_nvcc()
    if not nvcc:
        sys.exit("sass_report: no nvcc (run scripts/setup-cuda.sh, or set CUDA_HOME)")
    if args.install_tools:
        install_tools()
    cuobjdump = str(TOOLS / "cuobjdump") if (TOOLS / "cuobjdump").exists() else shutil.which("cuobjdump")
    if cuobjdump and not (Path(cuobjdump).parent / "nvdisasm").exists() and not shutil.which("nvdisasm"):
        cuobjdump = None
    print(f"{'kernel':<26}{'regs':>5}{'spill':>7}{'smem':>7}", end="")
    print(f"{'instrs':>8}{'mma':>6}{'LDG.128':>10}{'STG.128':>10}{'loop':>6}{'serial':>8}" if cuobjdump else "   (no cuobjdump: --install-tools for the SASS columns)")
    with tempfile.TemporaryDirectory() as d:
        for src in sorted(glob.glob(str(ROOT / "kernels" / "*.cu"))):
            cubin = os.path.join(d, Path(src).stem + ".cubin")
            for kernel, (regs, spill, smem) in sorted(resources(nvcc, src, args.arch, cubin).items()):
                if args.kernel and kernel not in args.kernel:
                    continue
                line = f"{kernel:<26}{regs:>5}{spill:>7}{smem:>7}"
                if cuobjdump:
                    n, mma, ldg, stg, loop, serial = sass_stats(cuobjdump, cubin, kernel)
                    line += f"{n:>8}{mma:>6}{ldg:>10}{stg:>10}{loop:>6}{serial:>8}"
                print(line)


if __name__ == "__main__":
    main()
