"""Writes tests/goldens/ops.rs: small inputs and the outputs PyTorch computes for them, one
constant per op, used by tests/ops_cpu.rs to check the CPU references.

Run: python tools/reference/op_goldens.py  (needs torch; CPU only). Inputs are token-major
(NHWC / [B, L, C]) as the engine stores them; PyTorch's NCHW ops see them permuted.
"""
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

torch.manual_seed(0)
out = []


def emit(name, t, doc):
    v = t.detach().to(torch.float32).reshape(-1).tolist()
    body = ", ".join(repr(float(x)) for x in v)
    out.append(f"/// {doc}\n#[rustfmt::skip]\npub const {name}: [f32; {len(v)}] = [{body}];\n")


def rnd(*shape, scale=1.0):
    return (torch.randn(*shape) * scale).to(torch.float32)


nchw = lambda t: t.permute(0, 3, 1, 2)
nhwc = lambda t: t.permute(0, 2, 3, 1)

# LayerNorm over channels, no affine, eps 1e-6; and with affine, eps 1e-5.
x = rnd(3, 7, scale=2.0) + 0.5
w, b = rnd(7), rnd(7)
emit("LN_X", x, "x [3, 7]")
emit("LN_W", w, "weight [7]")
emit("LN_B", b, "bias [7]")
emit("LN_PLAIN", F.layer_norm(x, (7,), eps=1e-6), "F.layer_norm(x, (7,), eps=1e-6)")
emit("LN_AFFINE", F.layer_norm(x, (7,), w, b, eps=1e-5), "F.layer_norm(x, (7,), w, b, eps=1e-5)")

# Activations.
x = torch.tensor([-6.0, -3.0, -1.5, -0.5, -1e-3, 0.0, 0.25, 1.0, 2.5, 5.0, 9.0])
emit("ACT_X", x, "activation inputs")
emit("GELU", F.gelu(x), "F.gelu(x) (exact erf form)")
emit("SILU", F.silu(x), "F.silu(x)")
x, bias = rnd(2, 5), rnd(5)
emit("BIAS_GELU_X", x, "x [2, 5]")
emit("BIAS_GELU_BIAS", bias, "bias [5]")
emit("BIAS_GELU", F.gelu(x + bias), "F.gelu(x + bias)")

# GlobalResponseNorm as diffusers' GlobalResponseNorm.forward on NHWC [2, 3, 1, 4].
x = rnd(2, 3, 1, 4)
gamma, beta = rnd(1, 1, 1, 4), rnd(1, 1, 1, 4)
agg = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
stand = agg / (agg.mean(dim=-1, keepdim=True) + 1e-6)
emit("GRN_X", x, "x NHWC [2, 3, 1, 4]")
emit("GRN_GAMMA", gamma, "gamma [4]")
emit("GRN_BETA", beta, "beta [4]")
emit("GRN", gamma * (x * stand) + beta + x, "diffusers GlobalResponseNorm: gamma * (x * Nx) + beta + x")

# Depthwise 3x3 with bias: zero padding, replicate padding, zero padding + LayerNorm.
x = rnd(1, 4, 5, 3)  # NHWC
w, b = rnd(3, 1, 3, 3), rnd(3)
emit("DW_X", x, "x NHWC [1, 4, 5, 3]")
emit("DW_W", w, "weight [3, 1, 3, 3]")
emit("DW_B", b, "bias [3]")
zero = nhwc(F.conv2d(nchw(x), w, b, padding=1, groups=3))
emit("DW_ZERO", zero, "F.conv2d(x, w, b, padding=1, groups=3), NHWC")
rep = nhwc(F.conv2d(F.pad(nchw(x), (1, 1, 1, 1), mode="replicate"), w, b, groups=3))
emit("DW_REPLICATE", rep, "F.conv2d(F.pad(x, (1,1,1,1), mode='replicate'), w, b, groups=3), NHWC")
emit("DW_ZERO_LN", F.layer_norm(zero, (3,), eps=1e-6), "layer_norm over channels (eps 1e-6) of DW_ZERO")

# Conv 2x2 stride 2 and the two transposed convolutions.
x = rnd(1, 4, 6, 3)
w, b = rnd(5, 3, 2, 2), rnd(5)
emit("C2_X", x, "x NHWC [1, 4, 6, 3]")
emit("C2_W", w, "weight [5, 3, 2, 2]")
emit("C2_B", b, "bias [5]")
emit("C2", nhwc(F.conv2d(nchw(x), w, b, stride=2)), "F.conv2d(x, w, b, stride=2), NHWC [1, 2, 3, 5]")
x = rnd(1, 2, 3, 3)
w, b = rnd(3, 4, 2, 2), rnd(4)
emit("CT2_X", x, "x NHWC [1, 2, 3, 3]")
emit("CT2_W", w, "weight [3, 4, 2, 2]")
emit("CT2_B", b, "bias [4]")
emit("CT2", nhwc(F.conv_transpose2d(nchw(x), w, b, stride=2)), "F.conv_transpose2d(x, w, b, stride=2), NHWC [1, 4, 6, 4]")
x = rnd(1, 3, 2, 3)
w, b = rnd(3, 2, 4, 4), rnd(2)
emit("CT4_X", x, "x NHWC [1, 3, 2, 3]")
emit("CT4_W", w, "weight [3, 2, 4, 4]")
emit("CT4_B", b, "bias [2]")
emit("CT4", nhwc(F.conv_transpose2d(nchw(x), w, b, stride=2, padding=1)), "F.conv_transpose2d(x, w, b, stride=2, padding=1), NHWC [1, 6, 4, 2]")

# Pixel shuffle / unshuffle (factor 2).
x = rnd(1, 2, 3, 8)
emit("PS_X", x, "x NHWC [1, 2, 3, 8]")
emit("PS", nhwc(F.pixel_shuffle(nchw(x), 2)), "F.pixel_shuffle(x, 2), NHWC [1, 4, 6, 2]")
x = rnd(1, 4, 6, 2)
emit("PU_X", x, "x NHWC [1, 4, 6, 2]")
emit("PU", nhwc(F.pixel_unshuffle(nchw(x), 2)), "F.pixel_unshuffle(x, 2), NHWC [1, 2, 3, 8]")

# Bilinear resize, align_corners=True.
x = rnd(1, 3, 4, 2)
emit("RS_X", x, "x NHWC [1, 3, 4, 2]")
emit("RS", nhwc(F.interpolate(nchw(x), size=(5, 7), mode="bilinear", align_corners=True)), "F.interpolate(x, size=(5, 7), mode='bilinear', align_corners=True), NHWC")

# Attention, 2 heads of 64, Lq 3, Lk 5, no mask; and causal + key padding, 1 head, L 4.
q, k, v = rnd(1, 3, 128), rnd(1, 5, 128), rnd(1, 5, 128)
heads = lambda t: t.reshape(t.shape[0], t.shape[1], -1, 64).transpose(1, 2).double()
o = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(1, 3, 128)
emit("AT_Q", q, "q [1, 3, 128]")
emit("AT_K", k, "k [1, 5, 128]")
emit("AT_V", v, "v [1, 5, 128]")
emit("AT", o, "F.scaled_dot_product_attention per head (f64), merged back to [1, 3, 128]")
q, k, v = rnd(1, 4, 64), rnd(1, 4, 64), rnd(1, 4, 64)
keep = torch.tensor([1, 1, 1, 0], dtype=torch.bool)
allowed = torch.tril(torch.ones(4, 4, dtype=torch.bool)) & keep[None, :]
o = F.scaled_dot_product_attention(q.double()[:, None], k.double()[:, None], v.double()[:, None], attn_mask=allowed)[:, 0]
emit("ATM_Q", q, "q [1, 4, 64]")
emit("ATM_K", k, "k [1, 4, 64]")
emit("ATM_V", v, "v [1, 4, 64]")
emit("ATM", o, "SDPA with a causal mask and key 3 padded (mask [1, 1, 1, 0]), f64")


# Timestep-ratio embedding exactly as diffusers StableCascadeUNet.get_timestep_ratio_embedding
# (f32), with two extra conditions of ratio 0 (prior: sca, crp).
def ratio_embedding(r, c_r=64, max_positions=10000):
    r = r * max_positions
    half_dim = c_r // 2
    emb = math.log(max_positions) / (half_dim - 1)
    emb = torch.arange(half_dim, device=r.device).float().mul(-emb).exp()
    emb = r[:, None] * emb[None, :]
    return torch.cat([emb.sin(), emb.cos()], dim=1)


t = torch.tensor([1.0, 0.5, 0.0123])
emb = torch.cat([ratio_embedding(t)] + [ratio_embedding(torch.zeros_like(t)) for _ in range(2)], dim=1)
emit("TE_T", t, "ratios")
emit("TE", emb, "cat([emb(t), emb(0), emb(0)], 1) with diffusers' get_timestep_ratio_embedding, [3, 192]")

# Modulation, CFG (torch.lerp), token + position embedding.
x, ab = rnd(2, 3, 4), rnd(2, 8, scale=0.5)
a, s = ab[:, None, :4], ab[:, None, 4:]
emit("MOD_X", x, "x [2, 3, 4]")
emit("MOD_AB", ab, "ab [2, 8]")
emit("MOD", x * (1 + a) + s, "x * (1 + a) + b (SDCascadeTimestepBlock)")
eps = rnd(4, 3)
emit("CFG_EPS", eps, "eps [4, 3] = [cond (2 rows); uncond (2 rows)]")
c, u = eps.chunk(2)
emit("CFG", torch.lerp(u, c, 4.0), "torch.lerp(uncond, cond, 4.0)")
tok, pos = rnd(10, 3), rnd(4, 3)
ids = torch.tensor([[0, 9, 3], [5, 5, 1]])
emit("EMB_TOK", tok, "token table [10, 3]")
emit("EMB_POS", pos, "position table [4, 3]")
emit("EMB", F.embedding(ids, tok) + pos[:3], "F.embedding(ids, tok) + pos[:3] for ids [[0, 9, 3], [5, 5, 1]]")

header = (
    "//! Generated by tools/reference/op_goldens.py with PyTorch "
    + torch.__version__
    + " (CPU); do not edit.\n//! Each constant's comment is the PyTorch expression that produced it.\n\n"
)
dest = Path(__file__).resolve().parents[2] / "tests" / "goldens" / "ops.rs"
dest.parent.mkdir(exist_ok=True)
dest.write_text(header + "\n".join(out))
print(f"wrote {dest}", file=sys.stderr)
