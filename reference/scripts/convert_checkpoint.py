#!/usr/bin/env python3
"""Convert official VAR / VQ-VAE PyTorch checkpoints to safetensors for varkv's reference model.

The official FoundationVision/VAR releases (var_d16.pth ... var_d30.pth, vae_ch160v4096z32.pth) are
plain state dicts saved with torch.save. This script loads one on the CPU with
torch.load(map_location="cpu", weights_only=True) and writes every tensor under its unchanged name
(blocks.N.attn.mat_qkv.weight, quantize.embedding.weight, decoder.up.4.block.0.conv1.weight, ...,
buffers such as attn_bias_for_masking and quantize.ema_vocab_hit_SV included) to a .safetensors file,
optionally casting floating tensors to another dtype.

It uses the `safetensors` package when it is installed and otherwise writes the format itself
(8-byte little-endian header length, JSON header padded with spaces to a multiple of 8, raw
little-endian tensor bytes). `--self-test` checks that hand-written writer against an independent
reader without needing torch.

Examples:
  python3 convert_checkpoint.py var_d16.pth var_d16.safetensors
  python3 convert_checkpoint.py vae_ch160v4096z32.pth vae.safetensors --dtype bf16
"""

import argparse
import json
import os
import struct
import sys
import tempfile

# safetensors dtype name -> bytes per element
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U8": 1, "BOOL": 1,
}


class ConversionError(Exception):
    """A problem with the input or output; printed as one line."""


def write_safetensors(path, records, metadata=None):
    """Write records [(name, dtype, shape, raw little-endian bytes)] as a safetensors file.

    Tensors are laid out in the given order; the header is padded with spaces so that the data
    section starts at a multiple of 8 bytes, as the reference implementation does.
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    seen = set()
    for name, dtype, shape, data in records:
        if name in seen or name == "__metadata__":
            raise ConversionError(f"tensor name '{name}' is duplicated or reserved")
        seen.add(name)
        if dtype not in DTYPE_SIZES:
            raise ConversionError(f"tensor '{name}': unsupported dtype {dtype}")
        numel = 1
        for d in shape:
            if not isinstance(d, int) or d < 0:
                raise ConversionError(f"tensor '{name}': invalid shape {list(shape)}")
            numel *= d
        if len(data) != numel * DTYPE_SIZES[dtype]:
            raise ConversionError(
                f"tensor '{name}': {len(data)} bytes for {dtype} {list(shape)} (expected {numel * DTYPE_SIZES[dtype]})")
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * ((8 - len(blob) % 8) % 8)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, _, _, data in records:
            f.write(data)
    os.replace(tmp, path)


def read_safetensors(path):
    """Independent strict reader: {name: (dtype, shape, bytes)}; raises ConversionError on any defect."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ConversionError(f"{path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ConversionError(f"{path}: header length {n} exceeds the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    out = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        numel = 1
        for d in info["shape"]:
            numel *= d
        if not (0 <= b <= e <= len(data)) or e - b != numel * DTYPE_SIZES[info["dtype"]]:
            raise ConversionError(f"{path}: tensor '{name}': bad data_offsets {info['data_offsets']}")
        spans.append((b, e))
        out[name] = (info["dtype"], list(info["shape"]), data[b:e])
    spans.sort()
    for (b0, e0), (b1, _) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ConversionError(f"{path}: overlapping tensors")
    return out, header.get("__metadata__")


def torch_records(state_dict, cast):
    """(name, dtype, shape, bytes) for every tensor of a state dict, casting floats if asked."""
    import ctypes
    import torch

    names = {
        torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
        torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
        torch.uint8: "U8", torch.bool: "BOOL",
    }
    targets = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    records = []
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            raise ConversionError(f"entry '{name}' is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu()
        if cast != "keep" and t.is_floating_point():
            t = t.to(targets[cast])
        if t.dtype not in names:
            raise ConversionError(f"tensor '{name}': dtype {t.dtype} has no safetensors equivalent here")
        t = t.contiguous()
        nbytes = t.numel() * t.element_size()
        data = ctypes.string_at(t.data_ptr(), nbytes) if nbytes else b""
        if sys.byteorder != "little":
            raise ConversionError("big-endian hosts are not supported")
        records.append((name, names[t.dtype], list(t.shape), data))
    return records


def unwrap_state_dict(obj, path):
    """Official checkpoints are flat state dicts; also accept {'state_dict': ...} / {'model': ...}."""
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    raise ConversionError(f"{path}: not a state dict of tensors (top-level type {type(obj).__name__})")


def convert(src, dst, cast, overwrite):
    if not os.path.isfile(src):
        raise ConversionError(f"{src}: no such file")
    if os.path.exists(dst) and not overwrite:
        raise ConversionError(f"{dst}: exists (pass --force to overwrite)")
    try:
        import torch
    except ImportError as e:
        raise ConversionError("PyTorch is required to read .pth checkpoints (pip install torch)") from e
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        raise ConversionError(f"{src}: cannot load with torch.load(weights_only=True): {e}") from e
    state_dict = unwrap_state_dict(obj, src)
    records = torch_records(state_dict, cast)
    try:
        from safetensors.torch import save_file  # the reference writer, when installed

        tensors = {name: state_dict[name].detach().cpu() for name, _, _, _ in records}
        if cast != "keep":
            targets = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
            tensors = {k: (v.to(targets[cast]) if v.is_floating_point() else v) for k, v in tensors.items()}
        # clone(): save_file refuses tensors that share storage (tied weights).
        save_file({k: v.contiguous().clone() for k, v in tensors.items()}, dst, metadata={"source": os.path.basename(src)})
        writer = "safetensors"
    except ImportError:
        write_safetensors(dst, records, metadata={"source": os.path.basename(src)})
        writer = "built-in writer"
    total = sum(len(r[3]) for r in records)
    print(f"{src} -> {dst}: {len(records)} tensors, {total / 2**20:.1f} MiB ({writer})")


def self_test(keep_path=None):
    """Round-trip the built-in writer through the independent reader, without torch.

    keep_path: also write the sample file there (the C++ reader's tests read it back).
    """
    import random

    rng = random.Random(1234)
    records = []
    floats = [rng.uniform(-4, 4) for _ in range(12)]
    records.append(("decoder.conv_in.weight", "F32", [3, 2, 2], struct.pack("<12f", *floats)))
    halves = [1.0, -2.0, 0.5, 65504.0]
    records.append(("quantize.embedding.weight", "F16", [2, 2], struct.pack("<4e", *halves)))
    bf = [struct.unpack("<I", struct.pack("<f", x))[0] >> 16 for x in (1.0, -0.25, 3.0)]
    records.append(("blocks.0.attn.scale_mul_1H11", "BF16", [1, 3, 1, 1], struct.pack("<3H", *bf)))
    records.append(("lvl_1L", "I64", [1, 5], struct.pack("<5q", 0, 1, 1, 2, 9)))
    records.append(("empty", "F32", [0, 4], b""))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.safetensors")
        write_safetensors(path, records, metadata={"source": "self-test"})
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        if n % 8 != 0:
            raise ConversionError(f"self-test: header length {n} is not padded to 8 bytes")
        got, meta = read_safetensors(path)
        if meta != {"source": "self-test"}:
            raise ConversionError(f"self-test: metadata {meta}")
        if set(got) != {r[0] for r in records}:
            raise ConversionError(f"self-test: names {sorted(got)}")
        for name, dtype, shape, data in records:
            if got[name] != (dtype, shape, data):
                raise ConversionError(f"self-test: tensor '{name}' did not round-trip")
        if struct.unpack("<4e", got["quantize.embedding.weight"][2]) != tuple(halves):
            raise ConversionError("self-test: fp16 values changed")
        for bad in ([("x", "F32", [2], b"\0" * 4)], [("x", "Q8", [1], b"\0")], [("x", "F32", [1], b"\0" * 4)] * 2):
            try:
                write_safetensors(os.path.join(d, "bad.safetensors"), bad)
            except ConversionError:
                continue
            raise ConversionError(f"self-test: writer accepted invalid records {bad[0][:3]}")
    if keep_path:
        write_safetensors(keep_path, records, metadata={"source": "self-test"})
    print("convert_checkpoint self-test passed: built-in safetensors writer round-trips 5 tensors")


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Convert an official VAR / VQ-VAE .pth checkpoint to safetensors (same tensor names).",
        epilog="Needs PyTorch for conversion; --self-test needs only Python.")
    p.add_argument("input", nargs="?", help="checkpoint .pth (e.g. var_d16.pth, vae_ch160v4096z32.pth)")
    p.add_argument("output", nargs="?", help="output .safetensors path")
    p.add_argument("--dtype", choices=["keep", "f32", "f16", "bf16"], default="keep",
                   help="cast floating tensors (default: keep the checkpoint's dtypes)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--self-test", action="store_true", help="check the built-in writer (no torch needed) and exit")
    p.add_argument("--self-test-output", metavar="PATH", help="with --self-test: keep the sample file at PATH")
    args = p.parse_args(argv)
    try:
        if args.self_test:
            self_test(args.self_test_output)
            return 0
        if not args.input or not args.output:
            p.error("input and output paths are required (or --self-test)")
        convert(args.input, args.output, args.dtype, args.force)
        return 0
    except ConversionError as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
