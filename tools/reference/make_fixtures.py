"""Builds the tiny random-weight Stable Cascade fixtures the engine's CPU tests compare against.

Requires diffusers 0.42.1, transformers and torch (CPU). Run from the repository root:

    python tools/reference/make_fixtures.py --bpe path/to/bpe_simple_vocab_16e6.txt.gz [--seed 1234]

The BPE vocabulary ships inside the open-clip-torch wheel (open_clip/bpe_simple_vocab_16e6.txt.gz;
`pip download --no-deps open_clip_torch` and unzip it). Writes, under tests/fixtures/:

- tokenizer_full/: the real CLIP vocabulary as vocab.json + merges.txt (what the Stability
  snapshots ship) and tokenizer_cases.json: transformers' CLIPTokenizer ids and masks for many
  prompts;
- tiny/: one diffusers-layout directory (text_encoder, tokenizer, prior, decoder, vqgan,
  scheduler) with every parameter redrawn at random, a lite-shaped variant (prior_lite,
  decoder_lite), and reference tensors: text encoder outputs for several prompts, one forward of
  each UNet and of Stage A, and a short whole pipeline with every noise tensor diffusers drew.

Shapes are small but keep head_dim 64 (the engine's attention width) and every structural
feature: skip ResBlocks, repeat mappers, non-square latents and sizes that force the bilinear
skip resize.
"""
import argparse
import gzip
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

import diffusers
from diffusers import DDPMWuerstchenScheduler, StableCascadeDecoderPipeline, StableCascadePriorPipeline, StableCascadeUNet
from diffusers.pipelines.stable_cascade import pipeline_stable_cascade as decoder_module
from diffusers.pipelines.stable_cascade import pipeline_stable_cascade_prior as prior_module
from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
from diffusers.schedulers import scheduling_ddpm_wuerstchen as scheduler_module

assert diffusers.__version__ == "0.42.1", f"diffusers {diffusers.__version__}: the fixtures pin 0.42.1"

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_vocab(bpe_gz, dest, n_merges=None):
    """vocab.json + merges.txt as transformers' CLIP conversion builds them from OpenAI's file."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    if n_merges is not None:
        merges = merges[:n_merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    (dest / "tokenizer_config.json").write_text(json.dumps({**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}, indent=1))
    return len(vocab)


PROMPTS = [
    "",
    "a photograph of an astronaut riding a horse",
    "A  Photograph\tOF an   ASTRONAUT,riding a horse!!",
    "café crème brûlée, naïve façade — ünïcödé 東京タワー 🚀🐱 ½",
    "it's we'll I'M they've don't 123456 3.14 x=y+2 a_b #hash @at",
    " leading and trailing spaces   ",
    "ﬁligree ﬂour Å Å (NFC vs NFD)",
    "word " * 90,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<|startoftext|> literal special tokens <|endoftext|> in text",
    "line one\nline two\r\nline three",
]


def redraw(model, gen, norm_like=("norm", "gamma", "gammas", "beta", "bias")):
    """Every parameter and floating buffer redrawn: weights ~ N(0, 1/fan_in), vectors ~ N(0, 0.3),
    LayerNorm weights ~ 1 + N(0, 0.2). Zero-initialised layers would hide bugs."""
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.dtype.is_floating_point:
                continue
            if "running_var" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif p.ndim >= 2:
                fan_in = p[0].numel() if name.endswith("weight") and "up_upscalers" not in name and "up_blocks.13" not in name else p.shape[0] * p[0, 0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(fan_in, 1)))
            elif name.endswith("layer_norm1.weight") or name.endswith("layer_norm2.weight") or name.endswith("final_layer_norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def save_tensors(path, tensors):
    save_file({k: v.detach().contiguous().to(torch.float32) if v.is_floating_point() else v.contiguous() for k, v in tensors.items()}, str(path))


def unet_configs(lite):
    prior = dict(
        in_channels=16, out_channels=16, timestep_ratio_embedding_dim=64, patch_size=1, conditioning_dim=64,
        block_out_channels=[64, 64], num_attention_heads=[1, 1],
        down_num_layers_per_block=[1, 2] if not lite else [1, 1], up_num_layers_per_block=[2, 1] if not lite else [1, 1],
        down_blocks_repeat_mappers=[1, 1], up_blocks_repeat_mappers=[1, 1],
        block_types_per_layer=[["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"]] * 2,
        clip_text_in_channels=64, clip_text_pooled_in_channels=64, clip_image_in_channels=32, clip_seq=4,
        effnet_in_channels=None, pixel_mapper_in_channels=None, kernel_size=3, dropout=[0.1, 0.1], self_attn=True,
        timestep_conditioning_type=["sca", "crp"], switch_level=[False],
    )
    decoder = dict(
        in_channels=4, out_channels=4, timestep_ratio_embedding_dim=64, patch_size=2, conditioning_dim=64,
        block_out_channels=[16, 32, 64, 64] if not lite else [16, 24, 64, 64], num_attention_heads=[0, 0, 1, 1],
        down_num_layers_per_block=[1, 2, 1, 1] if not lite else [1, 1, 1, 1], up_num_layers_per_block=[1, 1, 2, 1] if not lite else [1, 1, 1, 1],
        down_blocks_repeat_mappers=[1, 1, 1, 1], up_blocks_repeat_mappers=[3, 2, 2, 2] if not lite else [2, 2, 2, 2],
        block_types_per_layer=[["SDCascadeResBlock", "SDCascadeTimestepBlock"]] * 2 + [["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"]] * 2,
        clip_text_in_channels=None, clip_text_pooled_in_channels=64, clip_image_in_channels=None, clip_seq=4,
        effnet_in_channels=16, pixel_mapper_in_channels=3, kernel_size=3, dropout=[0, 0, 0.1, 0.1], self_attn=True,
        timestep_conditioning_type=["sca"], switch_level=None,
    )
    return prior, decoder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bpe", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    # ---- tokenizer vectors with the real vocabulary -------------------------------------
    full = OUT / "tokenizer_full"
    if full.exists():
        shutil.rmtree(full)
    write_clip_vocab(args.bpe, full)
    tok = CLIPTokenizer.from_pretrained(str(full))
    cases = []
    for p in PROMPTS:
        enc = tok(p, padding="max_length", max_length=77, truncation=True)
        cases.append({"prompt": p, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    (full / "tokenizer_cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=0))

    # ---- tiny models -------------------------------------------------------------------
    tiny = OUT / "tiny"
    if tiny.exists():
        shutil.rmtree(tiny)
    vocab_size = write_clip_vocab(args.bpe, tiny / "tokenizer", n_merges=1000)
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny / "tokenizer"))
    text_config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=64,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1,
    )
    text_encoder = CLIPTextModelWithProjection(text_config).eval()
    redraw(text_encoder, gen)
    text_encoder.save_pretrained(str(tiny / "text_encoder"), safe_serialization=True)

    prior_cfg, decoder_cfg = unet_configs(lite=False)
    prior = StableCascadeUNet(**prior_cfg).eval()
    decoder = StableCascadeUNet(**decoder_cfg).eval()
    vqgan = PaellaVQModel(in_channels=3, out_channels=3, up_down_scale_factor=2, levels=2, bottleneck_blocks=2, embed_dim=32, latent_channels=4, num_vq_embeddings=16, scale_factor=0.3764).eval()
    for m in (prior, decoder, vqgan):
        redraw(m, gen)
    prior.save_pretrained(str(tiny / "prior"))
    decoder.save_pretrained(str(tiny / "decoder"))
    vqgan.save_pretrained(str(tiny / "vqgan"))
    lite_prior_cfg, lite_decoder_cfg = unet_configs(lite=True)
    prior_lite = StableCascadeUNet(**lite_prior_cfg).eval()
    decoder_lite = StableCascadeUNet(**lite_decoder_cfg).eval()
    # The lite variants ship as bf16 files (`variant="bf16"`, as the real snapshots offer): the
    # weights are rounded to bf16 first, so the f32 reference runs on exactly the stored values.
    for m, sub in ((prior_lite, "prior_lite"), (decoder_lite, "decoder_lite")):
        redraw(m, gen)
        with torch.no_grad():
            for t in list(m.parameters()) + list(m.buffers()):
                if t.is_floating_point():
                    t.copy_(t.to(torch.bfloat16).to(torch.float32))
        m.to(torch.bfloat16).save_pretrained(str(tiny / sub), variant="bf16")
        m.to(torch.float32)
    scheduler = DDPMWuerstchenScheduler()
    scheduler.save_pretrained(str(tiny / "scheduler"))
    (tiny / "model_index.json").write_text(json.dumps({"_class_name": "StableCascadeCombinedPipeline", "_diffusers_version": "0.42.1"}, indent=1))

    ref = tiny / "reference"
    ref.mkdir()
    with torch.no_grad():
        # Text encoder, several prompts (tiny vocabulary tokenizer).
        prompts = ["", "a photograph of an astronaut riding a horse", "café — 東京 🚀 " + "long " * 90]
        enc = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        out = text_encoder(enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True)
        save_tensors(ref / "text_encoder_in.safetensors", {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask})
        save_tensors(ref / "text_encoder_out.safetensors", {"hidden_states_last": out.hidden_states[-1], "last_hidden_state": out.last_hidden_state, "text_embeds": out.text_embeds})
        (ref / "text_encoder_prompts.json").write_text(json.dumps(prompts, ensure_ascii=False))

        def unet_case(name, model, inputs):
            save_tensors(ref / f"{name}_in.safetensors", inputs)
            save_tensors(ref / f"{name}_out.safetensors", {"out": model(**inputs, return_dict=False)[0]})

        r = lambda *s: torch.randn(*s, generator=gen)
        unet_case("prior", prior, dict(sample=r(2, 16, 3, 5), timestep_ratio=torch.tensor([0.73, 0.0625]), clip_text_pooled=r(2, 1, 64), clip_text=r(2, 77, 64), clip_img=r(2, 1, 32)))
        unet_case("prior_lite", prior_lite, dict(sample=r(2, 16, 4, 4), timestep_ratio=torch.tensor([1.0, 0.5]), clip_text_pooled=r(2, 1, 64), clip_text=r(2, 77, 64), clip_img=torch.zeros(2, 1, 32)))
        # 36×28: not square, not a multiple of 8, so the up path resizes before the skips.
        unet_case("decoder", decoder, dict(sample=r(1, 4, 36, 28), timestep_ratio=torch.tensor([0.41]), clip_text_pooled=r(1, 1, 64), effnet=r(1, 16, 5, 4)))
        unet_case("decoder_pixels", decoder, dict(sample=r(2, 4, 32, 32), timestep_ratio=torch.tensor([0.9, 0.1]), clip_text_pooled=r(2, 1, 64), effnet=r(2, 16, 3, 3), pixels=r(2, 3, 8, 8)))
        unet_case("decoder_lite", decoder_lite, dict(sample=r(1, 4, 16, 24), timestep_ratio=torch.tensor([0.5]), clip_text_pooled=r(1, 1, 64), effnet=r(1, 16, 3, 3)))
        latents = r(1, 4, 12, 10)
        save_tensors(ref / "vqgan_in.safetensors", {"latents": latents})
        save_tensors(ref / "vqgan_out.safetensors", {"image": vqgan.decode(latents).sample})

        # The whole pipeline, recording every random draw.
        draws = []

        def recording_randn(shape, generator=None, device=None, dtype=None, layout=None):
            t = torch.randn(shape, generator=generator, device=device, dtype=dtype)
            draws.append(t.clone())
            return t

        for module in (prior_module, decoder_module, scheduler_module):
            module.randn_tensor = recording_randn
        prior_pipe = StableCascadePriorPipeline(tokenizer=tokenizer, text_encoder=text_encoder, prior=prior, scheduler=DDPMWuerstchenScheduler())
        decoder_pipe = StableCascadeDecoderPipeline(decoder=decoder, tokenizer=tokenizer, text_encoder=text_encoder, scheduler=DDPMWuerstchenScheduler(), vqgan=vqgan)
        settings = dict(prompt="a tiny red fox in the snow", negative_prompt="", width=256, height=128, prior_steps=3, prior_guidance=4.0, decoder_steps=2, decoder_guidance=0.0, seed=args.seed)
        g = torch.Generator("cpu").manual_seed(settings["seed"])
        p = prior_pipe(prompt=settings["prompt"], negative_prompt=settings["negative_prompt"], height=settings["height"], width=settings["width"], num_inference_steps=settings["prior_steps"], guidance_scale=settings["prior_guidance"], generator=g, output_type="pt")
        n_prior = len(draws)
        latents = decoder_pipe(image_embeddings=p.image_embeddings, prompt=settings["prompt"], negative_prompt=settings["negative_prompt"], num_inference_steps=settings["decoder_steps"], guidance_scale=settings["decoder_guidance"], generator=g, output_type="latent").images
        unclamped = vqgan.decode(vqgan.config.scale_factor * latents).sample
        noise = {"noise_prior_init": draws[0]}
        noise.update({f"noise_prior_step{i}": d for i, d in enumerate(draws[1:n_prior])})
        noise["noise_decoder_init"] = draws[n_prior]
        noise.update({f"noise_decoder_step{i}": d for i, d in enumerate(draws[n_prior + 1 :])})
        save_tensors(ref / "pipeline_noise.safetensors", noise)
        save_tensors(ref / "pipeline_out.safetensors", {
            "prompt_embeds": p.prompt_embeds, "prompt_embeds_pooled": p.prompt_embeds_pooled,
            "negative_prompt_embeds": p.negative_prompt_embeds, "negative_prompt_embeds_pooled": p.negative_prompt_embeds_pooled,
            "image_embeddings": p.image_embeddings, "decoder_latents": latents,
            "images_unclamped": unclamped, "images": unclamped.clamp(0, 1),
        })
        (ref / "pipeline.json").write_text(json.dumps(settings, indent=1))

        # A second seed, no injected noise: the engine must reproduce it from the seed alone.
        seed2 = settings["seed"] + 4242
        g = torch.Generator("cpu").manual_seed(seed2)
        p2 = prior_pipe(prompt="a lighthouse at dusk", height=128, width=128, num_inference_steps=2, guidance_scale=4.0, generator=g, output_type="pt")
        lat2 = decoder_pipe(image_embeddings=p2.image_embeddings, prompt="a lighthouse at dusk", num_inference_steps=2, guidance_scale=0.0, generator=g, output_type="latent").images
        img2 = vqgan.decode(vqgan.config.scale_factor * lat2).sample
        save_tensors(ref / "pipeline_seed2_out.safetensors", {"image_embeddings": p2.image_embeddings, "images_unclamped": img2})
        (ref / "pipeline_seed2.json").write_text(json.dumps(dict(prompt="a lighthouse at dusk", negative_prompt="", width=128, height=128, prior_steps=2, prior_guidance=4.0, decoder_steps=2, decoder_guidance=0.0, seed=seed2), indent=1))
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB under {OUT}")


if __name__ == "__main__":
    main()
