"""Writes tests/fixtures/torch_randn.safetensors: successive torch.randn draws from
torch.Generator("cpu").manual_seed(S) for several seeds and sizes (below 16, multiples of 16,
and not), to check the engine's PyTorch-compatible noise. Run: python tools/reference/torch_noise.py"""
from pathlib import Path

import torch
from safetensors.torch import save_file

SIZES = [37, 5, (1, 16, 3, 6), (1, 4, 32, 64), 16, 3, 1000]
out = {}
for seed in [0, 1234, 98765, 2**40 + 7]:
    g = torch.Generator("cpu").manual_seed(seed)
    for k, shape in enumerate(SIZES):
        out[f"seed{seed}_draw{k}"] = torch.randn(shape, generator=g).reshape(-1)
# bf16 draws (what diffusers makes for a bf16 model) of latent-like sizes, stored as f32.
for seed in [0, 1234]:
    g = torch.Generator("cpu").manual_seed(seed)
    for k, shape in enumerate([(1, 16, 3, 6), (1, 4, 32, 64)]):
        out[f"bf16_seed{seed}_draw{k}"] = torch.randn(shape, generator=g, dtype=torch.bfloat16).reshape(-1).float()
save_file(out, str(Path(__file__).resolve().parents[2] / "tests/fixtures/torch_randn.safetensors"))
