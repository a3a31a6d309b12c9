#!/usr/bin/env python3
"""End-to-end check of convert_checkpoint.py on a machine with PyTorch (and `safetensors`).

Writes a .pth shaped like an official VAR checkpoint (official names, fp32/bf16/fp16 tensors,
buffers, a nested {'model': ...} variant), converts it with convert_checkpoint.py and reads the
result back with the `safetensors` package: every tensor must come back bit-identical, under its
name, dtype and shape. Exit 0 on success; prints one line per checked file.
"""
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))


def var_like_state_dict(depth=2, width=128, vocab=4096, cvae=32):
    g = torch.Generator().manual_seed(7)
    r = lambda *s, dt=torch.float32: torch.randn(*s, generator=g).to(dt)
    sd = {
        "class_emb.weight": r(1001, width),
        "pos_start": r(1, 1, width),
        "pos_1LC": r(1, 680, width),
        "lvl_embed.weight": r(10, width),
        "word_embed.weight": r(width, cvae, dt=torch.bfloat16),
        "word_embed.bias": r(width, dt=torch.bfloat16),
        "head.weight": r(vocab, width, dt=torch.float16),
        "head.bias": r(vocab, dt=torch.float16),
        "lvl_1L": torch.arange(680, dtype=torch.int64).reshape(1, 680),
        "attn_bias_for_masking": torch.zeros(1, 1, 680, 680),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd[p + "attn.mat_qkv.weight"] = r(3 * width, width, dt=torch.bfloat16)
        sd[p + "attn.q_bias"] = r(width)
        sd[p + "attn.v_bias"] = r(width)
        sd[p + "attn.zero_k_bias"] = torch.zeros(width)
        sd[p + "attn.scale_mul_1H11"] = r(1, width // 64, 1, 1)
        sd[p + "ada_lin.1.weight"] = r(6 * width, width, dt=torch.bfloat16)
    return sd


def check(pth_obj, flat, tmp, name):
    src, dst = os.path.join(tmp, name + ".pth"), os.path.join(tmp, name + ".safetensors")
    torch.save(pth_obj, src)
    subprocess.run([sys.executable, os.path.join(HERE, "convert_checkpoint.py"), src, dst], check=True)
    back = load_file(dst)
    assert set(back) == set(flat), f"{name}: names differ: {sorted(set(back) ^ set(flat))[:5]}"
    for k, t in flat.items():
        b = back[k]
        assert b.dtype == t.dtype and b.shape == t.shape, f"{name}: {k}: {b.dtype}{tuple(b.shape)} vs {t.dtype}{tuple(t.shape)}"
        assert torch.equal(b.view(torch.uint8) if b.dtype.is_floating_point else b,
                           t.view(torch.uint8) if t.dtype.is_floating_point else t), f"{name}: {k}: bytes differ"
    print(f"{name}: {len(flat)} tensors bit-identical after conversion ({os.path.getsize(dst)} bytes)")


def main():
    sd = var_like_state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        check(sd, sd, tmp, "var_like_flat")
        check({"model": sd, "epoch": 3}, sd, tmp, "var_like_nested")
    print("convert_checkpoint.py: torch round trip OK")


if __name__ == "__main__":
    main()
