"""Side by side on one GPU, in one run: diffusers (SDPA eager, and torch.compile when it
compiles within --compile-budget seconds) against the engine's stage benches, bf16, random
weights of the real shapes. Prints milliseconds per call and the ratio for each stage and for
the whole 1024² pipeline (2 CLIP encodes, 20 Stage C steps with guidance, 10 Stage B steps,
Stage A), composed from the per-stage medians, and the engine's whole generate() call measured
end to end.

    python tools/gpu/side_by_side.py --bench gpu-bundle/benches/stages [--compile] [--compile-budget 300]
        [--stages clip_bigg,stage_c,stage_b,stage_a]

torch.compile takes minutes per model, so `--stages` narrows a run to some models: one call per
model keeps each under the GPU machine's per-command limit, and inductor's cache in /tmp carries
the compiled kernels to a later call on the same (still warm) machine. Stage A's compiled
function is `PaellaVQModel.decode` itself (compiling the module would compile only its forward,
the encoder and decoder together, which the decode call never runs).
"""
import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import unet_config  # noqa: E402


def cuda_time(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


STAGES = ("clip_bigg", "stage_c", "stage_b", "stage_a")


def diffusers_stages(compile_, budget, stages=STAGES):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel

    dev, dt = "cuda", torch.bfloat16
    out = {}
    # Each case: the model (moved off the card after its turn) and the function to time and
    # compile, called with the model or its compiled version.
    cases = {}
    if "clip_bigg" in stages:
        with torch.device(dev):
            clip = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                              num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)).to(dt).eval()
        ids = torch.randint(0, 49406, (2, 77), device=dev)
        cases["clip_bigg"] = (clip, lambda m: m, lambda f: f(ids, output_hidden_states=True))
    for name, kind in [("stage_c", "prior"), ("stage_b", "decoder")]:
        if name not in stages:
            continue
        with torch.device(dev):
            m = StableCascadeUNet(**unet_config(kind, False)).to(dt).eval()
        if kind == "prior":
            args = dict(sample=torch.randn(2, 16, 24, 24, device=dev, dtype=dt), timestep_ratio=torch.full((2,), 0.5, device=dev, dtype=dt),
                        clip_text_pooled=torch.randn(2, 1, 1280, device=dev, dtype=dt), clip_text=torch.randn(2, 77, 1280, device=dev, dtype=dt),
                        clip_img=torch.zeros(2, 1, 768, device=dev, dtype=dt))
        else:
            args = dict(sample=torch.randn(1, 4, 256, 256, device=dev, dtype=dt), timestep_ratio=torch.full((1,), 0.5, device=dev, dtype=dt),
                        clip_text_pooled=torch.randn(1, 1, 1280, device=dev, dtype=dt), effnet=torch.randn(1, 16, 24, 24, device=dev, dtype=dt))
        cases[name] = (m, lambda m: m, lambda f, a=args: f(**a))
    if "stage_a" in stages:
        with torch.device(dev):
            vq = PaellaVQModel().to(dt).eval()
        lat = torch.randn(1, 4, 256, 256, device=dev, dtype=dt)
        cases["stage_a"] = (vq, lambda m: m.decode, lambda f: f(lat))
    with torch.no_grad():
        for name, (m, target, call) in cases.items():
            out[(name, "sdpa")] = cuda_time(lambda: call(target(m)))
            if compile_:
                t0 = time.time()
                try:
                    cf = torch.compile(target(m), mode="reduce-overhead")
                    call(cf)
                    took = time.time() - t0
                    print(f"torch.compile {name}: compiled in {took:.0f} s", file=sys.stderr, flush=True)
                    if took < budget:
                        out[(name, "compile")] = cuda_time(lambda: call(cf))
                except Exception as e:  # compile failures are reported, not fatal
                    print(f"torch.compile {name}: {e}", file=sys.stderr)
            m.to("cpu")
            torch.cuda.empty_cache()
    return out


def engine_stages(bench, log=None):
    if log:  # the stages bench already ran in this call, on this card
        text = Path(log).read_text()
    else:
        env = dict(os.environ, CASCADE_BENCH_QUICK="1", CASCADE_BENCH_STAGES="clip,stage_c,stage_b,stage_a,pipeline_full")
        text = subprocess.run([bench, "--bench"], capture_output=True, text=True, env=env).stdout
    out = {}
    for line in text.splitlines():
        m = re.match(r"BENCH stage/(\S+?)/\S+\s+([\d.]+) ms", line)
        if m and not m.group(1).endswith("_lite"):
            out[m.group(1)] = float(m.group(2))
        m = re.match(r"BENCH pipeline_full/\S+\s+([\d.]+) ms", line)
        if m:
            out["pipeline_measured"] = float(m.group(1))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="gpu-bundle/benches/stages")
    ap.add_argument("--bench-log", help="the output of a stages bench run earlier on the same card, instead of running --bench")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-budget", type=float, default=300)
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, from " + ", ".join(STAGES))
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        ap.error(f"unknown stage(s) {', '.join(unknown)}: choose from {', '.join(STAGES)}")
    eng = engine_stages(args.bench, args.bench_log)
    ref = diffusers_stages(args.compile, args.compile_budget, stages)
    print(f"\n== side by side on {torch.cuda.get_device_name()} (bf16, ms per call) ==")
    print(f"{'stage':<12}{'engine':>10}{'SDPA':>10}{'ratio':>8}{'compile':>10}{'ratio':>8}")
    counts = {"clip_bigg": 2, "stage_c": 20, "stage_b": 10, "stage_a": 1}
    totals = {"engine": 0.0, "sdpa": 0.0, "compile": 0.0}
    for name, n in counts.items():
        if name not in stages:
            totals = {k: None for k in totals}  # a composed pipeline needs every stage
            continue
        e, s, c = eng.get(name), ref.get((name, "sdpa")), ref.get((name, "compile"))
        fmt = lambda v: f"{v:10.2f}" if v is not None else f"{'-':>10}"
        ratio = lambda a, b: f"{b / a:7.2f}x" if a and b else f"{'-':>8}"
        print(f"{name:<12}{fmt(e)}{fmt(s)}{ratio(e, s)}{fmt(c)}{ratio(e, c)}")
        for k, v in (("engine", e), ("sdpa", s), ("compile", c)):
            totals[k] = totals[k] + n * v if v is not None and totals[k] is not None else None
    if totals["engine"] is not None:
        line = f"{'pipeline':<12}{totals['engine']:10.1f}{totals['sdpa'] or 0:10.1f}"
        if totals["compile"] is not None:
            line += f"{'':>8}{totals['compile']:10.1f}"
        print(line + "   (composed: the counts above times the medians)")
    if "pipeline_measured" in eng:
        print(f"{'measured':<12}{eng['pipeline_measured']:10.1f}{'':>10}   (the engine's generate() end to end, graphs kept)")


if __name__ == "__main__":
    main()
