#!/usr/bin/env python3
"""End-to-end PyTorch peer for VAR generation (random weights), in the style of the official
FoundationVision/VAR implementation, for the varkv end-to-end benchmark.

What it models (own code, written after models/var.py, basic_var.py, quant.py, basic_vae.py):
  * VAR-d{depth}: width 64*depth, depth heads of 64, MLP ratio 4 (GELU tanh), AdaLN blocks (one
    SiLU+Linear(D, 6C) per block on the class embedding, not shared_aln, as the released
    checkpoints), L2-normalised q and k with a learned per-head scale (attn_l2_norm, SDPA scale 1),
    q/v biases and a zero k bias, AdaLN before the head, class_emb with a null class for CFG.
  * autoregressive_infer_cfg: batch doubled with the null class, CFG ratio rising linearly
    (cfg * si / (n-1)), top-k / top-p sampling like sample_with_top_k_top_p_, the quantizer's
    f_hat update (embedding lookup, bicubic up to 16x16, partially shared phi conv 3x3 on Cvae=32
    with ratio 0.5, area down to the next scale), word_embed + level/position embedding.
  * The KV cache is grown per scale with torch.cat on the BHLc layout, exactly as the official
    SelfAttention does without flash-attn/xformers: under torch.autocast(bf16) F.normalize runs in
    fp32, so the cached K is fp32 and V bf16 (470,016,000 bytes per image for VAR-d30 at 256 px).
    Attention is F.scaled_dot_product_attention (autocast casts q, k, v to bf16 per call).
  * The VQ-VAE decoder (vae_ch=160, ch_mult 1,1,2,2,4, 2 res blocks per level (+1 in the decoder),
    self-attention at the lowest resolution and in the middle), post_quant_conv, timed apart.

Measures per depth and batch: wall time of one generation (CUDA-synchronised, after warm-up,
median of N), images/s with and without the decoder, time per scale (CUDA events), peak memory
(max_memory_allocated, transformer part and decoder part), exact KV bytes per image, the GEMM
floor (2 x params x tokens over an 8192^3 bf16 matmul rate measured in the same run), OOM caught
and reported; then the largest batch that fits (doubling + binary search).

  python3 bench/peers/var_torch_peer.py --out var_torch_peer.json [--depths 16,30] [--quick]
  python3 bench/peers/var_torch_peer.py --self-test      # CPU, float32, tiny model
"""
import argparse
import gc
import json
import math
import statistics
import sys
import time
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
DEFAULT_BATCHES = {16: [16, 64, 128, 256], 30: [16, 64, 128, 192, 256]}
ISSUE_OFFICIAL = {  # the issue's numbers for the official implementation on an H100 80GB
    30: "official: b128 2.26 s (56.7 img/s), 470 MB KV/img, OOM at b192",
    16: "official: b64 0.52 s",
}


# ================================ VQ-VAE side ================================

def _gn(c):
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = _gn(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        y = self.conv1(F.silu(self.norm1(x), inplace=True))
        y = self.conv2(F.silu(self.norm2(y), inplace=True))
        return self.skip(x) + y


class SpatialAttn(nn.Module):
    """Single-head self-attention over H*W positions with 1x1 convs (bmm + softmax, as the VAE)."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.norm = _gn(c)
        self.to_qkv = nn.Conv2d(c, 3 * c, 1)
        self.out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, _, hh, ww = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(b, 3, self.c, hh * ww).unbind(1)  # each B,C,N
        w = torch.bmm(q.transpose(1, 2).contiguous(), k.contiguous()).mul_(self.c ** -0.5)  # B,Nq,Nk
        w = F.softmax(w, dim=2)
        y = torch.bmm(v.contiguous(), w.transpose(1, 2).contiguous())  # B,C,Nq
        return x + self.out(y.reshape(b, self.c, hh, ww))


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Decoder(nn.Module):
    """VQGAN f16 decoder layout used by VAR's VQ-VAE (z 32 -> image 3)."""

    def __init__(self, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32):
        super().__init__()
        n = len(ch_mult)
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, 1, 1)
        self.mid = nn.Sequential(ResBlock(c, c), SpatialAttn(c), ResBlock(c, c))
        stages = []
        for level in reversed(range(n)):  # lowest resolution first
            cout = ch * ch_mult[level]
            layers = []
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock(c, cout))
                c = cout
                if level == n - 1:
                    layers.append(SpatialAttn(c))
            if level != 0:
                layers.append(Upsample(c))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.norm_out = _gn(c)
        self.conv_out = nn.Conv2d(c, 3, 3, 1, 1)

    def forward(self, z):
        h = self.stages(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) h + r conv3x3(h)."""

    def __init__(self, c, ratio=0.5):
        super().__init__(c, c, 3, 1, 1)
        self.ratio = ratio

    def forward(self, h):
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


class MultiScaleQuantizer(nn.Module):
    """The inference side of VAR's VectorQuantizer2: codebook, 4 partially shared phi convs."""

    def __init__(self, vocab, cvae, patch_nums, n_phi=4):
        super().__init__()
        self.patch_nums = tuple(patch_nums)
        self.embedding = nn.Embedding(vocab, cvae)
        self.phis = nn.ModuleList(Phi(cvae) for _ in range(n_phi))
        # ticks as numpy.linspace(start, 1 - start, k) computes them (i * step + start, last = stop
        # exactly); the float rounding decides the ties (scale 2 of 10 takes phi 1, as the official)
        k = n_phi
        start = 1 / 3 / k if k == 4 else 1 / 2 / k
        stop = 1 - start
        step = (stop - start) / (k - 1) if k > 1 else 0.0
        self.ticks = [stop if (i == k - 1 and k > 1) else i * step + start for i in range(k)]

    def phi(self, at):  # at in [0, 1]: nearest tick, the first on a tie (numpy.argmin)
        i = min(range(len(self.ticks)), key=lambda j: (abs(self.ticks[j] - at), j))
        return self.phis[i]

    def next_input(self, si, f_hat, h_BChw):
        """Adds scale si's residual to f_hat; returns (f_hat, next scale's input map)."""
        n, last = len(self.patch_nums), self.patch_nums[-1]
        if si == n - 1:
            f_hat.add_(self.phi(1.0)(h_BChw))
            return f_hat, f_hat
        up = F.interpolate(h_BChw, size=(last, last), mode="bicubic")
        f_hat.add_(self.phi(si / (n - 1))(up))
        nxt = self.patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(nxt, nxt), mode="area")


class VQVAEDecodeSide(nn.Module):
    def __init__(self, vocab=4096, cvae=32, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                 patch_nums=PATCH_NUMS_256):
        super().__init__()
        self.vocab, self.cvae = vocab, cvae
        self.quant = MultiScaleQuantizer(vocab, cvae, patch_nums)
        self.post_quant_conv = nn.Conv2d(cvae, cvae, 3, 1, 1)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, cvae)

    def fhat_to_img(self, f_hat):
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)


# ================================ VAR transformer ================================

class CachedSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)))
        self.max_log_scale = math.log(100.0)
        self.proj = nn.Linear(dim, dim)
        self.caching, self.k_cache, self.v_cache = False, None, None

    def set_caching(self, on):
        self.caching, self.k_cache, self.v_cache = on, None, None

    def forward(self, x, attn_bias=None):
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.heads, self.hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # B,H,L,hd each (views)
        # L2 normalisation: under autocast F.normalize computes in fp32, so q and k become fp32.
        q = F.normalize(q, dim=-1).mul(self.log_scale.clamp_max(self.max_log_scale).exp())
        k = F.normalize(k, dim=-1)
        if self.caching:  # grow the cache by concatenation along L, every scale
            if self.k_cache is None:
                self.k_cache, self.v_cache = k, v
            else:
                k = self.k_cache = torch.cat((self.k_cache, k), dim=2)
                v = self.v_cache = torch.cat((self.v_cache, v), dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=1.0)
        return self.proj(o.transpose(1, 2).reshape(B, L, C))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0, cond_dim=None, eps=1e-6):
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.attn = CachedSelfAttention(dim, heads)
        self.ffn = MLP(dim, round(dim * mlp_ratio))
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim or dim, 6 * dim))

    def forward(self, x, cond_BD, attn_bias=None):
        g1, g2, s1, s2, b1, b2 = self.ada_lin(cond_BD).view(-1, 1, 6, self.dim).unbind(2)
        x = x + self.attn(self.norm(x).mul(s1.add(1)).add_(b1), attn_bias).mul_(g1)
        x = x + self.ffn(self.norm(x).mul(s2.add(1)).add_(b2)).mul(g2)
        return x


class AdaLNHead(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, cond_BD):
        s, b = self.ada_lin(cond_BD).view(-1, 1, 2, self.dim).unbind(2)
        return self.norm(x).mul(s.add(1)).add_(b)


def sample_top_k_top_p(logits_BlV, top_k, top_p, gen):
    """Top-k then top-p (nucleus) filtering in place, then one multinomial draw per token."""
    B, l, V = logits_BlV.shape
    if top_k > 0:
        kth = logits_BlV.topk(min(top_k, V), dim=-1, largest=True, sorted=False).values.amin(-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, float("-inf"))
    if top_p > 0:
        asc, order = logits_BlV.sort(dim=-1, descending=False)
        tail = asc.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        tail[..., -1:] = False  # the most likely token always stays
        logits_BlV.masked_fill_(tail.scatter(-1, order, tail), float("-inf"))
    probs = logits_BlV.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, 1, replacement=True, generator=gen).view(B, l)


class Trace:
    """Marks points of one generation: CUDA events on the GPU, host clock on the CPU. Reads the
    allocator's peak at chosen points (host-side counters, no synchronisation)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks, self.peaks, self.last = {}, {}, None

    def mark(self, label):
        self.last = label
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks[label] = e
        else:
            self.marks[label] = time.perf_counter()

    def peak(self, name):
        if self.cuda:
            self.peaks[name] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    def ms(self, a, b):
        if self.cuda:
            return self.marks[a].elapsed_time(self.marks[b])
        return (self.marks[b] - self.marks[a]) * 1e3


class VAR(nn.Module):
    def __init__(self, depth, vocab=4096, cvae=32, num_classes=1000, patch_nums=PATCH_NUMS_256,
                 mlp_ratio=4.0, head_dim=64):
        super().__init__()
        C = depth * head_dim
        self.depth, self.C, self.heads, self.V, self.Cvae = depth, C, depth, vocab, cvae
        self.num_classes = num_classes
        self.patch_nums = tuple(patch_nums)
        self.L = sum(p * p for p in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.word_embed = nn.Linear(cvae, C)
        self.class_emb = nn.Embedding(num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(self.patch_nums)]).view(1, self.L)
        self.register_buffer("lvl_1L", lvl)
        self.blocks = nn.ModuleList(AdaLNBlock(C, depth, mlp_ratio) for _ in range(depth))
        self.head_nm = AdaLNHead(C)
        self.head = nn.Linear(C, vocab)

    # --- random init in the spirit of the official init_weights (values keep sampling finite) ---
    @torch.no_grad()
    def init_weights(self, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02):
        std = (1 / self.C / 3) ** 0.5
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        nn.init.trunc_normal_(self.pos_start, std=std)
        nn.init.trunc_normal_(self.pos_1LC, std=std)
        self.head.weight.mul_(init_head)
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        for blk in self.blocks:
            blk.attn.proj.weight.div_(math.sqrt(2 * self.depth))
            blk.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
            w = blk.ada_lin[-1].weight
            w[2 * self.C:].mul_(init_adaln)
            w[:2 * self.C].mul_(init_adaln_gamma)

    def set_caching(self, on):
        for blk in self.blocks:
            blk.attn.set_caching(on)

    def kv_cache_info(self):
        """Exact bytes of the cache tensors now held. Returns plain numbers only: a local list of the
        tensors would keep the whole cache alive through the decoder after caching is switched off."""
        ks = [b.attn.k_cache for b in self.blocks if b.attn.k_cache is not None]
        vs = [b.attn.v_cache for b in self.blocks if b.attn.v_cache is not None]
        return {"bytes": sum(t.nbytes for t in ks + vs), "k_bytes": sum(t.nbytes for t in ks),
                "v_bytes": sum(t.nbytes for t in vs), "k_dtype": str(ks[0].dtype), "v_dtype": str(vs[0].dtype),
                "tokens": int(ks[0].shape[2]), "rows": int(ks[0].shape[0])}

    def param_counts(self):
        total = sum(p.numel() for p in self.parameters())
        per_token = sum(m.weight.numel() for b in self.blocks
                        for m in (b.attn.mat_qkv, b.attn.proj, b.ffn.fc1, b.ffn.fc2))
        per_token += self.word_embed.weight.numel() + self.head.weight.numel()
        return total, per_token

    def logits(self, h, cond_BD):
        return self.head(self.head_nm(h.float(), cond_BD).float()).float()

    @torch.no_grad()
    def generate(self, vae, B, labels, gen, cfg=4.0, top_k=900, top_p=0.96, decode=True, trace=None,
                 record=None):
        """autoregressive_infer_cfg. Returns (f_hat, image or None, kv) where kv describes the cache
        at the end of the last scale (before caching is switched off, which frees it)."""
        trace = trace or Trace(labels.device)
        n = len(self.patch_nums)
        trace.mark("start")
        sos = cond_BD = self.class_emb(torch.cat((labels, torch.full_like(labels, self.num_classes))))
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        x = (sos.unsqueeze(1).expand(2 * B, self.first_l, -1) + self.pos_start.expand(2 * B, self.first_l, -1)
             + lvl_pos[:, :self.first_l])
        f_hat = sos.new_zeros(B, self.Cvae, self.patch_nums[-1], self.patch_nums[-1])
        kv = None
        self.set_caching(True)
        try:
            cur = 0
            for si, pn in enumerate(self.patch_nums):
                cur += pn * pn
                x_in = x
                for blk in self.blocks:
                    x = blk(x, cond_BD)
                if record is not None:
                    record.append((x_in, x))
                trace.mark(f"blocks{si}")
                logits = self.logits(x, cond_BD)
                t = cfg * si / (n - 1)
                logits = (1 + t) * logits[:B] - t * logits[B:]
                idx = sample_top_k_top_p(logits, top_k, top_p, gen)
                h = vae.quant.embedding(idx).transpose_(1, 2).reshape(B, self.Cvae, pn, pn)
                f_hat, nxt = vae.quant.next_input(si, f_hat, h)
                if si != n - 1:
                    x = self.word_embed(nxt.view(B, self.Cvae, -1).transpose(1, 2))
                    x = (x + lvl_pos[:, cur:cur + self.patch_nums[si + 1] ** 2]).repeat(2, 1, 1)
                trace.mark(f"scale{si}")
            kv = self.kv_cache_info()
        finally:
            self.set_caching(False)  # frees the cache before the decoder, as the official code
        trace.mark("gen_end")
        trace.peak("gen")
        img = vae.fhat_to_img(f_hat).add_(1).mul_(0.5) if decode else None
        trace.mark("decode_end")
        trace.peak("decode")
        return f_hat, img, kv

    def forward_masked(self, x_BLC, cond_BD):
        """Teacher-forced pass over the whole sequence with the block-causal mask (self-test)."""
        d = self.lvl_1L.view(1, self.L, 1)
        bias = torch.where(d >= d.transpose(1, 2), 0.0, float("-inf")).view(1, 1, self.L, self.L)
        bias = bias.to(x_BLC.dtype)
        for blk in self.blocks:
            x_BLC = blk(x_BLC, cond_BD, attn_bias=bias)
        return x_BLC


def build(depth, device, seed, vae_cfg=None, var_cfg=None):
    torch.manual_seed(seed)
    with torch.device(device):
        vae = VQVAEDecodeSide(**(vae_cfg or {}))
        var = VAR(depth, vocab=vae.vocab, cvae=vae.cvae, patch_nums=vae.quant.patch_nums, **(var_cfg or {}))
    var.init_weights()
    with torch.no_grad():
        nn.init.trunc_normal_(vae.quant.embedding.weight, std=0.5)
        for m in vae.modules():  # keep the random decoder's activations tame (bf16 range)
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=(1.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
    for m in (var, vae):
        m.eval()
        m.requires_grad_(False)
    return var, vae


# ================================ measuring ================================

def is_oom(exc):
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc)
    return "out of memory" in msg or "ALLOC_FAILED" in msg


def free_memory(var=None):
    if var is not None:
        var.set_caching(False)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Bench:
    def __init__(self, args, device):
        self.args, self.device = args, device
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.max_seconds
        self.use_autocast = device.type == "cuda"

    def left(self):
        return self.deadline - time.perf_counter()

    def autocast(self):
        if self.use_autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def run_once(self, var, vae, B, decode):
        labels = torch.arange(B, device=self.device) % var.num_classes
        gen = torch.Generator(device=self.device).manual_seed(self.args.seed)
        trace = Trace(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(self.device)
        t0 = time.perf_counter()
        try:
            with self.autocast():
                f_hat, img, kv = var.generate(vae, B, labels, gen, cfg=self.args.cfg, top_k=self.args.top_k,
                                              top_p=self.args.top_p, decode=decode, trace=trace)
            sync(self.device)
        except Exception as e:  # noqa: BLE001 - re-raised with the phase attached
            try:
                e.varkv_phase = "decode" if trace.last in ("gen_end", "decode_end") else f"after {trace.last}"
            except Exception:  # noqa: BLE001
                pass
            raise
        wall = time.perf_counter() - t0
        n = len(var.patch_nums)
        out = {
            "wall_s": wall,
            "gen_s": trace.ms("start", "gen_end") / 1e3,
            "decode_s": trace.ms("gen_end", "decode_end") / 1e3 if decode else None,
            "blocks_ms": [trace.ms("start" if s == 0 else f"scale{s - 1}", f"blocks{s}") for s in range(n)],
            "scale_ms": [trace.ms("start" if s == 0 else f"scale{s - 1}", f"scale{s}") for s in range(n)],
            "peak_gen_bytes": trace.peaks.get("gen"), "peak_decode_bytes": trace.peaks.get("decode") if decode else None,
            "kv": kv, "image_shape": list(img.shape) if img is not None else None,
            "finite": bool(torch.isfinite(f_hat).all().item()),
        }
        del f_hat, img
        return out

    def measure(self, var, vae, B, decode, repeats, warmup):
        """warm-up + repeats; medians. Raises on OOM/errors (caller reports)."""
        runs = []
        for i in range(warmup + repeats):
            if i >= warmup + 1 and self.left() < (runs[-1]["wall_s"] if runs else 0) * 1.2:
                break  # out of time: keep what we have (at least one timed run)
            r = self.run_once(var, vae, B, decode)
            if i >= warmup:
                runs.append(r)
            elif self.left() < r["wall_s"] * 1.5:  # not even time for one timed run after warm-up
                runs.append(r)
                break
        med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
        n = len(runs[0]["scale_ms"])
        res = {
            "batch": B, "decode": decode, "runs": len(runs), "wall_s": med("wall_s"), "gen_s": med("gen_s"),
            "decode_s": med("decode_s") if decode else None,
            "blocks_ms": [statistics.median(r["blocks_ms"][s] for r in runs) for s in range(n)],
            "scale_ms": [statistics.median(r["scale_ms"][s] for r in runs) for s in range(n)],
            "peak_gen_bytes": max(r["peak_gen_bytes"] or 0 for r in runs) or None,
            "peak_decode_bytes": max(r["peak_decode_bytes"] or 0 for r in runs) or None,
            "kv": runs[-1]["kv"], "image_shape": runs[-1]["image_shape"], "finite": all(r["finite"] for r in runs),
            "wall_all_s": [r["wall_s"] for r in runs],
        }
        res["kv_bytes_per_image"] = res["kv"]["bytes"] // B
        res["images_per_s"] = B / res["wall_s"] if decode else None
        res["images_per_s_no_decode"] = B / res["gen_s"]
        return res


def gemm_floor(params, B, L, tflops):
    return 2.0 * params * B * 2 * L / (tflops * 1e12)


def matmul_tflops(device, n=8192, reps=10):
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        a @ b
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) / 1e3)
    del a, b
    return 2 * n ** 3 / statistics.median(ts) / 1e12


def search_largest(fits, lo, hi, step, cap, left=lambda: 1.0):
    """Largest batch b with fits(b) True. lo: largest known fit (or 0), hi: smallest known failure
    (or None). fits(b) -> True (fits), False (OOM) or None (error / out of time: stop).
    Doubles from lo until a failure, then bisects to within `step` (tries multiples of step).
    Returns (lo, hi, tries)."""
    tries = []
    while hi is None:
        b = max(step, 2 * lo)
        if b > cap or left() <= 0:
            return lo, hi, tries
        r = fits(b)
        tries.append((b, r))
        if r is None:
            return lo, hi, tries
        if r:
            lo = b
        else:
            hi = b
    while hi - lo > step and left() > 0:
        mid = (lo + hi) // 2 // step * step
        if mid <= lo:
            mid = lo + step
        if mid >= hi:
            break
        r = fits(mid)
        tries.append((mid, r))
        if r is None:
            break
        if r:
            lo = mid
        else:
            hi = mid
    return lo, hi, tries


def fmt_gib(b):
    return f"{b / 2 ** 30:.1f}" if b else "-"


def run_benchmark(args, device, depth_cfgs, info):
    bench = Bench(args, device)
    results = {"info": info, "depths": {}}

    def save():
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)

    tflops = info.get("matmul_bf16_tflops")
    repeats, warmup = (2, 1) if args.quick else (args.repeats, 1)

    def attempt(var, vae, B, decode, reps):
        """One measured configuration; returns a row (status ok / oom / error / skipped)."""
        row = {"batch": B}
        try:
            row.update(bench.measure(var, vae, B, decode, reps, warmup))
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001
            phase = getattr(e, "varkv_phase", "?")
            if is_oom(e):
                row.update(status="oom", phase=phase)
            else:
                row.update(status="error", phase=phase, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
                traceback.print_exc(limit=3)
            e = None  # drop frames holding tensors
        free_memory(var)
        return row

    for depth, batches, vae_cfg, var_cfg in depth_cfgs:
        if bench.left() <= 0:
            results["depths"][str(depth)] = {"status": "skipped (time budget)"}
            break
        dres = results["depths"].setdefault(str(depth), {"rows": [], "search": None})
        try:
            var, vae = build(depth, device, args.seed, vae_cfg, var_cfg)
        except Exception as e:  # noqa: BLE001
            dres["status"] = f"build failed: {type(e).__name__}: {e}"
            print(f"[d{depth}] build failed: {e}", flush=True)
            free_memory()
            continue
        total, per_tok = var.param_counts()
        L = var.L
        nbytes = lambda m: sum(t.nbytes for t in list(m.parameters()) + list(m.buffers()))  # noqa: E731
        dres.update(params_total=total, params_per_token_gemm=per_tok, L=L, patch_nums=list(var.patch_nums),
                    width=var.C, heads=var.heads, vae_params=sum(p.numel() for p in vae.parameters()),
                    weights_bytes=nbytes(var) + nbytes(vae))
        print(f"\n[d{depth}] width {var.C}, {var.heads} heads, L={L}, params {total / 1e6:.1f} M "
              f"(per-token GEMM weights {per_tok / 1e6:.1f} M), VAE decode side {dres['vae_params'] / 1e6:.1f} M, "
              f"weights {fmt_gib(dres['weights_bytes'])} GiB fp32", flush=True)
        rate = {}  # seconds per image of the transformer part, to skip what cannot finish in time

        def report(row, tag=""):
            B = row["batch"]
            if row["status"] != "ok":
                print(f"[d{depth}] B={B:4d}{tag}: {row['status'].upper()} ({row.get('phase', '')}) "
                      f"{row.get('error', '')}", flush=True)
                return
            if tflops:
                row["gemm_floor_s"] = gemm_floor(per_tok, B, L, tflops)
                row["gemm_floor_all_params_s"] = gemm_floor(total, B, L, tflops)
            rate[B] = row["wall_s"] / B
            dec = (f"decode {row['decode_s']:.3f} s, with decode {row['images_per_s']:.1f} img/s, "
                   if row["decode"] else "no decode, ")
            print(f"[d{depth}] B={B:4d}{tag}: wall {row['wall_s']:.3f} s, transformer {row['gen_s']:.3f} s "
                  f"({row['images_per_s_no_decode']:.1f} img/s), {dec}peak {fmt_gib(row['peak_gen_bytes'])} GiB "
                  f"/ decode {fmt_gib(row['peak_decode_bytes'])} GiB, KV {row['kv_bytes_per_image']:,} B/img "
                  f"(K {row['kv']['k_dtype']}, V {row['kv']['v_dtype']}), runs {row['runs']}, finite {row['finite']}"
                  + (f", GEMM floor {row['gemm_floor_s']:.3f} s" if tflops else ""), flush=True)

        def predicted(B):
            if not rate:
                return 0.0
            return max(rate.values()) * B

        # --- the batch list ---
        for B in batches:
            est = predicted(B) * (warmup + repeats)
            if bench.left() <= 0 or (est and bench.left() < predicted(B) * 1.5):
                dres["rows"].append({"batch": B, "status": "skipped (time budget)"})
                print(f"[d{depth}] B={B}: skipped (time budget)", flush=True)
                continue
            row = attempt(var, vae, B, True, repeats)
            if row["status"] in ("oom", "error") and row.get("phase") == "decode":
                print(f"[d{depth}] B={B}: decoder {row['status'].upper()}; transformer part alone:", flush=True)
                row2 = attempt(var, vae, B, False, repeats)
                row2["decode_oom"] = True
                row = row2
            report(row)
            dres["rows"].append(row)
            save()

        # --- largest batch that fits (transformer part, then the decoder at that batch) ---
        ok = [r["batch"] for r in dres["rows"] if r["status"] == "ok"]
        bad = [r["batch"] for r in dres["rows"] if r["status"] == "oom"]
        lo = max(ok) if ok else 0
        hi = min([b for b in bad if b > lo], default=None)
        search = {"step": args.search_step}
        # the search of this depth may use its share of the time left (later depths keep theirs)
        later = sum(1 for c in depth_cfgs[[c[0] for c in depth_cfgs].index(depth) + 1:])
        search_end = time.perf_counter() + bench.left() / (1 + later)
        search_left = lambda: min(bench.left(), search_end - time.perf_counter())  # noqa: E731

        def fits(B, decode=False):
            if search_left() < predicted(B) * 1.2:
                return None
            try:
                r = bench.run_once(var, vae, B, decode)
                rate[B] = min(rate.get(B, 1e9), r["wall_s"] / B)
                print(f"[d{depth}] search B={B} decode={decode}: fits ({r['wall_s']:.2f} s, peak "
                      f"{fmt_gib(r['peak_gen_bytes'])} GiB)", flush=True)
                out = True
            except Exception as e:  # noqa: BLE001
                out = False if is_oom(e) else None
                print(f"[d{depth}] search B={B} decode={decode}: "
                      f"{'OOM (' + getattr(e, 'varkv_phase', '?') + ')' if out is False else 'ERROR ' + str(e)[:160]}",
                      flush=True)
                e = None
            free_memory(var)
            return out

        if search_left() > 0 and lo > 0:
            lo2, hi2, tries = search_largest(fits, lo, hi, args.search_step, args.max_batch, search_left)
            search.update(largest_fit=lo2, first_oom=hi2, tries=tries)
            print(f"[d{depth}] largest batch (transformer part): {lo2} (first OOM: {hi2}, step {args.search_step})",
                  flush=True)
            # decoder at that batch, as the official one-call generation does
            dec_ok = any(r["batch"] == lo2 and r["status"] == "ok" and r["decode"] for r in dres["rows"])
            if not dec_ok and search_left() > 0:
                dec_ok = fits(lo2, decode=True)
            search["decode_fits_at_largest"] = dec_ok
            if dec_ok is False and search_left() > 0:
                dlo = max([r["batch"] for r in dres["rows"] if r["status"] == "ok" and r["decode"]], default=0)
                if dlo:
                    d_lo, d_hi, d_tries = search_largest(lambda b: fits(b, True), dlo, lo2, args.search_step,
                                                         args.max_batch, search_left)
                    search.update(largest_fit_with_decode=d_lo, first_oom_with_decode=d_hi, tries_with_decode=d_tries)
            # images/s at the largest batch (the peer's best throughput is usually here)
            if lo2 not in ok and search_left() > predicted(lo2) * 2.5:
                row = attempt(var, vae, lo2, bool(dec_ok), repeats)
                row["largest"] = True
                report(row, " (largest)")
                dres["rows"].append(row)
                nxt = lo2 - args.search_step
                if row["status"] == "oom" and nxt > 0 and nxt not in ok and search_left() > predicted(nxt) * 2.5:
                    # the single search run fitted, the repeated runs did not: one step down
                    row = attempt(var, vae, nxt, bool(dec_ok), repeats)
                    row["largest"] = True
                    report(row, " (largest - step)")
                    dres["rows"].append(row)
        dres["search"] = search
        save()
        del var, vae
        free_memory()
    results["elapsed_s"] = time.perf_counter() - bench.t0
    save()
    return results


def print_tables(results):
    info = results["info"]
    print("\n" + "=" * 100)
    print(f"VAR end-to-end PyTorch peer (official-style: torch.cat KV cache, SDPA, bf16 autocast) on "
          f"{info.get('device')} | torch {info.get('torch')} | bf16 matmul 8192^3: "
          f"{info.get('matmul_bf16_tflops', float('nan')):.0f} TFLOP/s")
    for depth, d in results["depths"].items():
        if "rows" not in d:
            print(f"VAR-d{depth}: {d.get('status')}")
            continue
        print(f"\nVAR-d{depth}: {d.get('params_total', 0) / 1e6:.1f} M params "
              f"({d.get('params_per_token_gemm', 0) / 1e6:.1f} M per-token GEMM weights), L={d.get('L')}, "
              f"{ISSUE_OFFICIAL.get(int(depth), '')}")
        print(f"{'B':>5} {'status':>8} {'wall s':>8} {'img/s':>8} {'gen s':>8} {'img/s':>8} {'dec s':>7} "
              f"{'peak GiB':>9} {'dec GiB':>8} {'KV B/img':>13} {'floor s':>8} {'floor*':>8} {'% floor':>8}")
        print(f"{'':>5} {'':>8} {'(+dec)':>8} {'(+dec)':>8} {'(no dec)':>8} {'(no dec)':>8}")
        for r in d["rows"]:
            if r.get("status") != "ok":
                print(f"{r['batch']:>5} {r.get('status', '?')[:8]:>8}   {r.get('phase', '')} {r.get('error', '')[:60]}")
                continue
            fl = r.get("gemm_floor_s")
            print(f"{r['batch']:>5} {'ok' + ('*' if r.get('largest') else ''):>8} "
                  f"{(r['wall_s'] if r['decode'] else float('nan')):8.3f} {(r['images_per_s'] or float('nan')):8.1f} "
                  f"{r['gen_s']:8.3f} {r['images_per_s_no_decode']:8.1f} {(r['decode_s'] or float('nan')):7.3f} "
                  f"{fmt_gib(r['peak_gen_bytes']):>9} {fmt_gib(r['peak_decode_bytes']):>8} "
                  f"{r['kv_bytes_per_image']:>13,} {(fl or float('nan')):8.3f} "
                  f"{(r.get('gemm_floor_all_params_s') or float('nan')):8.3f} "
                  f"{(100 * fl / r['gen_s'] if fl else float('nan')):7.1f}%")
        s = d.get("search") or {}
        if s.get("largest_fit") is not None:
            line = (f"largest batch that fits (transformer part): {s['largest_fit']} (first OOM {s.get('first_oom')}, "
                    f"step {s.get('step')}); decoder at that batch: "
                    f"{ {True: 'fits', False: 'OOM', None: 'not tried'}[s.get('decode_fits_at_largest')]}")
            if "largest_fit_with_decode" in s:
                line += f"; largest with decode {s['largest_fit_with_decode']} (first OOM {s['first_oom_with_decode']})"
            print(line)
        ok = [r for r in d["rows"] if r.get("status") == "ok"]
        if ok:
            best = max(ok, key=lambda r: r["images_per_s_no_decode"])
            bestd = max((r for r in ok if r["decode"]), key=lambda r: r["images_per_s"], default=None)
            print(f"best images/s: {best['images_per_s_no_decode']:.1f} without decode (B={best['batch']})"
                  + (f", {bestd['images_per_s']:.1f} with decode (B={bestd['batch']})" if bestd else ""))
            big = max(ok, key=lambda r: r["batch"])
            print(f"time per scale at B={big['batch']} (ms, median; 'blocks' = the {depth} transformer blocks, "
                  f"'rest' = head + CFG + sampling + f_hat update):")
            sides = d.get("patch_nums", [])
            print("  " + " ".join(f"{p:>2}x{p:<2}".rjust(8) for p in sides) + "      sum")
            print("  " + " ".join(f"{x:8.1f}" for x in big["scale_ms"]) + f" {sum(big['scale_ms']):8.1f}  total")
            print("  " + " ".join(f"{x:8.1f}" for x in big["blocks_ms"]) + f" {sum(big['blocks_ms']):8.1f}  blocks")
            print("  " + " ".join(f"{a - b:8.1f}" for a, b in zip(big["scale_ms"], big["blocks_ms"]))
                  + f" {sum(big['scale_ms']) - sum(big['blocks_ms']):8.1f}  rest")
    print("\nfloor s = 2 x per-token GEMM weights x B x 2 x L / matmul rate; floor* = the same with all "
          "transformer params (AdaLN weights act once per sequence, so floor* overstates the work); "
          "% floor = floor / transformer time. KV B/img = sum of the cache tensors' nbytes at the last scale / B.")


# ================================ self-test (CPU) ================================

def self_test():
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    dev = torch.device("cpu")
    vae_cfg = dict(vocab=64, cvae=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=(1, 2, 3))
    var_cfg = dict(num_classes=10)
    failures, passed = [], []

    def check(name, cond, detail=""):
        print(f"  [{'ok' if cond else 'FAIL'}] {name} {detail}")
        (passed if cond else failures).append(name)

    var, vae = build(2, dev, 0, vae_cfg, var_cfg)
    B = 3
    labels = torch.arange(B) % 10
    rec = []
    f1, img, kv = var.generate(vae, B, labels, torch.Generator().manual_seed(1), record=rec)
    f2, _, _ = var.generate(vae, B, labels, torch.Generator().manual_seed(1))
    f3, _, _ = var.generate(vae, B, labels, torch.Generator().manual_seed(2))
    check("image shape", list(img.shape) == [B, 3, 6, 6], str(list(img.shape)))
    check("image in [0,1]", bool((img >= 0).all() and (img <= 1).all()))
    check("deterministic for a seed", torch.equal(f1, f2))
    check("another seed samples differently", not torch.equal(f1, f3))
    L, C = var.L, var.C
    check("KV bytes exact (fp32 K and V, CFG rows)", kv["bytes"] == var.depth * 2 * B * L * C * 4 * 2,
          f"{kv['bytes']} vs {var.depth * 2 * B * L * C * 4 * 2}")
    check("KV tokens == L", kv["tokens"] == L and kv["rows"] == 2 * B)
    check("cache freed after generation", all(b.attn.k_cache is None for b in var.blocks))
    # no reference to a cache tensor survives into the decoder (it would hold B x KV bytes there)
    import weakref
    refs, seen_alive = [], []
    orig_info, orig_dec = var.kv_cache_info, vae.fhat_to_img
    var.kv_cache_info = lambda: (refs.extend(weakref.ref(t) for b in var.blocks
                                             for t in (b.attn.k_cache, b.attn.v_cache)), orig_info())[1]
    vae.fhat_to_img = lambda f: (seen_alive.append(sum(r() is not None for r in refs)), orig_dec(f))[1]
    var.generate(vae, B, labels, torch.Generator().manual_seed(1))
    var.kv_cache_info, vae.fhat_to_img = orig_info, orig_dec
    check("KV cache freed before the decoder runs", len(refs) == 2 * var.depth and seen_alive == [0],
          f"{len(refs)} cache tensors, alive at decode: {seen_alive}")
    # the cached path equals the teacher-forced masked pass over the same inputs
    x_full = torch.cat([xi for xi, _ in rec], dim=1)
    cond = var.class_emb(torch.cat((labels, torch.full_like(labels, var.num_classes))))
    y_full = var.forward_masked(x_full, cond)
    y_cached = torch.cat([yo for _, yo in rec], dim=1)
    err = (y_full - y_cached).abs().max().item()
    check("torch.cat cache == block-causal full pass", err < 1e-4, f"max abs diff {err:.2e}")
    # sampling: top_k=1 is argmax; top-p keeps the smallest prefix of mass >= p
    lg = torch.randn(2, 5, 64)
    idx = sample_top_k_top_p(lg.clone(), 1, 0.0, torch.Generator().manual_seed(0))
    check("top-k 1 == argmax", torch.equal(idx, lg.argmax(-1)))
    lg = torch.tensor([[[4.0, 3.0, 0.0, -1.0]]])
    seen = {sample_top_k_top_p(lg.clone(), 0, 0.6, torch.Generator().manual_seed(s)).item() for s in range(50)}
    check("top-p 0.6 keeps only the top token here", seen == {0}, str(seen))
    seen = {sample_top_k_top_p(lg.clone(), 2, 0.0, torch.Generator().manual_seed(s)).item() for s in range(200)}
    check("top-k 2 keeps two tokens", seen == {0, 1}, str(seen))
    # phi selection: partially shared, 4 convs at ticks 1/12 .. 11/12
    picks = [[id(p) for p in vae.quant.phis].index(id(vae.quant.phi(si / 9))) for si in range(10)]
    check("phi per scale (10 scales)", picks == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3], str(picks))
    # largest-batch search logic
    lim = 137
    lo, hi, tries = search_largest(lambda b: b <= lim, 64, None, 1, 4096)
    check("search: exact with step 1", (lo, hi) == (137, 138), f"{lo} {hi} in {len(tries)} tries")
    lo, hi, _ = search_largest(lambda b: b <= lim, 128, 192, 8, 4096)
    check("search: step 8", lo == 136 and hi - lo <= 8, f"{lo} {hi}")
    lo, hi, _ = search_largest(lambda b: None, 16, None, 8, 4096)
    check("search: stops on error", (lo, hi) == (16, None))
    # the whole benchmark driver on the tiny model (CPU clock), with an injected OOM at B=4
    args = argparse.Namespace(seed=0, cfg=4.0, top_k=900, top_p=0.96, quick=True, repeats=2, max_seconds=120,
                              search_step=1, max_batch=6, out=None)
    orig = Bench.run_once

    def run_once_oom(self, var_, vae_, B_, decode_):
        if B_ >= 5 or (B_ == 4 and decode_):
            e = torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            e.varkv_phase = "decode" if B_ == 4 else "after scale1"
            raise e
        return orig(self, var_, vae_, B_, decode_)

    Bench.run_once = run_once_oom
    try:
        res = run_benchmark(args, dev, [(2, [1, 2, 4, 8], vae_cfg, var_cfg)], {"device": "cpu", "torch": torch.__version__})
    finally:
        Bench.run_once = orig
    rows = res["depths"]["2"]["rows"]
    st = {r["batch"]: (r["status"], r.get("decode"), r.get("decode_oom")) for r in rows}
    check("driver: rows ok / decoder-OOM fallback / OOM", st.get(1, ("",))[0] == "ok" and st.get(4) == ("ok", False, True)
          and st.get(8, ("",))[0] == "oom", str(st))
    s = res["depths"]["2"]["search"]
    check("driver: search finds 4, first OOM 5", s.get("largest_fit") == 4 and s.get("first_oom") == 5, str(s))
    check("driver: decode at largest reported OOM; largest with decode 3",
          s.get("decode_fits_at_largest") is False and s.get("largest_fit_with_decode") == 3, str(s))
    r1 = next(r for r in rows if r["batch"] == 1)
    check("driver: KV bytes/img", r1["kv_bytes_per_image"] == var.depth * 2 * L * C * 4 * 2)
    check("driver: per-scale times", len(r1["scale_ms"]) == 3 and all(t >= 0 for t in r1["scale_ms"]))
    print_tables(res)
    print(f"\nself-test: {len(passed)} passed, {len(failures)} failed")
    return 0 if not failures else 1


# ================================ main ================================

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="16,30")
    ap.add_argument("--batches", default=None,
                    help="comma list for every depth, or 'd16:16,64;d30:16,64,128' (default: d16 16,64,128,256; "
                         "d30 16,64,128,192,256)")
    ap.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed runs, coarser search")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (median)")
    ap.add_argument("--out", default=None, help="JSON results (written after every configuration)")
    ap.add_argument("--max-seconds", type=float, default=1e9, help="global time budget; stops and reports")
    ap.add_argument("--search-step", type=int, default=None, help="largest-batch resolution (default 4, quick 8)")
    ap.add_argument("--max-batch", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--top-k", type=int, default=900)
    ap.add_argument("--top-p", type=float, default=0.96)
    ap.add_argument("--self-test", action="store_true", help="CPU, float32, tiny model; checks, then exits")
    args = ap.parse_args()
    if args.self_test:
        sys.exit(self_test())
    if args.search_step is None:
        args.search_step = 8 if args.quick else 4
    if not torch.cuda.is_available():
        sys.exit("no CUDA device (use --self-test on a CPU)")
    depths = [int(d) for d in args.depths.split(",") if d]
    per_depth = {}
    if args.batches and ":" in args.batches:
        for part in args.batches.split(";"):
            k, v = part.split(":")
            per_depth[int(k.strip().lstrip("d"))] = [int(b) for b in v.split(",") if b]
    elif args.batches:
        per_depth = {d: [int(b) for b in args.batches.split(",") if b] for d in depths}
    torch.backends.cuda.matmul.allow_tf32 = True  # as the official sampling demo
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda")
    prop = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    tfl = matmul_tflops(device)
    info = {"device": prop.name, "torch": torch.__version__, "cuda": torch.version.cuda, "sms": prop.multi_processor_count,
            "mem_total_bytes": total, "mem_free_bytes_at_start": free, "matmul_bf16_tflops": tfl,
            "cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
            "autocast": "bfloat16", "attention": "F.scaled_dot_product_attention", "kv_growth": "torch.cat per scale",
            "quick": args.quick, "repeats": 2 if args.quick else args.repeats, "search_step": args.search_step,
            "max_seconds": args.max_seconds}
    print(f"{prop.name} ({prop.multi_processor_count} SMs, {total / 2 ** 30:.1f} GiB, {free / 2 ** 30:.1f} GiB free), "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}; bf16 matmul 8192^3 median of 10: {tfl:.0f} TFLOP/s",
          flush=True)
    free_memory()
    cfgs = [(d, per_depth.get(d, DEFAULT_BATCHES.get(d, [16, 64, 128])), None, None) for d in depths]
    results = run_benchmark(args, device, cfgs, info)
    print_tables(results)
    print(f"elapsed {results['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
