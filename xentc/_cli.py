"""The command line: ``python -m xentc info`` and ``python -m xentc bench``.

`run_script` also drives the scripts in ``benchmarks/``, so that every
benchmark takes the same options with the same meaning.
"""
import argparse
import json
import sys

from . import _bench, _config

#: Class counts of the default bench: from tiny heads through ImageNet to LLM vocabularies.
DEFAULT_CLASSES = (10, 100, 1000, 10000, 32000, 128256)
#: Logits per default shape, in MiB: twice this machine's 32 MiB L3 cache, so the
#: rows come from memory, and small enough for the default run to take under 2 min.
DEFAULT_MIB = 64
QUICK_SHAPES = [(4096, 10), (256, 1000), (64, 8192)]
DEFAULT_REPEAT = 5
QUICK_REPEAT = 3


def _shapes(text):
    try:
        return _bench.parse_shapes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _names(text):
    return [name.strip() for name in text.split(",") if name.strip()]


def _add_run_arguments(parser, default_repeat, default_peers):
    """Add the options every benchmark shares.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Gets ``--shapes``, ``--repeat``, ``--dtype``, ``--threads``,
        ``--peers``, ``--quick``, ``--seed`` and ``--no-progress``.
    default_repeat : int
        Timed repetitions without ``--quick``.
    default_peers : str
        What ``--peers`` defaults to, for the help text.
    """
    parser.add_argument("--shapes", type=_shapes, default=None,
                        help="comma-separated NxC list of logits shapes")
    parser.add_argument("--repeat", type=int, default=None,
                        help=f"timed repetitions, median taken (default {default_repeat}, "
                             f"{QUICK_REPEAT} with --quick)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for xentc, torch and the read pass (default: all cores)")
    peers = sorted({p.name for p in _bench.PEERS} - {"xentc", "read"})
    parser.add_argument("--peers", type=_names, default=None,
                        help=f"comma-separated peers to time besides xentc (default: "
                             f"{default_peers}); known: {', '.join(peers)}")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes and few repeats: a smoke run of seconds")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _resolve_run_arguments(parser, args, tasks, default_shapes, quick_shapes, default_repeat):
    """Fill the defaults of `_add_run_arguments`'s options and check them.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Reports bad values (and exits).
    args : argparse.Namespace
        Parsed options, updated in place.
    tasks : list of str
        The tasks to run, checked with the peers.
    default_shapes, quick_shapes : list of tuple of int
        Shapes without ``--shapes``, without and with ``--quick``.
    default_repeat : int
        Repetitions without ``--repeat`` and ``--quick``.
    """
    if args.shapes is None:
        args.shapes = quick_shapes if args.quick else default_shapes
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if args.quick else default_repeat
    if args.threads is None:
        args.threads = _bench.available_cores()
    if args.repeat < 1 or args.threads < 1:
        parser.error("--repeat and --threads must be >= 1")
    try:
        _bench.select_peers(tasks, args.peers)
    except ValueError as exc:
        parser.error(str(exc))


def _info(args):
    info = _config.info()
    print(json.dumps(info, indent=2) if args.json else _config.format_config(info))
    return 0


def _bench_command(parser, args):
    itemsize = 4 if args.dtype == "float32" else 8
    default_shapes = _bench.constant_byte_shapes(DEFAULT_CLASSES, args.mib * 2**20, itemsize)
    _resolve_run_arguments(parser, args, args.tasks, default_shapes, QUICK_SHAPES, DEFAULT_REPEAT)
    if args.plot and _config.module_version("matplotlib") is None:
        parser.error("--plot needs matplotlib (pip install matplotlib)")
    report = _bench.run(args.shapes, args.tasks, dtype=args.dtype, repeat=args.repeat,
                        threads=args.threads, seed=args.seed, peers=args.peers,
                        progress=not args.no_progress)
    if args.plot:
        _bench.plot(report, args.plot)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(_bench.format_report(report))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def run_script(argv, *, task, description, bars, default_shapes, quick_shapes, default_repeat,
               default_peers=None, memory_bar=None):
    """Run one task's benchmark script: options, timing, table, bars, JSON file.

    Parameters
    ----------
    argv : list of str or None
        Arguments; None for ``sys.argv[1:]``.
    task : str
        The task timed (a key of ``_bench.TASKS``).
    description : str
        The script's ``--help`` description.
    bars : dict
        ``{(N, C): minimum speed-up against torch}``, reported, never enforced.
    default_shapes, quick_shapes : list of tuple of int
        Shapes without ``--shapes``, without and with ``--quick``.
    default_repeat : int
        Repetitions without ``--repeat`` and ``--quick``.
    default_peers : list of str, optional
        Peers without ``--peers`` (default: every installed one).
    memory_bar : float, optional
        Largest extra memory of xentc's in-place gradient call aimed at, as a
        fraction of the logits' size (for ``task="fwd+bwd"``).

    Returns
    -------
    int
        Exit status, 0: the bars are informational.
    """
    parser = argparse.ArgumentParser(description=description)
    _add_run_arguments(parser, default_repeat,
                       "every installed one" if default_peers is None else ",".join(default_peers))
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the header and all results (raw samples included)")
    args = parser.parse_args(argv)
    _resolve_run_arguments(parser, args, [task], default_shapes, quick_shapes, default_repeat)
    report = _bench.run(args.shapes, [task], dtype=args.dtype, repeat=args.repeat,
                        threads=args.threads, seed=args.seed,
                        peers=default_peers if args.peers is None else args.peers,
                        progress=not args.no_progress)
    print(_bench.format_report(report, bars={task: bars}))
    rows = report["results"]
    timed = f"{task}/torch" in report["header"]["peers"]
    met = [_bench.speedup(r, task, "torch") >= bars[tuple(r["shape"])]
           for r in rows if timed and tuple(r["shape"]) in bars]
    if met:
        print(f"speed-up bars met: {sum(met)}/{len(met)} (informational)")
    # The memory bar is for the bar shapes: with few classes the O(N) per-row
    # buffers alone are a sizeable fraction of the logits (1/C for the losses).
    measured = [r for r in rows if r["extra_memory"] is not None]
    measured = [r for r in measured if tuple(r["shape"]) in bars] or measured
    if memory_bar is not None and measured:
        worst = max(r["extra_memory"]["tracemalloc"] / r["bytes"] for r in measured)
        rss = [r["extra_memory"]["rss"] / r["bytes"] for r in measured
               if r["extra_memory"]["rss"] is not None]
        verdict = "met" if worst < memory_bar else "not met"
        print(f"extra memory of the in-place call: at most {100 * worst:.3f}% of the logits "
              f"(tracemalloc; bar {100 * memory_bar:g}%: {verdict})"
              + (f"; peak resident size grew by at most {100 * max(rss):.2f}%" if rss else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"results written to {args.json}")
    return 0


def build_parser():
    """The ``python -m xentc`` argument parser.

    Returns
    -------
    argparse.ArgumentParser
        With the subcommands ``info`` (the default) and ``bench``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m xentc", description="xentc: fast, exact cross-entropy.")
    sub = parser.add_subparsers(dest="command", metavar="{info,bench}")
    info = sub.add_parser("info", help="version, build, array libraries and OpenCL devices "
                                       "(the default command)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    bench = sub.add_parser(
        "bench", help="time xentc against the installed peers",
        description="Time xentc against every installed peer (torch, JAX/optax, NumPy, SciPy, "
                    "scikit-learn) and one read pass over the logits, interleaved, and print "
                    "the medians and xentc's speed-ups. Default shapes: "
                    f"{len(DEFAULT_CLASSES)} class counts from {DEFAULT_CLASSES[0]} to "
                    f"{DEFAULT_CLASSES[-1]}, each about --mib MiB of logits.")
    _add_run_arguments(bench, DEFAULT_REPEAT, "every installed one")
    bench.add_argument("--mib", type=float, default=DEFAULT_MIB,
                       help=f"MiB of logits per default shape (default {DEFAULT_MIB}; make it "
                            "several times the last-level cache)")
    bench.add_argument("--tasks", type=_names, default=["forward", "fwd+bwd", "log_loss"],
                       help="comma-separated subset of forward, fwd+bwd, log_loss "
                            "(default: all)")
    bench.add_argument("--json", action="store_true",
                       help="print the results as JSON (raw samples included) instead of tables")
    bench.add_argument("--plot", metavar="FILE.png", default=None,
                       help="draw GB/s against the number of classes (needs matplotlib)")
    return parser


def main(argv=None):
    """Run the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status.
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "bench":
        return _bench_command(parser, args)
    if args.command is None:
        args.json = False
    return _info(args)
