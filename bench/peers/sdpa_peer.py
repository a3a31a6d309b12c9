#!/usr/bin/env python3
"""PyTorch baseline for bench/gpu_attention_bench.cu, on the same shapes, in the same device call.

For every (model, images, scale) shape of the varkv benchmark: SDPA with each backend (flash,
cuDNN, memory-efficient) on the full cache; on a 10% cache pre-compacted; on a 10% cache gathered on
the fly from the full one (torch.gather + cat, timed with the attention). Plus ScaleKV's selection in
PyTorch (16 window queries' logits, summed, max-pool 5, top-k, sort, gather of K and V) at the
largest scales, and the two ceilings (device-to-device copy, bf16 matmul 8192^3).
Times: CUDA events around single calls after 3 warm-ups, median of 25 (the varkv bench's rule); for the
full and pre-compacted cases also the mean per call inside a CUDA graph of 20 calls ("CASE_graph/BACKEND",
the bench's us_graph: PyTorch's ~40-80 us host overhead per call removed, as varkv's is).
With --ours FILE (the varkv Google Benchmark JSON) it prints the issue's target ratios.

  python3 bench/peers/sdpa_peer.py --out peer.json [--ours varkv_bench_gpu_attention.json]
"""
import argparse
import json
import math
import statistics

try:  # --summarize needs no torch
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:
    torch = None

VAR256 = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
INF1024 = [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64]
MODELS = {  # name: (heads, head_dim, sides, images)
    "var-d16": (16, 64, VAR256, [1, 16, 64]),
    "var-d20": (20, 64, VAR256, [1, 16, 64]),
    "var-d24": (24, 64, VAR256, [1, 16, 64]),
    "var-d30": (30, 64, VAR256, [1, 16, 64]),
    "infinity-2b": (16, 128, INF1024, [1, 4]),
    "infinity-8b": (28, 128, INF1024, [1, 4]),
}
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION} if torch else {}


def time_us(fn, reps=25):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    return statistics.median(ts)


def time_graph_us(fn, calls=20, replays=10):
    """Mean per call of `calls` calls captured in one CUDA graph, replayed `replays` times: the
    device-side cost without PyTorch's per-call host overhead (the varkv bench's us_graph rule)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-ups off the capture stream, as torch.cuda.graphs asks
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(replays):
        g.replay()
    b.record()
    b.synchronize()
    t = a.elapsed_time(b) * 1e3 / (calls * replays)
    del g
    return t


def ceilings():
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    t = time_us(lambda: y.copy_(x), reps=10)
    bw = 2 * x.numel() / (t * 1e-6) / 1e9
    del x, y
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = time_us(lambda: a @ b, reps=10)
    return bw, 2 * n ** 3 / (t * 1e-6) / 1e12


def sdpa(backend, q, k, v, scale):
    with sdpa_kernel([BACKENDS[backend]]):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def window_index(h, w):
    idx = sorted({((2 * i + 1) * h // 8) * w + (2 * j + 1) * w // 8 for i in range(4) for j in range(4)})
    return torch.tensor(idx, device="cuda")


def scalekv_select(q, k, v, win, budget, scale):
    """ScaleKV-style selection: window logits summed over the 16 window queries, max-pool 5, top-k,
    sort (position order), gather K and V."""
    logits = torch.matmul(q[:, :, win], k.transpose(-1, -2)) * scale  # [S, H, 16, L]
    score = logits.sum(-2)
    pooled = F.max_pool1d(score.flatten(0, 1).unsqueeze(1).float(), 5, 1, 2).view_as(score)
    idx = pooled.topk(budget, dim=-1).indices.sort(-1).values
    gi = idx.unsqueeze(-1).expand(-1, -1, -1, k.shape[-1])
    return torch.gather(k, 2, gi), torch.gather(v, 2, gi)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="peer.json")
    ap.add_argument("--ours", default=None)
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph timings (full, 10%% compacted)")
    ap.add_argument("--only", default="", help="comma-separated MODEL/BN keys, e.g. var-d30/B64,infinity-2b/B4")
    ap.add_argument("--summarize", default=None, metavar="PEER_JSON",
                    help="print the targets from an earlier run's JSON and --ours; measures nothing")
    args = ap.parse_args()
    if args.summarize:
        if not args.ours:
            ap.error("--summarize needs --ours OURS_JSON (varkv_bench_gpu_attention's --benchmark_out)")
        with open(args.summarize) as f:
            summarize(json.load(f), args.ours)
        return
    torch.manual_seed(0)
    dev = torch.cuda.get_device_properties(0)
    bw, tflops = ceilings()
    print(f"GPU {dev.name}, torch {torch.__version__}: D2D copy {bw:.0f} GB/s (read+write), "
          f"bf16 matmul 8192^3 {tflops:.0f} TFLOP/s", flush=True)
    res = {"device": dev.name, "copy_GBps": bw, "matmul_TFLOPs": tflops, "attn": {}, "select": {}}
    for model, (H, d, sides, images_list) in MODELS.items():
        scale = 1.0 / math.sqrt(d)
        for images in images_list:
            if args.only and f"{model}/B{images}" not in args.only.split(","):
                continue
            S = 2 * images
            begin = 0
            for s, side in enumerate(sides):
                nq = side * side
                full = begin
                begin += nq
                if args.quick and s not in (0, 5, len(sides) - 1):
                    continue
                kept = math.floor(0.1 * full + 0.5)  # std::lround, as the varkv bench (Python rounds 0.5 to even)
                q = torch.randn(S, H, nq, d, device="cuda", dtype=torch.bfloat16)
                kf = torch.randn(S, H, full + nq, d, device="cuda", dtype=torch.bfloat16)
                vf = torch.randn_like(kf)
                kc, vc = kf[:, :, full - kept:].contiguous(), vf[:, :, full - kept:].contiguous()
                idx = torch.sort(torch.rand(S, H, full, device="cuda").argsort(-1)[..., :kept], -1).values
                gi = idx.unsqueeze(-1).expand(-1, -1, -1, d)
                row = {}
                for be in BACKENDS:
                    for case, fn in (
                        ("full", lambda be=be: sdpa(be, q, kf, vf, scale)),
                        ("10pct_compacted", lambda be=be: sdpa(be, q, kc, vc, scale)),
                        ("10pct_gathered", lambda be=be: sdpa(
                            be, q, torch.cat([torch.gather(kf[:, :, :full], 2, gi), kf[:, :, full:]], 2),
                            torch.cat([torch.gather(vf[:, :, :full], 2, gi), vf[:, :, full:]], 2), scale)),
                    ):
                        try:
                            row[f"{case}/{be}"] = time_us(fn)
                        except RuntimeError as e:  # backend refuses this shape
                            row[f"{case}/{be}"] = float("nan")
                            row.setdefault("errors", []).append(f"{case}/{be}: {str(e).splitlines()[0][:120]}")
                            continue
                        if case != "10pct_gathered" and not args.no_graphs:
                            try:
                                row[f"{case}_graph/{be}"] = time_graph_us(fn)
                            except RuntimeError as e:  # not capturable with this backend
                                row[f"{case}_graph/{be}"] = float("nan")
                                row.setdefault("errors", []).append(
                                    f"{case}_graph/{be}: {str(e).splitlines()[0][:120]}")
                key = f"{model}/B{images}/scale{s:02d}"
                res["attn"][key] = row
                best = {c: min((v for k_, v in row.items() if k_.startswith(c + "/") and not math.isnan(v)),
                               default=float("nan")) for c in ("full", "10pct_compacted", "10pct_gathered")}
                print(f"{key:28s} nq {nq:5d} nk_full {full + nq:6d}  best full {best['full']:9.1f} us  "
                      f"10% compacted {best['10pct_compacted']:9.1f}  10% gathered {best['10pct_gathered']:9.1f}  "
                      + " ".join(f"{k_}={v:.1f}" for k_, v in row.items() if k_ != "errors"), flush=True)
                if (model, images, s) in (("infinity-2b", 4, 12), ("var-d30", 64, 9)):
                    budget = max(1, (full + nq) // 10)
                    win = window_index(side, side)
                    t = time_us(lambda: scalekv_select(q, kf, vf, win, budget, scale))
                    res["select"][key] = t
                    print(f"{key:28s} ScaleKV selection in PyTorch (budget {budget}): {t:.1f} us", flush=True)
                del q, kf, vf, kc, vc, idx, gi
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    if args.ours:
        summarize(res, args.ours)


def summarize(peer, ours_path):
    with open(ours_path) as f:
        # Google Benchmark appends "/iterations:1/manual_time" to each name.
        ours = {b["name"].split("/iterations:")[0]: b for b in json.load(f)["benchmarks"]}

    def us(name, field="us_median"):
        b = ours.get(name)
        return b[field] if b and field in b else float("nan")

    def best(key, case):
        row = peer["attn"].get(key, {})
        vals = [v for k, v in row.items() if k.startswith(case + "/") and not math.isnan(v)]
        return min(vals) if vals else float("nan")

    print("\n=== targets (ratios to the best peer measured in this run) ===")
    o10 = sum(us(f"attn/var-d30/B64/scale{s:02d}/10pct") for s in range(10))
    ofull = sum(us(f"attn/var-d30/B64/scale{s:02d}/full") for s in range(10))
    pfull = sum(best(f"var-d30/B64/scale{s:02d}", "full") for s in range(10))
    pcomp = sum(best(f"var-d30/B64/scale{s:02d}", "10pct_compacted") for s in range(10))
    print(f"VAR-d30 B=64, sum of 10 scales: varkv 10% {o10:.1f} us, varkv full {ofull:.1f} us; best SDPA full "
          f"{pfull:.1f} us -> {pfull / o10:.2f}x (target >= 2.5x); best SDPA 10% pre-compacted {pcomp:.1f} us -> "
          f"{pcomp / o10:.2f}x (target >= 1.5x); full vs full {pfull / ofull:.2f}x")
    g10 = sum(us(f"attn/var-d30/B64/scale{s:02d}/10pct", "us_graph") for s in range(10))
    gfull = sum(best(f"var-d30/B64/scale{s:02d}", "full_graph") for s in range(10))
    gcomp = sum(best(f"var-d30/B64/scale{s:02d}", "10pct_compacted_graph") for s in range(10))
    if not math.isnan(gfull):
        print(f"  the same inside CUDA graphs (host launch removed on both sides): varkv 10% {g10:.1f} us; best SDPA "
              f"full {gfull:.1f} us -> {gfull / g10:.2f}x; best SDPA 10% pre-compacted {gcomp:.1f} us -> "
              f"{gcomp / g10:.2f}x; varkv graph vs SDPA single calls {pfull / g10:.2f}x")
    floor = ours.get("launch/empty-kernel")
    if floor:
        print(f"launch floor (empty kernel, the same {floor.get('param_bytes', 0):.0f}-byte parameter block): "
              f"us_host {floor['us_host']:.2f}, single launch {floor['us_median']:.1f} us, in a graph "
              f"{floor['us_graph']:.2f} us; x10 launches = {10 * floor['us_median']:.0f} us of any eager 10-scale sum")
    # The library's own choice only (attn/MODEL/BN/scaleSS/BUDGET: no forced kernel, no statistic),
    # per batch size: at B=64 the 5x5 and 6x6 steps move 30-125 MB, over 12 us at any copy rate.
    for field in ("us_median", "us_b2b", "us_graph"):
        worst = {}
        for name, b in ours.items():
            parts = name.split("/")
            if parts[0] != "attn" or len(parts) != 5:
                continue
            s = int(parts[3][5:])
            side = (VAR256 if parts[1].startswith("var") else INF1024)[s]
            if side <= 6 and b.get(field, 0) > worst.get(parts[2], (0.0, ""))[0]:
                worst[parts[2]] = (b[field], name, b.get("GBps", 0.0) * b[field] * 1e-3)
        for batch in sorted(worst, key=lambda x: int(x[1:])):
            w, n, mb = worst[batch]
            print(f"scales <= 6x6, {batch}: worst varkv {field} {w:.1f} us ({n}, {mb:.1f} MB moved); target <= 12 us")
    for case in ("full", "10pct"):
        o = us(f"attn/infinity-2b/B4/scale12/{case}")
        p = best("infinity-2b/B4/scale12", "full" if case == "full" else "10pct_compacted")
        print(f"Infinity-2B B=4 last scale {case}: varkv {o:.1f} us, best SDPA {p:.1f} us -> throughput ratio "
              f"{p / o:.2f}x" + (" (target >= 0.85x)" if case == "full" else ""))
        og = us(f"attn/infinity-2b/B4/scale12/{case}", "us_graph")
        pg = best("infinity-2b/B4/scale12", "full_graph" if case == "full" else "10pct_compacted_graph")
        if not math.isnan(pg):
            print(f"  inside CUDA graphs: varkv {og:.1f} us, best SDPA {pg:.1f} us -> {pg / og:.2f}x")
    # Every model and batch size both sides measured: sums over all scales of one layer, single calls
    # (median) / inside CUDA graphs, the best SDPA backend per scale; the last scale's rates beside
    # the ceilings measured in this run.
    print(f"\n=== every model: sums over all scales of one layer (us, median / graph; best SDPA backend per scale) ===\n"
          f"ceilings: D2D copy {peer.get('copy_GBps', float('nan')):.0f} GB/s, "
          f"bf16 matmul {peer.get('matmul_TFLOPs', float('nan')):.0f} TFLOP/s\n")
    print("| model | B | varkv full | SDPA full | varkv 10% | SDPA 10% pre-compacted | 10% vs SDPA full "
          "| 10% vs pre-compacted | last scale full: varkv TFLOP/s, GB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, (_, _, sides, images_list) in MODELS.items():
        for images in images_list:
            pre = f"{model}/B{images}/scale"
            n = len(sides)
            if not all(f"{pre}{s:02d}" in peer["attn"] for s in range(n)):
                continue
            sums = {}
            for field in ("us_median", "us_graph"):
                for case in ("full", "10pct"):
                    sums[("ours", case, field)] = sum(us(f"attn/{pre}{s:02d}/{case}", field) for s in range(n))
            for case in ("full", "10pct_compacted"):
                for g in ("", "_graph"):
                    sums[("sdpa", case, g)] = sum(best(f"{pre}{s:02d}", case + g) for s in range(n))
            if any(math.isnan(v) for v in sums.values()):
                continue
            o10, o10g = sums[("ours", "10pct", "us_median")], sums[("ours", "10pct", "us_graph")]
            last = ours.get(f"attn/{pre}{n - 1:02d}/full", {})
            print(f"| {model} | {images} | {sums[('ours', 'full', 'us_median')]:.0f} / {sums[('ours', 'full', 'us_graph')]:.0f} "
                  f"| {sums[('sdpa', 'full', '')]:.0f} / {sums[('sdpa', 'full', '_graph')]:.0f} "
                  f"| {o10:.0f} / {o10g:.0f} "
                  f"| {sums[('sdpa', '10pct_compacted', '')]:.0f} / {sums[('sdpa', '10pct_compacted', '_graph')]:.0f} "
                  f"| {sums[('sdpa', 'full', '')] / o10:.2f}x / {sums[('sdpa', 'full', '_graph')] / o10g:.2f}x "
                  f"| {sums[('sdpa', '10pct_compacted', '')] / o10:.2f}x / {sums[('sdpa', '10pct_compacted', '_graph')] / o10g:.2f}x "
                  f"| {last.get('TFLOPs', float('nan')):.0f}, {last.get('GBps', float('nan')):.0f} |")
    print()
    for key in ("infinity-2b/B4/scale12", "var-d30/B64/scale09"):
        m, b, s = key.split("/")
        sel = us(f"select/{m}/{b}/{s}/full-cache")
        att = us(f"attn/{m}/{b}/{s}/full")
        pt = peer["select"].get(key, float("nan"))
        target = "; target < 10%" if m == "infinity-2b" else ""  # the target is Infinity's last scale
        print(f"{key}: varkv select+compact {sel:.1f} us = {100 * sel / att:.1f}% of varkv full attention "
              f"({att:.1f} us{target}); ScaleKV selection in PyTorch {pt:.1f} us")


if __name__ == "__main__":
    main()
