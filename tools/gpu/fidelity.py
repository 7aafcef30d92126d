"""Full-size fidelity: the engine against diffusers/transformers on the real architectures with
random weights, on the GPU machine (or, with --tiny, on tiny shapes anywhere).

For each component (text_encoder, prior, decoder, vqgan) it builds the diffusers/transformers
model with random weights, writes it in the diffusers layout under --work, runs the reference
forward in f32 (TF32 off), runs `cascade forward` on the same files and inputs in bf16 and f32,
and prints the relative L2 error of each, with the reference output's norm (a saturated or
exploding reference would prove nothing).

Weights are drawn N(0, 1/fan_in), and every residual branch's output projection (ResBlock fc2,
attention out, CLIP fc2/out_proj, Stage A fc2) is further scaled by 1/sqrt(2·blocks), so
activations stay O(1) through all 64 Stage C blocks. Values are rounded to bf16 and stored as the
bf16 variant (half the disk; the f32 paths see exactly the same numbers).

    python tools/gpu/fidelity.py --engine gpu-bundle/bin/cascade [--tiny] [--device cuda] [--components prior,decoder]
"""
import argparse
import json
import math
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
                if name.endswith(BRANCH_OUT):
                    v /= math.sqrt(2 * blocks)
            elif "norm" in name and name.endswith("weight"):
                v = 1 + 0.1 * randn(p.shape)
            elif name.endswith("gammas"):
                v = 0.3 * randn(p.shape)
            else:
                v = 0.02 * randn(p.shape)
            p.copy_(v.to(torch.bfloat16).to(p.dtype))


def build(component, tiny, work, gen, wgen, device):
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
        with torch.device(device):
            model = StableCascadeUNet(**cfg).eval()
        randomize(model, wgen, sum(cfg["down_num_layers_per_block"]) + sum(cfg["up_num_layers_per_block"]))
        if component == "prior":
            c = cfg["clip_text_in_channels"]
            hw = (3, 5) if tiny else (24, 24)
            inputs = dict(sample=r(2, 16, *hw), timestep_ratio=torch.tensor([0.73, 0.21]), clip_text_pooled=r(2, 1, cfg["clip_text_pooled_in_channels"]),
                          clip_text=r(2, 77, c), clip_img=torch.zeros(2, 1, cfg["clip_image_in_channels"]))
        else:
            hw = (32, 32) if tiny else (256, 256)
            inputs = dict(sample=r(1, 4, *hw), timestep_ratio=torch.tensor([0.41]), clip_text_pooled=r(1, 1, cfg["clip_text_pooled_in_channels"]),
                          effnet=r(1, 16, *((3, 3) if tiny else (24, 24))))
    else:
        with torch.device(device):
            model = PaellaVQModel(levels=2, bottleneck_blocks=2 if tiny else 12, embed_dim=32 if tiny else 384, num_vq_embeddings=16 if tiny else 8192).eval()
        randomize(model, wgen, 14)
        inputs = {"latents": r(1, 4, *((12, 10) if tiny else (256, 256)))}
    dest = work / component
    dest.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(str(dest), variant="bf16")
    return model.to(torch.float32), inputs


def reference(component, model, inputs, device, dtype=torch.float32):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = model.to(device=device, dtype=dtype)
    dev_inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
    if dtype != torch.float32 and "timestep_ratio" in inputs:
        # As the engine does: the timestep's sinusoidal embedding from the f32 ratio, then cast
        # (a bf16 ratio alone moves the high frequencies by whole radians).
        dev_inputs["timestep_ratio"] = inputs["timestep_ratio"].to(device)
        embed = type(model).get_timestep_ratio_embedding
        model.get_timestep_ratio_embedding = lambda r, max_positions=10000: embed(model, r.float(), max_positions).to(dtype)
    with torch.no_grad():
        if component == "text_encoder":
            o = model(dev_inputs["input_ids"], attention_mask=dev_inputs["attention_mask"], output_hidden_states=True)
            out = {"hidden_states_last": o.hidden_states[-1], "last_hidden_state": o.last_hidden_state, "text_embeds": o.text_embeds}
        elif component == "vqgan":
            out = {"image": model.decode(dev_inputs["latents"]).sample}
        else:
            out = {"out": model(**dev_inputs, return_dict=False)[0]}
    model.to("cpu")
    model.__dict__.pop("get_timestep_ratio_embedding", None)
    return {k: v.float().cpu() for k, v in out.items()}


def rel_l2(got, want):
    return (torch.linalg.vector_norm(got.double() - want.double()) / torch.linalg.vector_norm(want.double())).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="gpu-bundle/bin/cascade")
    ap.add_argument("--work", default="/tmp/cascade-fidelity")
    ap.add_argument("--components", default="text_encoder,prior,decoder,vqgan")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--engine-device", default=None, help="the engine's device when it differs from the reference's (e.g. the CUDA emulator against a CPU reference)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--dtypes", default="bf16,f32")
    args = ap.parse_args()
    work = Path(args.work)
    gen = torch.Generator().manual_seed(4321)
    wgen = torch.Generator(args.device).manual_seed(1234)
    engine_device = args.engine_device or ("cuda" if args.device.startswith("cuda") else "cpu")
    rows = []
    for component in args.components.split(","):
        t0 = time.time()
        model, inputs = build(component, args.tiny, work, gen, wgen, args.device)
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(work / f"{component}_in.safetensors"))
        want = reference(component, model, inputs, args.device)
        # For scale: diffusers itself in bf16 (the same bf16 weights) against its f32 output.
        theirs = reference(component, model, inputs, args.device, torch.bfloat16) if "bf16" in args.dtypes else {}
        del model
        for dtype in args.dtypes.split(","):
            out = work / f"{component}_{dtype}.safetensors"
            t1 = time.time()
            proc = subprocess.run([args.engine, "forward", "--model-dir", str(work), "--component", component, "--inputs", str(work / f"{component}_in.safetensors"),
                                   "--output", str(out), "--device", engine_device, "--dtype", dtype], capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append((component, dtype, "-", "-", float("nan"), None, "ERROR: " + proc.stderr.strip().splitlines()[-1] if proc.stderr else "ERROR"))
                continue
            got = load_file(str(out))
            for name, w in want.items():
                err = rel_l2(got[name], w)
                bound = BOUNDS["bfloat16" if dtype == "bf16" else "float32"]
                own = rel_l2(theirs[name], w) if dtype == "bf16" and name in theirs else None
                rows.append((component, dtype, name, f"{torch.linalg.vector_norm(w).item():.3e}", err, own, "ok" if err <= bound else f"FAIL (> {bound:g})"))
            print(f"{component} {dtype}: engine {time.time() - t1:.1f} s", file=sys.stderr)
        print(f"{component}: {time.time() - t0:.1f} s", file=sys.stderr)
    print("\n== fidelity (engine vs diffusers f32 reference) ==")
    print(f"{'component':<14}{'dtype':<6}{'output':<20}{'|ref|':>11}{'rel L2':>11}{'diffusers':>11}  verdict")
    print(f"{'':<51}{'in bf16':>11}")
    failed = False
    for c, d, n, norm, err, own, verdict in rows:
        failed |= verdict != "ok"
        own = f"{own:11.2e}" if own is not None else f"{'-':>11}"
        print(f"{c:<14}{d:<6}{n:<20}{norm:>11}{err:>11.2e}{own}  {verdict}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
