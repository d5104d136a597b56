"""Half-precision logits: xentc against torch in the same dtype, and against float32.

Run from anywhere once xentc and torch are installed::

    python benchmarks/bench_half.py                  # 65536x10, 8192x1000, 2048x32000
    python benchmarks/bench_half.py --shapes 2048x32000,256x128256 --repeat 25
    python benchmarks/bench_half.py --quick          # smoke run, seconds

For each shape and 16-bit dtype (bfloat16, float16) the script times, in one
interleaved run on torch CPU tensors of logits ``standard_normal * 3``:

- ``fwd``: ``xentc.cross_entropy(x, t)`` and ``F.cross_entropy(x, t)``;
- ``fwd+bwd``: ``xentc.cross_entropy_with_grad(x, t, out=buf)`` (the
  gradient in the input's dtype, into a buffer of its own) and
  ``F.cross_entropy(x, t).backward()`` on a leaf that requires grad;
- the same xentc calls on the float32 logits, for the half/float32 ratio.

It reports medians and the ratios the goals name: xentc's speed-up over
torch in the same dtype, and xentc's half-precision time over its float32
time. Both use all cores (``--threads`` sets them, torch's too).
"""
import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

import xentc
from xentc._bench import median_ms, time_interleaved
from xentc._bench.machine import available_cores, cpu_model
from xentc._config import config

DEFAULT_SHAPES = "65536x10,8192x1000,2048x32000"
DTYPES = ("bfloat16", "float16")


def _cases(x32, t, threads):
    """(name, callable) pairs of one shape, every dtype."""
    cases = []
    for name in ("float32",) + DTYPES:
        x = x32.to(getattr(torch, name))
        buf = torch.empty_like(x)
        cases.append((f"xentc fwd {name}",
                      lambda x=x: xentc.cross_entropy(x, t, n_threads=threads)))
        cases.append((f"xentc fwd+bwd {name}",
                      lambda x=x, buf=buf: xentc.cross_entropy_with_grad(x, t, out=buf,
                                                                         n_threads=threads)))
        if name == "float32":
            continue
        leaf = x.clone().requires_grad_()

        def torch_step(leaf=leaf):
            leaf.grad = None
            F.cross_entropy(leaf, t).backward()

        cases.append((f"torch fwd {name}", lambda x=x: F.cross_entropy(x, t)))
        cases.append((f"torch fwd+bwd {name}", torch_step))
    return cases


def main(argv=None):
    """Run the benchmark from the command line; returns the exit status (0)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=None, help=f"NxC,... (default {DEFAULT_SHAPES})")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 15)")
    p.add_argument("--threads", type=int, default=None, help="threads (default all cores)")
    p.add_argument("--quick", action="store_true", help="small shapes, 3 repeats")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    shapes = args.shapes or ("4096x10,512x1000" if args.quick else DEFAULT_SHAPES)
    repeat = args.repeat or (3 if args.quick else 15)
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    print(f"{cpu_model()}, {available_cores()} cores available, ISA {config()['isa']}, "
          f"torch {torch.__version__}")
    print(f"{threads} threads, {repeat} repeats, medians in ms\n")
    rng = np.random.default_rng(args.seed)
    print(f"{'shape':<12}{'dtype':<10}{'task':<9}{'xentc':>9}{'torch':>9}{'vs torch':>10}"
          f"{'float32':>9}{'/ f32':>7}")
    for text in shapes.split(","):
        n, c = (int(v) for v in text.lower().split("x"))
        x32 = torch.from_numpy(rng.standard_normal((n, c), np.float32) * 3)
        t = torch.from_numpy(rng.integers(0, c, n))
        samples = time_interleaved(_cases(x32, t, threads), repeat=repeat)
        ms = {name: median_ms(s["times"]) for name, s in samples.items()}
        for dtype in DTYPES:
            for task in ("fwd", "fwd+bwd"):
                ours, theirs = ms[f"xentc {task} {dtype}"], ms[f"torch {task} {dtype}"]
                f32 = ms[f"xentc {task} float32"]
                print(f"{text:<12}{dtype:<10}{task:<9}{ours:>9.2f}{theirs:>9.2f}"
                      f"{theirs / ours:>9.2f}x{f32:>9.2f}{ours / f32:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
