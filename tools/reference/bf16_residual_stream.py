#!/usr/bin/env python3
"""How much of bf16's error in Stage C and Stage B is the rounding of the residual stream?

Runs diffusers' StableCascadeUNet with the fidelity script's random weights (tools/gpu/
fidelity.py: O(1) activations through every block) three ways: f32 (the reference), bf16 as
diffusers runs it, and bf16 with the residual stream kept in f32 (every ResBlock, AttnBlock and
TimestepBlock computes its branch in bf16 from a bf16 copy of the stream, and the stream itself,
x + branch and x·(1 + a) + b, stays f32). Prints each one's relative L2 error against f32.

By default medium widths at full depth on the CPU (prior 256 channels, decoder 64–256; about a
minute on 2 cores); --full uses the real widths (a GPU: --device cuda).

    python3 tools/reference/bf16_residual_stream.py [--full] [--device cuda]
"""
import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
import fidelity  # noqa: E402  (random weights, reference forward, rel_l2)
import diffusers.models.unets.unet_stable_cascade as sc  # noqa: E402

BF16 = torch.bfloat16


def with_f32_stream(model):
    """A copy of the bf16 `model` whose blocks keep the residual stream in f32."""
    m = copy.deepcopy(model)

    def res_block(self, x, x_skip=None):
        h = self.norm(self.depthwise(x.to(BF16)))
        if x_skip is not None:
            h = torch.cat([h, x_skip.to(BF16)], dim=1)
        return x.float() + self.channelwise(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).float()

    def timestep_block(self, x, t):
        t = t.chunk(len(self.conds) + 1, dim=1)
        a, b = self.mapper(t[0])[:, :, None, None].chunk(2, dim=1)
        for i, c in enumerate(self.conds):
            ac, bc = getattr(self, f"mapper_{c}")(t[i + 1])[:, :, None, None].chunk(2, dim=1)
            a, b = a + ac, b + bc
        return x.float() * (1 + a.float()) + b.float()

    def attn_block(self, x, kv):
        kv = self.kv_mapper(kv)
        norm_x = self.norm(x.to(BF16))
        if self.self_attn:
            kv = torch.cat([norm_x.view(x.shape[0], x.shape[1], -1).transpose(1, 2), kv], dim=1)
        return x.float() + self.attention(norm_x, encoder_hidden_states=kv).float()

    for mod in m.modules():
        if isinstance(mod, sc.SDCascadeResBlock):
            mod.forward = res_block.__get__(mod)
        elif isinstance(mod, sc.SDCascadeTimestepBlock):
            mod.forward = timestep_block.__get__(mod)
        elif isinstance(mod, sc.SDCascadeAttnBlock):
            mod.forward = attn_block.__get__(mod)
    # The layers between levels and the head take the stream back in bf16.
    to_bf16 = lambda _mod, args: tuple(a.to(BF16) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    repeat = [r for group in list(m.down_repeat_mappers) + list(m.up_repeat_mappers) for r in group]
    for mod in list(m.down_downscalers) + list(m.up_upscalers) + repeat + [m.clf]:
        mod.register_forward_pre_hook(to_bf16)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="the real widths (needs a GPU's memory and speed)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    for kind in ["prior", "decoder"]:
        cfg = fidelity.unet_config(kind, False)
        c_cond = 2048 if kind == "prior" else 1280
        if not args.full:
            c_cond = 256
            if kind == "prior":
                cfg.update(block_out_channels=[256, 256], num_attention_heads=[4, 4], clip_text_in_channels=256, clip_image_in_channels=64)
            else:
                cfg.update(block_out_channels=[64, 128, 256, 256], num_attention_heads=[0, 0, 4, 4])
            cfg.update(conditioning_dim=256, clip_text_pooled_in_channels=256)
        with torch.device(args.device):
            model = sc.StableCascadeUNet(**cfg).eval()
        gen = torch.Generator(args.device).manual_seed(1)
        fidelity.randomize(model, gen, sum(cfg["down_num_layers_per_block"]) + sum(cfg["up_num_layers_per_block"]))
        g = torch.Generator().manual_seed(2)
        r = lambda *s: torch.randn(*s, generator=g)
        if kind == "prior":
            inputs = dict(sample=r(2, 16, 24, 24), timestep_ratio=torch.tensor([0.73, 0.21]), clip_text_pooled=r(2, 1, cfg["clip_text_pooled_in_channels"]),
                          clip_text=r(2, 77, cfg["clip_text_in_channels"]), clip_img=torch.zeros(2, 1, cfg["clip_image_in_channels"]))
        else:
            hw = 256 if args.full else 64
            inputs = dict(sample=r(1, 4, hw, hw), timestep_ratio=torch.tensor([0.41]), clip_text_pooled=r(1, 1, cfg["clip_text_pooled_in_channels"]),
                          effnet=r(1, 16, hw // 10, hw // 10))
        want = fidelity.reference(kind, model, inputs, args.device)["out"]
        plain = fidelity.reference(kind, model, inputs, args.device, BF16)["out"]
        stream = fidelity.reference(kind, with_f32_stream(model.to(BF16)), inputs, args.device, BF16)["out"]
        print(f"{kind:<8} bf16 {fidelity.rel_l2(plain, want):.2e}   bf16 with an f32 residual stream {fidelity.rel_l2(stream, want):.2e}", flush=True)
        del model


if __name__ == "__main__":
    main()
