"""Full-size fidelity: the engine against diffusers/transformers on the real architectures with
random weights, on the GPU machine (or, with --tiny, on tiny shapes anywhere).

For each component (text_encoder, prior, decoder, vqgan) it builds the diffusers/transformers
model with random weights, writes it in the diffusers layout under --work, runs the reference
forward in f32 (TF32 off), runs `cascade forward` on the same files and inputs in bf16 and f32,
and prints the relative L2 error of each, with the reference output's norm and, for the UNets,
the range of their blocks' output RMS (a saturated or exploding reference would prove nothing).

Weights are drawn N(0, 1/fan_in), and every residual branch's output projection (ResBlock fc2,
attention out, CLIP fc2/out_proj, Stage A fc2) and every TimestepBlock mapper is further scaled
by 1/sqrt(2·blocks), so activations stay O(1) through all 64 Stage C blocks. Values are rounded
to bf16 and stored as the bf16 variant (half the disk; the f32 paths see exactly the same
numbers). --trace prior prints the error after every block (docs/fidelity.md).

    python tools/gpu/fidelity.py --engine gpu-bundle/bin/cascade [--tiny] [--device cuda] [--components prior,decoder]
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))

BOUNDS = {"bfloat16": 2e-2, "float32": 1e-3}


def unet_config(kind, tiny):
    from make_fixtures import unet_configs  # tiny layouts shared with the CPU fixtures

    if tiny:
        prior, decoder = unet_configs(lite=False)
        return prior if kind == "prior" else decoder
    rta = ["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"]
    rt = ["SDCascadeResBlock", "SDCascadeTimestepBlock"]
    if kind == "prior":
        return dict(in_channels=16, out_channels=16, timestep_ratio_embedding_dim=64, patch_size=1, conditioning_dim=2048,
                    block_out_channels=[2048, 2048], num_attention_heads=[32, 32], down_num_layers_per_block=[8, 24],
                    up_num_layers_per_block=[24, 8], down_blocks_repeat_mappers=[1, 1], up_blocks_repeat_mappers=[1, 1],
                    block_types_per_layer=[rta, rta], clip_text_in_channels=1280, clip_text_pooled_in_channels=1280,
                    clip_image_in_channels=768, clip_seq=4, kernel_size=3, dropout=[0.1, 0.1], self_attn=True,
                    timestep_conditioning_type=["sca", "crp"], switch_level=[False])
    return dict(in_channels=4, out_channels=4, timestep_ratio_embedding_dim=64, patch_size=2, conditioning_dim=1280,
                block_out_channels=[320, 640, 1280, 1280], num_attention_heads=[0, 0, 20, 20], down_num_layers_per_block=[2, 6, 28, 6],
                up_num_layers_per_block=[6, 28, 6, 2], down_blocks_repeat_mappers=[1, 1, 1, 1], up_blocks_repeat_mappers=[3, 3, 2, 2],
                block_types_per_layer=[rt, rt, rta, rta], clip_text_pooled_in_channels=1280, clip_seq=4, effnet_in_channels=16,
                pixel_mapper_in_channels=3, kernel_size=3, dropout=[0, 0, 0.1, 0.1], self_attn=True, timestep_conditioning_type=["sca"],
                switch_level=None)


BRANCH_OUT = ("channelwise.4.weight", "to_out.0.weight", "mlp.fc2.weight", "out_proj.weight", "channelwise.2.weight")
# A TimestepBlock's mappers (`mapper`, `mapper_sca`, `mapper_crp`): x·(1 + a) + b with a, b of
# unit scale would multiply the residual stream by up to ~2 at every block (seen: its RMS went
# from 1 to 4e4 through Stage C), so they are scaled like the branch outputs.
MODULATION = re.compile(r"\.mapper(_[a-z]+)?\.weight$")


def randomize(model, gen, blocks):
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.dtype.is_floating_point:
                continue
            randn = lambda shape: torch.randn(shape, generator=gen, device=p.device)
            if "running_var" in name:
                v = torch.rand(p.shape, generator=gen, device=p.device) + 0.5
            elif p.ndim >= 2:
                transposed = "up_upscalers" in name or ("up_blocks" in name and p.ndim == 4 and p.shape[-1] == 4)
                fan_in = p.shape[0] * p[0, 0].numel() if transposed else p[0].numel()
                v = randn(p.shape) / math.sqrt(fan_in)
                if name.endswith(BRANCH_OUT) or MODULATION.search(name):
                    v /= math.sqrt(2 * blocks)
            elif "norm" in name and name.endswith("weight"):
                v = 1 + 0.1 * randn(p.shape)
            elif name.endswith("gammas"):
                v = 0.3 * randn(p.shape)
            else:
                v = 0.02 * randn(p.shape)
            p.copy_(v.to(torch.bfloat16).to(p.dtype))


def medium(kind, cfg):
    """Full depth at medium widths (prior 256 channels, decoder 64–256): the depth's numerics on a
    CPU in minutes."""
    cfg.update(conditioning_dim=256, clip_text_pooled_in_channels=256)
    if kind == "prior":
        cfg.update(block_out_channels=[256, 256], num_attention_heads=[4, 4], clip_text_in_channels=256, clip_image_in_channels=64)
    else:
        cfg.update(block_out_channels=[64, 128, 256, 256], num_attention_heads=[0, 0, 4, 4])
    return cfg


def build(component, tiny, work, gen, wgen, device, prior_layers=None, medium_width=False):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel

    r = lambda *s: torch.randn(*s, generator=gen)
    if component == "text_encoder":
        cfg = dict(vocab_size=1514 if tiny else 49408, hidden_size=64 if tiny else 1280, intermediate_size=128 if tiny else 5120,
                   num_hidden_layers=2 if tiny else 32, num_attention_heads=1 if tiny else 20, max_position_embeddings=77,
                   hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=64 if tiny else 1280)
        cfg.update(bos_token_id=cfg["vocab_size"] - 2, eos_token_id=cfg["vocab_size"] - 1, pad_token_id=1)
        with torch.device(device):
            model = CLIPTextModelWithProjection(CLIPTextConfig(**cfg)).eval()
        randomize(model, wgen, cfg["num_hidden_layers"])
        ids = torch.full((2, 77), cfg["eos_token_id"], dtype=torch.int64)
        mask = torch.zeros(2, 77, dtype=torch.int64)
        for b, n in enumerate([12, 40]):
            ids[b, 0] = cfg["bos_token_id"]
            ids[b, 1 : n + 1] = torch.randint(0, cfg["vocab_size"] - 2, (n,), generator=gen)
            mask[b, : n + 2] = 1
        inputs = {"input_ids": ids, "attention_mask": mask}
    elif component in ("prior", "decoder"):
        cfg = unet_config(component, tiny)
        if medium_width and not tiny:
            cfg = medium(component, cfg)
        if component == "prior" and prior_layers:
            # Full width, fewer blocks: the full prior's numerics where its depth does not fit.
            down = [int(n) for n in prior_layers.split(",")]
            cfg.update(down_num_layers_per_block=down, up_num_layers_per_block=down[::-1])
        with torch.device(device):
            model = StableCascadeUNet(**cfg).eval()
        randomize(model, wgen, sum(cfg["down_num_layers_per_block"]) + sum(cfg["up_num_layers_per_block"]))
        if component == "prior":
            c = cfg["clip_text_in_channels"]
            hw = (3, 5) if tiny else (24, 24)
            inputs = dict(sample=r(2, 16, *hw), timestep_ratio=torch.tensor([0.73, 0.21]), clip_text_pooled=r(2, 1, cfg["clip_text_pooled_in_channels"]),
                          clip_text=r(2, 77, c), clip_img=torch.zeros(2, 1, cfg["clip_image_in_channels"]))
        else:
            hw = (32, 32) if tiny else (64, 64) if medium_width else (256, 256)
            inputs = dict(sample=r(1, 4, *hw), timestep_ratio=torch.tensor([0.41]), clip_text_pooled=r(1, 1, cfg["clip_text_pooled_in_channels"]),
                          effnet=r(1, 16, *((3, 3) if tiny else (6, 6) if medium_width else (24, 24))))
    else:
        with torch.device(device):
            model = PaellaVQModel(levels=2, bottleneck_blocks=2 if tiny else 12, embed_dim=32 if tiny else 384, num_vq_embeddings=16 if tiny else 8192).eval()
        randomize(model, wgen, 14)
        inputs = {"latents": r(1, 4, *((12, 10) if tiny else (256, 256)))}
    dest = work / component
    dest.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(str(dest), variant="bf16")
    return model.to(torch.float32), inputs


def hook_blocks(model, trace, rms_only=False):
    """Record every UNet block's output in `trace` (or with rms_only its RMS), named as the
    engine's --trace-blocks names them (`down_blocks.1.5`, `@r` for a level's repetition r > 0)."""
    handles = []
    for group in ("down_blocks", "up_blocks"):
        for li, level in enumerate(getattr(model, group)):
            for bi, block in enumerate(level):
                name = f"{group}.{li}.{bi}"

                def keep(_m, _inp, out, name=name):
                    n = sum(1 for k in trace if k == name or k.startswith(name + "@"))
                    key = name if n == 0 else f"{name}@{n}"
                    trace[key] = out.float().pow(2).mean().sqrt().item() if rms_only else out.float().cpu()

                handles.append(block.register_forward_hook(keep))
    return handles


def reference(component, model, inputs, device, dtype=torch.float32, trace=None, rms=None):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = model.to(device=device, dtype=dtype)
    dev_inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
    if "timestep_ratio" in inputs:
        # The timestep's sinusoidal embedding computed on the CPU from the f32 ratio, then moved
        # and cast, as the engine does. On the CPU the frequencies exp(-k·ln(10⁴)/(half − 1)) are
        # correctly rounded; CUDA's expf is an ulp off for some, which at arguments near 10⁴ rad
        # moves sin and cos by ~1e-3 and the whole network's output by ~2e-4 (measured on an
        # H200). A bf16 ratio alone would move the high frequencies by whole radians.
        dev_inputs["timestep_ratio"] = inputs["timestep_ratio"].to(device)
        embed = type(model).get_timestep_ratio_embedding
        model.get_timestep_ratio_embedding = lambda r, max_positions=10000: embed(model, r.float().cpu(), max_positions).to(device=r.device, dtype=dtype)
    handles = hook_blocks(model, trace) if trace is not None else []
    if rms is not None and component in ("prior", "decoder"):
        handles += hook_blocks(model, rms, rms_only=True)
    with torch.no_grad():
        if component == "text_encoder":
            o = model(dev_inputs["input_ids"], attention_mask=dev_inputs["attention_mask"], output_hidden_states=True)
            out = {"hidden_states_last": o.hidden_states[-1], "last_hidden_state": o.last_hidden_state, "text_embeds": o.text_embeds}
        elif component == "vqgan":
            out = {"image": model.decode(dev_inputs["latents"]).sample}
        else:
            out = {"out": model(**dev_inputs, return_dict=False)[0]}
    for h in handles:
        h.remove()
    model.to("cpu")
    model.__dict__.pop("get_timestep_ratio_embedding", None)
    return {k: v.float().cpu() for k, v in out.items()}


def rel_l2(got, want):
    return (torch.linalg.vector_norm(got.double() - want.double()) / torch.linalg.vector_norm(want.double())).item()


def print_trace(component, want, theirs, engine):
    """Block by block, in execution order: each output's relative L2 error against diffusers' f32,
    for the engine in each dtype and for diffusers' own bf16; and the growth of the bf16 errors
    over the previous block (where a block adds more error than its neighbours, look there)."""
    dtypes = list(engine)
    print(f"\n== {component}: error after each block against diffusers f32 ==")
    print(f"{'block':<22}{'ref RMS':>10}" + "".join(f"{'engine ' + (d if ':' not in d else 'bf16 ' + d.split('=')[-1]):>13}" for d in dtypes) + f"{'diffusers bf16':>16}{'Δ engine bf16':>15}{'Δ diffusers':>13}")
    prev = (0.0, 0.0)
    for name, w in want.items():
        if not any(name in engine[d] for d in dtypes):
            continue  # a TimestepBlock the engine applies inside the next block's pass
        errs = [rel_l2(engine[d][name], w) if name in engine[d] else float("nan") for d in dtypes]
        own = rel_l2(theirs[name], w) if theirs and name in theirs else float("nan")
        eb = errs[dtypes.index("bf16")] if "bf16" in dtypes else float("nan")
        print(f"{name:<22}{torch.linalg.vector_norm(w).item() / math.sqrt(w.numel()):>10.3e}" + "".join(f"{e:>13.2e}" for e in errs) + f"{own:>16.2e}{eb - prev[0]:>+15.2e}{own - prev[1]:>+13.2e}")
        prev = (eb, own)
    missing = [n for d in dtypes for n in engine[d] if n not in want]
    if missing:
        print(f"engine blocks without a diffusers match: {missing[:8]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="gpu-bundle/bin/cascade")
    ap.add_argument("--work", default="/tmp/cascade-fidelity")
    ap.add_argument("--components", default="text_encoder,prior,decoder,vqgan")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--engine-device", default=None, help="the engine's device when it differs from the reference's (e.g. the CUDA emulator against a CPU reference)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--medium", action="store_true", help="UNets at full depth and medium widths (a CPU can run them)")
    ap.add_argument("--dtypes", default="bf16,f32")
    ap.add_argument("--bf16-variant", action="append", default=[], metavar="NAME=VALUE",
                    help="run the engine's bf16 again with this environment variable set (repeatable), e.g. CASCADE_GEMM_REDUCTION=any")
    ap.add_argument("--prior-layers", default=None, help="the prior's blocks per level, down (up mirrors it), e.g. 2,2 for a shallow full-width prior")
    ap.add_argument("--trace", default="", help="UNet components (prior,decoder) whose every block's error is printed, engine and diffusers bf16")
    args = ap.parse_args()
    work = Path(args.work)
    gen = torch.Generator().manual_seed(4321)
    wgen = torch.Generator(args.device).manual_seed(1234)
    engine_device = args.engine_device or ("cuda" if args.device.startswith("cuda") else "cpu")
    rows, scales = [], []
    for component in args.components.split(","):
        t0 = time.time()
        model, inputs = build(component, args.tiny, work, gen, wgen, args.device, args.prior_layers, args.medium)
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(work / f"{component}_in.safetensors"))
        tracing = component in args.trace.split(",")
        want_blocks, their_blocks = ({}, {}) if tracing else (None, None)
        block_rms = {}
        want = reference(component, model, inputs, args.device, trace=want_blocks, rms=block_rms)
        if block_rms:
            lo, hi = min(block_rms.values()), max(block_rms.values())
            scales.append(f"{component}: the f32 reference's block outputs have RMS {lo:.3g} to {hi:.3g} over {len(block_rms)} blocks")
        # For scale: diffusers itself in bf16 (the same bf16 weights) against its f32 output.
        theirs = reference(component, model, inputs, args.device, torch.bfloat16, trace=their_blocks) if "bf16" in args.dtypes else {}
        del model
        engine_blocks = {}
        # Each dtype, then bf16 again under each --bf16-variant's environment (rows "bf16:NAME=VALUE").
        runs = args.dtypes.split(",") + [f"bf16:{v}" for v in args.bf16_variant if "bf16" in args.dtypes]
        for dtype in runs:
            label = dtype.replace(":", "_").replace("=", "-")
            out = work / f"{component}_{label}.safetensors"
            env = dict(os.environ)
            if ":" in dtype:
                name, _, value = dtype.split(":", 1)[1].partition("=")
                env[name] = value
            t1 = time.time()
            proc = subprocess.run([args.engine, "forward", "--model-dir", str(work), "--component", component, "--inputs", str(work / f"{component}_in.safetensors"),
                                   "--output", str(out), "--device", engine_device, "--dtype", dtype.split(":")[0]]
                                  + (["--trace-blocks", str(work / f"{component}_{label}_blocks.safetensors")] if tracing else []), capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                rows.append((component, dtype, "-", "-", float("nan"), None, "ERROR: " + proc.stderr.strip().splitlines()[-1] if proc.stderr else "ERROR"))
                continue
            got = load_file(str(out))
            for name, w in want.items():
                err = rel_l2(got[name], w)
                bound = BOUNDS["bfloat16" if dtype.startswith("bf16") else "float32"]
                own = rel_l2(theirs[name], w) if dtype.startswith("bf16") and name in theirs else None
                rows.append((component, dtype, name, f"{torch.linalg.vector_norm(w).item():.3e}", err, own, "ok" if err <= bound else f"FAIL (> {bound:g})"))
            print(f"{component} {dtype}: engine {time.time() - t1:.1f} s", file=sys.stderr)
            if tracing:
                engine_blocks[dtype] = load_file(str(work / f"{component}_{label}_blocks.safetensors"))
        if tracing:
            print_trace(component, want_blocks, their_blocks, engine_blocks)
        print(f"{component}: {time.time() - t0:.1f} s", file=sys.stderr)
    print("\n== fidelity (engine vs diffusers f32 reference) ==")
    print(f"{'component':<14}{'dtype':<6}{'output':<20}{'|ref|':>11}{'rel L2':>11}{'diffusers':>11}  verdict")
    print(f"{'':<51}{'in bf16':>11}")
    failed = False
    for c, d, n, norm, err, own, verdict in rows:
        failed |= verdict != "ok"
        own = f"{own:11.2e}" if own is not None else f"{'-':>11}"
        if ":" in d:
            print(f"  (bf16 with {d.split(':', 1)[1]}:)")
            d = "bf16"
        print(f"{c:<14}{d:<6}{n:<20}{norm:>11}{err:>11.2e}{own}  {verdict}")
    for line in scales:
        print(line)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
