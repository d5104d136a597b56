"""The output layer and its loss, forward + backward: xentc's blocked call against torch.

Run from anywhere once xentc and torch are installed::

    python benchmarks/bench_linear.py                       # the two reference shapes
    python benchmarks/bench_linear.py --shapes 2048x512x32000 --repeat 7
    python benchmarks/bench_linear.py --quick               # small shape, seconds

For each shape N x H x C (tokens, features, classes; float32 torch CPU
tensors) the script checks that the implementations agree on the loss and
the three gradients, then times them in one interleaved run and reports
medians over ``--repeat`` repetitions:

matmuls
    The three matrix products a forward + backward needs at least:
    ``X @ W.T``, ``G @ W`` and ``G.T @ X``, in torch, with G of the logits'
    shape computed beforehand (nothing else).
xentc
    ``xentc.torch.linear_cross_entropy(X, W, t).backward()``: blocks of
    rows, the fused row kernel on each block's logits, the gradients
    accumulated block by block (never the whole logits).
torch
    ``F.cross_entropy(F.linear(X, W), t).backward()``: the whole logits and
    their gradient.
torch-chunked
    ``F.linear_cross_entropy(X, W, t, options=torch.nn.LinearCrossEntropyOptions())``
    (torch >= 2.13), the chunked path, then ``backward()``.

The goals (informational; the exit status is 0): xentc within ``MATMUL_BAR``
times the matmuls alone, faster than torch, and ``CHUNKED_BAR`` times
faster than torch's chunked call.
"""
import argparse
import sys

import torch
import torch.nn.functional as F

import xentc.torch
from xentc._bench import median_ms, time_interleaved
from xentc._bench.machine import available_cores, cpu_model

SHAPES = [(2048, 512, 32000), (1024, 1024, 128256)]
QUICK_SHAPES = [(256, 64, 4000)]
MATMUL_BAR = 1.2
CHUNKED_BAR = 2.5


def cases(n, h, c, threads):
    """(name, zero-argument callable) of each implementation for one shape."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, h, generator=g)
    w = torch.randn(c, h, generator=g) * h ** -0.5
    t = torch.randint(0, c, (n,), generator=g)
    grad_logits = torch.randn(n, c, generator=g) / n

    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()

    def leaves():
        # A training step's zero_grad(set_to_none=True): each call allocates
        # its gradients, and no copy of the weight is timed.
        xl.grad = wl.grad = None
        return xl, wl

    def matmuls():
        torch.matmul(x, w.T)
        torch.matmul(grad_logits, w)
        torch.matmul(grad_logits.T, x)

    impls = {
        "xentc": lambda xl, wl: xentc.torch.linear_cross_entropy(xl, wl, t, n_threads=threads),
        "torch": lambda xl, wl: F.cross_entropy(F.linear(xl, wl), t),
    }
    if hasattr(torch.nn, "LinearCrossEntropyOptions"):
        opts = torch.nn.LinearCrossEntropyOptions()
        impls["torch-chunked"] = lambda xl, wl: F.linear_cross_entropy(xl, wl, t, options=opts)
    return matmuls, impls, leaves


def agree(impls, leaves):
    """Loss and gradients of every implementation against torch's, float32 bars."""
    results = {}
    for name, fn in impls.items():
        xl, wl = leaves()
        loss = fn(xl, wl)
        loss.backward()
        results[name] = (loss.item(), xl.grad, wl.grad)
    ref = results["torch"]
    for name, (loss, gx, gw) in results.items():
        ok = (abs(loss - ref[0]) <= 1e-5 * abs(ref[0])
              and torch.allclose(gx, ref[1], rtol=1e-4, atol=1e-6 * ref[1].abs().max())
              and torch.allclose(gw, ref[2], rtol=1e-4, atol=1e-6 * ref[2].abs().max()))
        if not ok:
            raise SystemExit(f"{name} disagrees with torch")


def main(argv=None):
    """Run the benchmark from the command line; returns the exit status (0)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=None, help="NxHxC,... (default the two reference shapes)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 5)")
    p.add_argument("--threads", type=int, default=None, help="threads (default all cores)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    shapes = ([tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
              if args.shapes else QUICK_SHAPES if args.quick else SHAPES)
    repeat = args.repeat or (3 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_model()}, {available_cores()} cores available, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, float32, {repeat} repeats, medians")
    for n, h, c in shapes:
        matmuls, impls, leaves = cases(n, h, c, args.threads)
        agree(impls, leaves)
        timed = [("matmuls", matmuls)] + [
            (name, lambda fn=fn: _step(fn, leaves)) for name, fn in impls.items()]
        samples = time_interleaved(timed, repeat=repeat, warmup=1)
        ms = {k: median_ms(v["times"]) for k, v in samples.items()}
        print(f"\n{n}x{h}x{c}")
        for name, v in ms.items():
            print(f"  {name:<14}{v:>10.1f} ms{v / ms['matmuls']:>8.2f}x matmuls")
        print(f"  xentc: {ms['xentc'] / ms['matmuls']:.2f}x the matmuls (bar {MATMUL_BAR}), "
              f"{ms['torch'] / ms['xentc']:.2f}x faster than torch"
              + (f", {ms['torch-chunked'] / ms['xentc']:.2f}x faster than torch-chunked "
                 f"(bar {CHUNKED_BAR})" if "torch-chunked" in ms else ""))
    return 0


def _step(fn, leaves):
    xl, wl = leaves()
    fn(xl, wl).backward()


if __name__ == "__main__":
    sys.exit(main())
