"""What each row option of large-vocabulary training costs, against the default call.

Run from anywhere once xentc is installed::

    python benchmarks/bench_options.py                         # 2048x32000 float32
    python benchmarks/bench_options.py --shapes 8192x1000,256x128256 --repeat 25
    python benchmarks/bench_options.py --quick                 # smoke run, seconds

For each shape the script times, in one interleaved run, the fused forward
and backward ``xentc.cross_entropy_with_grad(x, t, out=buf)`` (the gradient
written into a buffer of its own) with the default options and with each
option of ``OPTIONS``, and the forward ``xentc.cross_entropy`` likewise, on
torch-like logits ``standard_normal * 3``. It reports medians and each
option's time over the default's, against ``BARS`` (informational: the exit
status is 0 either way).
"""
import argparse
import sys

import numpy as np

import xentc
from xentc._bench import median_ms, time_interleaved
from xentc._bench.machine import available_cores, cpu_model
from xentc._config import config

#: The options timed, by name: keyword arguments of both calls.
OPTIONS = {
    "default": {},
    "logit_scale": dict(logit_scale=0.5),
    "softcap": dict(softcap=30.0),
    "z-loss": dict(lse_square_scale=1e-4),
    "sample_weight": dict(sample_weight=True),
    "return_lse": dict(return_lse=True),
}
#: Largest time over the default's aimed at, per option (the issue's goals).
BARS = {"softcap": 1.6}
DEFAULT_BAR = 1.05


def main(argv=None):
    """Run the benchmark from the command line; returns the exit status (0)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=None, help="NxC,... (default 2048x32000)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 15)")
    p.add_argument("--threads", type=int, default=None, help="n_threads (default all cores)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--quick", action="store_true", help="small shape, 3 repeats")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    shapes = args.shapes or ("512x4000" if args.quick else "2048x32000")
    repeat = args.repeat or (3 if args.quick else 15)
    print(f"{cpu_model()}, {available_cores()} cores available, ISA {config()['isa']}")
    print(f"dtype {args.dtype}, threads {args.threads or 'all'}, {repeat} repeats, medians\n")
    rng = np.random.default_rng(args.seed)
    for text in shapes.split(","):
        n, c = (int(v) for v in text.lower().split("x"))
        x = (rng.standard_normal((n, c), np.float32) * 3).astype(args.dtype)
        t = rng.integers(0, c, n)
        sw = rng.uniform(0.5, 1.5, n).astype(args.dtype)
        buf = np.empty_like(x)
        cases = []
        for name, opts in OPTIONS.items():
            kw = dict(opts, n_threads=args.threads)
            if kw.get("sample_weight") is True:
                kw["sample_weight"] = sw
            cases.append((f"fwd+bwd {name}",
                          lambda kw=kw: xentc.cross_entropy_with_grad(x, t, out=buf, **kw)))
            cases.append((f"fwd {name}", lambda kw=kw: xentc.cross_entropy(x, t, **kw)))
        samples = time_interleaved(cases, repeat=repeat)
        print(f"{n}x{c}")
        print(f"  {'option':<15}{'fwd+bwd ms':>12}{'ratio':>8}{'fwd ms':>10}{'ratio':>8}{'bar':>6}")
        base = {kind: median_ms(samples[f"{kind} default"]["times"]) for kind in ("fwd+bwd", "fwd")}
        for name in OPTIONS:
            row = [median_ms(samples[f"{kind} {name}"]["times"]) for kind in ("fwd+bwd", "fwd")]
            bar = BARS.get(name, DEFAULT_BAR)
            print(f"  {name:<15}{row[0]:>12.2f}{row[0] / base['fwd+bwd']:>8.2f}"
                  f"{row[1]:>10.2f}{row[1] / base['fwd']:>8.2f}{bar:>6.2f}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
