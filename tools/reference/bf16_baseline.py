#!/usr/bin/env python3
"""The tiny pipeline of tests/fixtures/tiny run by diffusers in bf16, with the same injected
noise as the f32 reference: how far bf16 itself moves each output from f32. The engine's bf16
pipeline is held to a bound relative to this (tests/pipeline.rs), since a 3-step pipeline with
guidance 4 amplifies rounding in ways no fixed bound on one network captures.

Writes tests/fixtures/tiny/reference/pipeline_bf16_baseline.json (each output's relative L2
error, diffusers bf16 against the f32 reference) and prints the table.
Needs torch, diffusers 0.42.1, transformers (see make_fixtures.py).
"""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import CLIPTextModelWithProjection, CLIPTokenizer
from diffusers import StableCascadeDecoderPipeline, StableCascadePriorPipeline, StableCascadeUNet
from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
from diffusers.pipelines.stable_cascade import pipeline_stable_cascade as decoder_module
from diffusers.pipelines.stable_cascade import pipeline_stable_cascade_prior as prior_module
from diffusers.schedulers import scheduling_ddpm_wuerstchen as scheduler_module
from diffusers.schedulers import DDPMWuerstchenScheduler

TINY = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny"


def main():
    ref = TINY / "reference"
    settings = json.loads((ref / "pipeline.json").read_text())
    noise = load_file(str(ref / "pipeline_noise.safetensors"))
    order = ["noise_prior_init"] + [f"noise_prior_step{i}" for i in range(settings["prior_steps"])]
    order += ["noise_decoder_init"] + [f"noise_decoder_step{i}" for i in range(settings["decoder_steps"])]
    draws = [noise[k] for k in order]

    def injected_randn(shape, generator=None, device=None, dtype=None, layout=None):
        t = draws.pop(0)
        assert tuple(t.shape) == tuple(shape), (t.shape, shape)
        return t.to(dtype)

    for module in (prior_module, decoder_module, scheduler_module):
        module.randn_tensor = injected_randn

    dt = torch.bfloat16
    tokenizer = CLIPTokenizer.from_pretrained(str(TINY / "tokenizer"))
    text_encoder = CLIPTextModelWithProjection.from_pretrained(str(TINY / "text_encoder")).to(dt).eval()
    prior = StableCascadeUNet.from_pretrained(str(TINY / "prior")).to(dt).eval()
    decoder = StableCascadeUNet.from_pretrained(str(TINY / "decoder")).to(dt).eval()
    vqgan = PaellaVQModel.from_pretrained(str(TINY / "vqgan")).to(dt).eval()
    prior_pipe = StableCascadePriorPipeline(tokenizer=tokenizer, text_encoder=text_encoder, prior=prior, scheduler=DDPMWuerstchenScheduler())
    decoder_pipe = StableCascadeDecoderPipeline(decoder=decoder, tokenizer=tokenizer, text_encoder=text_encoder, scheduler=DDPMWuerstchenScheduler(), vqgan=vqgan)
    s = settings
    with torch.no_grad():
        p = prior_pipe(prompt=s["prompt"], negative_prompt=s["negative_prompt"], height=s["height"], width=s["width"], num_inference_steps=s["prior_steps"], guidance_scale=s["prior_guidance"], output_type="pt")
        latents = decoder_pipe(image_embeddings=p.image_embeddings, prompt=s["prompt"], negative_prompt=s["negative_prompt"], num_inference_steps=s["decoder_steps"], guidance_scale=s["decoder_guidance"], output_type="latent").images
        unclamped = vqgan.decode(vqgan.config.scale_factor * latents).sample
    assert not draws, f"{len(draws)} noise tensors unused"
    out = {
        "prompt_embeds": p.prompt_embeds, "prompt_embeds_pooled": p.prompt_embeds_pooled,
        "negative_prompt_embeds": p.negative_prompt_embeds, "negative_prompt_embeds_pooled": p.negative_prompt_embeds_pooled,
        "image_embeddings": p.image_embeddings, "decoder_latents": latents,
        "images_unclamped": unclamped, "images": unclamped.clamp(0, 1),
    }
    out = {k: v.float().contiguous() for k, v in out.items()}
    want = load_file(str(ref / "pipeline_out.safetensors"))
    errors = {}
    for k, v in out.items():
        errors[k] = ((v - want[k]).norm() / want[k].norm()).item()
        print(f"{k:<32} diffusers bf16 vs f32: rel_l2 {errors[k]:.2e}")
    (ref / "pipeline_bf16_baseline.json").write_text(json.dumps(errors, indent=1) + "\n")


if __name__ == "__main__":
    main()
