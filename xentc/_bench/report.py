"""The benchmark report: tables of times and speed-ups, and the plot."""



from .machine import BANDWIDTH_BYTES, BANDWIDTH_PASSES
from .peers import TASKS
from .timing import NOISY_CORES


def _timed(report, task):
    """Peer names of `task` that were timed, xentc first."""
    prefix = task + "/"
    return [k[len(prefix):] for k in report["header"]["peers"] if k.startswith(prefix)]


def speedup(row, task, peer):
    """xentc's speed-up against `peer` on one row: ``peer_ms / xentc_ms``.

    Parameters
    ----------
    row : dict
        One row of `run`'s results.
    task : str
        The task compared.
    peer : str
        The peer's name.

    Returns
    -------
    float
        Above 1 when xentc is faster.
    """
    ms = row["median_ms"]
    return ms[f"{task}/{peer}"] / ms[f"{task}/xentc"]


def _ms(key):
    return lambda r: f"{r['median_ms'][key]:.3f}"


def _columns(report, task, bars):
    """(title, width, formatter of a row) of `task`'s table."""
    names = _timed(report, task)
    cols = [("shape", 14, lambda r: "x".join(map(str, r["shape"])))]
    cols += [(n, max(9, len(n)), _ms(f"{task}/{n}")) for n in names]
    cols.append(("read", 9, _ms("read")))
    cols += [(f"vs {n}", max(8, len(n) + 3), lambda r, n=n: f"{speedup(r, task, n):.2f}x")
             for n in names if n != "xentc"]
    xentc = f"{task}/xentc"
    cols += [
        ("x/read", 7, lambda r: f"{r['median_ms'][xentc] / r['median_ms']['read']:.2f}"),
        ("xentc GB/s", 10, lambda r: f"{r['gbps'][xentc]:.3g}"),
        ("read GB/s", 9, lambda r: f"{r['gbps']['read']:.3g}"),
    ]
    if task == "fwd+bwd":
        cols.append(("mem %", 6, lambda r: "?" if r["extra_memory"] is None else
                     f"{100 * r['extra_memory']['tracemalloc'] / r['bytes']:.2f}"))
    if bars and "torch" in names:
        def verdict(r):
            bar = bars.get(tuple(r["shape"]))
            return "-" if bar is None else ("yes" if speedup(r, task, "torch") >= bar else "no")

        cols += [("bar", 4, lambda r: f"{bars[tuple(r['shape'])]}x"
                  if tuple(r["shape"]) in bars else "-"),
                 ("ok", 3, verdict)]
    cols.append(("other", 5, lambda r: "?" if r["other_cores"] is None
                 else f"{r['other_cores']:.2f}"))
    return cols


def format_table(report, task, bars=None):
    """One task's table: median ms per peer, speed-ups of xentc, bandwidths.

    Parameters
    ----------
    report : dict
        As returned by `run`, with `task`'s xentc peer timed.
    task : str
        A key of `TASKS`.
    bars : dict, optional
        ``{(N, C): minimum speed-up against torch}``; adds the ``bar`` and
        ``ok`` columns.

    Returns
    -------
    str
        The table's lines.
    """
    cols = _columns(report, task, bars)

    def line(cells):
        return "  ".join(cell.rjust(width) for cell, (_, width, _) in zip(cells, cols))

    lines = [line([title for title, _, _ in cols]), line(["-" * width for _, width, _ in cols])]
    lines += [line([fmt(r) for _, _, fmt in cols]) for r in report["results"]]
    return "\n".join(lines)


def format_header(report):
    """The run's description, as printed above the tables.

    Parameters
    ----------
    report : dict
        As returned by `run`.

    Returns
    -------
    str
        Lines describing the machine, the versions and the settings.
    """
    h, cfg = report["header"], report["header"]["xentc"]
    load = "?" if h["load_avg_1min"] is None else f"{h['load_avg_1min']:.2f}"
    versions = ", ".join(f"{m} {v}" for m, v in h["versions"].items())
    lines = [
        f"xentc benchmark, {h['date']}",
        f"  cpu        {h['cpu']} ({h['machine']}), {h['cores']} cores, "
        f"1-min load average at start {load}",
        f"  versions   python {h['python']}, {versions}, xentc {cfg['version']}",
        f"  xentc      openmp={cfg['openmp']}, compiled_isas={','.join(cfg['compiled_isas'])}, "
        f"isa={cfg['isa']}, default threads={cfg['threads']}",
        f"  run        {h['dtype']}, threads={h['threads']} (JAX: its own pool), "
        f"repeat={h['repeat']} (median), interleaved",
        f"  memory     read bandwidth {h['read_bandwidth_gbps']:.1f} GB/s "
        f"(fastest of {BANDWIDTH_PASSES} read passes over {BANDWIDTH_BYTES >> 20} MiB)",
    ]
    if h["missing"]:
        lines.append("  not run    " + ", ".join(f"{k} ({why} not available)"
                                                for k, why in h["missing"].items()))
    return "\n".join(lines)


def format_report(report, bars=None):
    """The whole report: header, one table per task, peers timed, warnings.

    Parameters
    ----------
    report : dict
        As returned by `run`.
    bars : dict, optional
        ``{task: {(N, C): minimum speed-up against torch}}``.

    Returns
    -------
    str
        Text for a terminal.
    """
    h, rows = report["header"], report["results"]
    out = [format_header(report), ""]
    for task in h["tasks"]:
        if "xentc" not in _timed(report, task):
            out += [f"{task}: not timed, xentc's implementation is missing", ""]
            continue
        out += [f"{task} ({TASKS[task]}, mean): ms per call (median); vs P = P's time / "
                "xentc's; x/read = xentc / read pass", format_table(report, task,
                                                                   (bars or {}).get(task)), ""]
    out.append("timed:")
    out += [f"  {k:16} {call}" for k, call in h["peers"].items()]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        out += [f"WARNING: {shape}: {k} disagrees with xentc (loss {r['loss'][k]!r})"
                for k, ok in r["agree"].items() if not ok]
    noisy = [r for r in rows if r["other_cores"] is not None and r["other_cores"] > NOISY_CORES]
    if noisy:
        out.append("WARNING: other processes kept cores busy while timing "
                   + ", ".join("x".join(map(str, r["shape"])) for r in noisy)
                   + ": those times are inflated; re-run on a quiet machine.")
    return "\n".join(out)


def plot(report, path):
    """Draw throughput against the number of classes, one panel per task.

    Parameters
    ----------
    report : dict
        As returned by `run`.
    path : str or path-like
        Image file to write (format from its extension, e.g. ``.png``).

    Raises
    ------
    ImportError
        matplotlib is not installed.
    """
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    h = report["header"]
    tasks = [t for t in h["tasks"] if "xentc" in _timed(report, t)]
    rows = sorted(report["results"], key=lambda r: r["shape"][1])
    classes = [r["shape"][1] for r in rows]
    names = list(dict.fromkeys(n for t in tasks for n in _timed(report, t)))
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.5), sharey=True,
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name in _timed(report, task):
            ax.plot(classes, [r["gbps"][f"{task}/{name}"] for r in rows], marker="o",
                    color=colors[name], lw=2.5 if name == "xentc" else 1.5, label=name)
        ax.axhline(h["read_bandwidth_gbps"], color="k", ls="--", lw=1,
                   label=f"memory read ({h['read_bandwidth_gbps']:.0f} GB/s)"
                   if ax is axes[0][-1] else "_nolegend_")  # last in the shared legend
        ax.set(xscale="log", yscale="log", xlabel="classes C", title=f"{task}: {TASKS[task]}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("GB of logits per second (higher is better)")
    # One legend for all panels, below them: inside, it would hide some points.
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
               frameon=False)
    mib = sorted(r["bytes"] / 2**20 for r in rows)
    size = f"{mib[0]:.3g} MiB" if mib[-1] < 1.1 * mib[0] else f"{mib[0]:.3g} to {mib[-1]:.3g} MiB"
    fig.suptitle(f"xentc {h['xentc']['version']} on {h['cpu']}, {h['threads']} threads: "
                 f"{h['dtype']} logits of {size} per shape, median of {h['repeat']}")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
