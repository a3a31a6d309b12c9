#!/usr/bin/env python3
"""Instruction mix and wait placement of a kernel's tensor-core loops, from its SASS.

    cuobjdump -sass build/bench/varkv_bench_gpu_attention > all.sass
    python3 scripts/dev/sass_hot_loops.py all.sass 'resident_kernelILi64ELi6ENS_7NoStats'

For every backward branch of the first function whose mangled name contains the pattern, and whose
body issues HGMMA or HMMA (and is at most 2000 instructions long), prints the body's length, its most
frequent opcodes and, in order, where the wgmma waits (WARPGROUP.DEPBAR), cp.async waits
(DEPBAR) and the wgmma groups' last HGMMA (gsb0) sit against the first and last MUFU (the
softmax's exponentials). Static counts: a branch skipped at run time (the last tile's masking)
still counts.

It is how bench/RESULTS.md (2026-11-25, "the wait for P V") found that ptxas places the wait for
P_{t-1} V_{t-1} before the softmax's first exponential in every warpgroup kernel. Without a CUDA
toolkit, cuobjdump and nvdisasm come from the PyPI wheels nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm (put nvdisasm on PATH).
"""
import collections
import re
import signal
import sys

INSTR = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
MAX_BODY = 2000
BRANCH = re.compile(r"\bBRA\s+(?:`\(.*?\)\s+)?0x([0-9a-f]+)")


def function_lines(sass, pattern):
    lines = sass.split("\n")
    start = next((i for i, l in enumerate(lines) if "Function :" in l and pattern in l), None)
    if start is None:
        sys.exit(f"no function whose name contains '{pattern}'")
    end = next((i for i in range(start + 1, len(lines)) if "Function :" in lines[i]), len(lines))
    return lines[start:end]


def opcode(text):
    words = text.split()
    op = words[1] if words[0].startswith("@") else words[0]
    return op.split(".")[0]


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # piped into head: stop quietly
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        with open(sys.argv[1]) as f:
            sass = f.read()
    except OSError as e:
        sys.exit(f"cannot read SASS file '{sys.argv[1]}': {e.strerror}")
    instrs = []
    for line in function_lines(sass, sys.argv[2]):
        m = INSTR.match(line)
        if m:
            instrs.append((int(m.group(1), 16), m.group(2)))
    at = {addr: i for i, (addr, _) in enumerate(instrs)}
    loops = 0
    for i, (addr, text) in enumerate(instrs):
        m = BRANCH.search(text)
        if not m or int(m.group(1), 16) >= addr or int(m.group(1), 16) not in at:
            continue
        body = instrs[at[int(m.group(1), 16)]:i + 1]
        if not any(opcode(t) in ("HGMMA", "HMMA") for _, t in body):
            continue
        if len(body) > MAX_BODY:  # an outer loop (a kernel's query-tile or work loop), not a hot one
            print(f"loop {hex(body[0][0])}..{hex(addr)}: {len(body)} instructions (outer loop, not listed)")
            continue
        loops += 1
        mix = collections.Counter(opcode(t) for _, t in body)
        print(f"loop {hex(body[0][0])}..{hex(addr)}: {len(body)} instructions")
        print("  " + ", ".join(f"{op} {n}" for op, n in mix.most_common(12)))
        mufu = [k for k, (_, t) in enumerate(body) if opcode(t) == "MUFU"]
        events = [(k, t.split(" ;")[0]) for k, (_, t) in enumerate(body)
                  if "DEPBAR" in t or ("HGMMA" in t and "gsb0" in t)]
        if mufu:
            events += [(mufu[0], "first MUFU"), (mufu[-1], "last MUFU")]
        for k, what in sorted(events):
            print(f"  {k:5d}  {what}")
    if not loops:
        sys.exit(f"'{sys.argv[2]}': {len(instrs)} instructions, no loop that issues HGMMA or HMMA")


if __name__ == "__main__":
    main()
