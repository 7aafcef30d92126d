#!/usr/bin/env python3
"""Builds the CUDA emulator: kernels/*.cu compiled for the CPU against tools/emu/include, the
emulated driver and cuBLASLt, linked into one shared library that answers to the names cudarc
loads (libcuda.so.1, libcublasLt.so, ...). Output: target/emu/. Usage: tools/emu/build.py
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMU = os.path.join(ROOT, "tools", "emu")
OUT = os.path.join(ROOT, "target", "emu")
KERNELS = os.path.join(ROOT, "kernels")
CXX = os.environ.get("CXX", "g++")
ALIGNMENT_CHECK = ["-fsanitize=alignment", "-fno-sanitize-recover=alignment"]
FLAGS = ["-std=c++17", "-O2", "-g", "-fPIC", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function", "-Wno-unused-variable", "-Wno-unknown-pragmas", "-Wno-psabi"]

ENTRY = re.compile(r'^extern "C" __global__ void (?:(?:__launch_bounds__|__maxnreg__)\([^)]*\) )?(\w+)\((?:const __grid_constant__ )?(\w+) \w+\)')
DYN_SMEM = re.compile(r"extern __shared__ (\w+) (\w+)\[\];")


def run(cmd):
    r = subprocess.run(cmd)
    if r.returncode != 0:
        sys.exit(f"emu build: {' '.join(cmd)} failed")


def main():
    os.makedirs(os.path.join(OUT, "src"), exist_ok=True)
    objects, entries = [], []
    for name in sorted(os.listdir(KERNELS)):
        if not name.endswith(".cu"):
            continue
        text = open(os.path.join(KERNELS, name)).read()
        for line in text.splitlines():
            m = ENTRY.match(line)
            if m:
                entries.append((m.group(1), m.group(2)))
            elif line.startswith('extern "C" __global__'):
                sys.exit(f"emu build: cannot parse the entry point line in kernels/{name}: {line}")
        # Dynamic shared memory is the launch's per-block buffer.
        text = DYN_SMEM.sub(r"\1* \2 = (\1*)emu::dynamic_smem();", text)
        src = os.path.join(OUT, "src", name[:-3] + ".cpp")
        open(src, "w").write(f'#line 1 "kernels/{name}"\n' + text)
        obj = src[:-4] + ".o"
        # A misaligned vector access (a 16-byte load from an address that is not a multiple of
        # 16) faults on a GPU; UBSan's alignment check stops the emulated kernel there too.
        run([CXX, *FLAGS, *ALIGNMENT_CHECK, "-DCASCADE_EMU", "-I", os.path.join(EMU, "include"), "-I", KERNELS, "-c", src, "-o", obj])
        objects.append(obj)
    reg = os.path.join(OUT, "src", "registry.cpp")
    with open(reg, "w") as f:
        f.write('#include <stddef.h>\n#include "params.h"\n')
        f.write("struct KernelEntry { const char* name; void (*body)(void*); size_t params_bytes; };\n")
        for k, p in entries:
            f.write(f'extern "C" void {k}({p});\nstatic void body_{k}(void* p) {{ {k}(*({p}*)p); }}\n')
        f.write('extern "C" const KernelEntry emu_kernels[] = {\n')
        for k, p in entries:
            f.write(f'    {{"{k}", body_{k}, sizeof({p})}},\n')
        f.write("};\n")
        f.write(f'extern "C" const size_t emu_kernel_count = {len(entries)};\n')
    for src in [reg, os.path.join(EMU, "fiber.cpp"), os.path.join(EMU, "driver.cpp")]:
        obj = os.path.join(OUT, "src", os.path.basename(src)[:-4] + ".o")
        run([CXX, *FLAGS, "-I", KERNELS, "-I", EMU, "-c", src, "-o", obj])
        objects.append(obj)
    # Every entry point's name: scripts/emu-test.sh checks that the tests launch each one.
    with open(os.path.join(OUT, "kernels.txt"), "w") as f:
        f.write("".join(f"{k}\n" for k, _ in sorted(entries)))
    lib = os.path.join(OUT, "libcascade_emu.so")
    run([CXX, "-shared", *ALIGNMENT_CHECK, "-o", lib, *objects, "-lpthread"])
    for alias in ["libcuda.so", "libcuda.so.1", "libcublasLt.so", "libcublasLt.so.13"]:
        path = os.path.join(OUT, alias)
        if os.path.lexists(path):
            os.remove(path)
        os.symlink("libcascade_emu.so", path)
    print(f"emu build: {len(entries)} kernels -> {lib}")


if __name__ == "__main__":
    main()
