"""Reports of the correction benchmark: corrections per sequence, J@k, and their plots.

Inputs are results of :func:`napari_lit.bench.runner.run_benchmark` with an interactive
method (``frozen``, ``lit``, ``lit-always``), as dicts or JSON paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np

from .report import load_result

__all__ = ["correction_summary", "correction_table", "plot_corrections", "j_at_k_table", "plot_j_at_k",
           "plot_corrections_by_sequence"]

ResultLike = Union[str, Path, Dict]


def correction_summary(result: ResultLike) -> Dict[str, Dict]:
    """Per sequence: corrections, clicks, adapter accepts and mean J (objects averaged).

    Parameters
    ----------
    result : dict or path
        An interactive benchmark result.

    Returns
    -------
    dict
        ``{sequence name: {"corrections", "clicks", "adapter_accepts", "mean_j", "objects"}}``.

    Raises
    ------
    ValueError
        If ``result`` is not from an interactive method.
    """
    result = load_result(result)
    if "total_corrections" not in result:
        raise ValueError(f"result of method {result['method']!r} has no corrections (not interactive)")
    out: Dict[str, Dict] = {}
    for e in result["sequences"]:
        row = out.setdefault(e["name"], {"corrections": 0, "clicks": 0, "adapter_accepts": 0, "j": [], "objects": 0})
        row["corrections"] += e["corrections"]
        row["clicks"] += e["clicks"]
        row["adapter_accepts"] += e["adapter_accepts"]
        row["j"].append(e["mean_j"])
        row["objects"] += 1
    for row in out.values():
        row["mean_j"] = float(np.mean(row.pop("j")))
    return out


def correction_table(results: Sequence[ResultLike], labels: Optional[Sequence[str]] = None) -> str:
    """Markdown table comparing interactive methods run at the same tau.

    One row per sequence with each method's corrections (adapter accepts in brackets) and
    mean J, then a total row; the last column gives the reduction in corrections of the
    second result relative to the first (e.g. lit vs frozen).

    Parameters
    ----------
    results : sequence of dict or path
        Two or more interactive results (first = the reference, e.g. ``frozen``).
    labels : sequence of str, optional
        Column names; the methods by default.

    Returns
    -------
    str
    """
    loaded = [load_result(r) for r in results]
    summaries = [correction_summary(r) for r in loaded]
    labels = list(labels) if labels else [r["method"] for r in loaded]
    names = sorted({n for s in summaries for n in s})
    head = "| sequence | " + " | ".join(f"{l} corrections | {l} J" for l in labels) + " | reduction |"
    sep = "|---|" + "---:|---:|" * len(labels) + "---:|"
    lines = [head, sep]

    def cell(s, name):
        row = s.get(name)
        if row is None:
            return "–", "–"
        acc = f" ({row['adapter_accepts']})" if row["adapter_accepts"] else ""
        return f"{row['corrections']}{acc}", f"{row['mean_j']:.3f}"

    def reduction(a, b):
        return "–" if not a else f"{100 * (a - b) / a:.0f} %"

    for name in names:
        cells = [c for s in summaries for c in cell(s, name)]
        a = summaries[0].get(name, {}).get("corrections")
        b = summaries[1].get(name, {}).get("corrections") if len(summaries) > 1 else None
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {reduction(a, b) if b is not None else '–'} |")
    totals = [r["total_corrections"] for r in loaded]
    total_cells = []
    for r in loaded:
        acc = f" ({r['adapter_accepts']})" if r["adapter_accepts"] else ""
        total_cells += [f"**{r['total_corrections']}{acc}**", f"**{r['mean_j']:.3f}**"]
    lines.append("| **all** | " + " | ".join(total_cells) + f" | **{reduction(totals[0], totals[1]) if len(totals) > 1 else '–'}** |")
    return "\n".join(lines) + "\n"


def plot_corrections(results: Sequence[ResultLike], sequence: str, path: Union[str, Path],
                     obj: Optional[int] = None, labels: Optional[Sequence[str]] = None) -> Path:
    """Per-frame IoU of the final masks and the correction events, one panel per method.

    Parameters
    ----------
    results : sequence of dict or path
        Interactive results (e.g. frozen and lit at one tau).
    sequence : str
        Sequence name.
    path : str or Path
        PNG to write.
    obj : int, optional
        Object id; the one with the most corrections in the first result by default.
    labels : sequence of str, optional
        Panel titles; the methods by default.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        If the sequence (or object) is in none of the results.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    loaded = [load_result(r) for r in results]
    labels = list(labels) if labels else [r["method"] for r in loaded]
    entries = [[e for e in r["sequences"] if e["name"] == sequence] for r in loaded]
    if not any(entries):
        raise ValueError(f"sequence {sequence!r} is in none of the results")
    if obj is None:
        obj = max(entries[0], key=lambda e: e["corrections"])["object"]
    fig = Figure(figsize=(10, 2.2 * len(loaded) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(loaded), 1, sharex=True, squeeze=False)[:, 0]
    style = {"clicks": ("v", "tab:orange", "clicks"), "mask": ("x", "tab:red", "mask"),
             "adapter": ("o", "tab:green", "adapter accepted"),
             "auto": ("*", "tab:purple", "applied by itself (lit-auto)")}
    for ax, es, label, r in zip(axes, entries, labels, loaded):
        e = next((e for e in es if e["object"] == obj), None)
        if e is None:
            ax.set_title(f"{label}: object {obj} not in this result")
            continue
        j = np.asarray(e["j"])
        ax.plot(np.arange(len(j)), j, "-", color="tab:blue", lw=1.2)
        ax.axhline(r.get("tau", 0.5), color="grey", ls=":", lw=1)
        seen = set()
        for ev in e["events"]:
            marker, color, name = style[ev["kind"]]
            ax.plot(ev["frame"], ev["iou_before"], marker, color=color, ms=7,
                    label=None if name in seen else name)
            seen.add(name)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("IoU")
        ax.set_title(f"{label}: {e['corrections']} corrections, {e['adapter_accepts']} adapter accepts, "
                     f"mean J {e['mean_j']:.3f}", fontsize=9)
        if seen:
            ax.legend(fontsize=7, loc="lower left")
    axes[-1].set_xlabel("frame (markers: IoU before the event)")
    fig.suptitle(f"{sequence}, object {obj}, tau {loaded[0].get('tau')}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def _j_at_k(result: Dict) -> list:
    if not result.get("j_at_k"):
        raise ValueError(f"result of method {result['method']!r} has no J@k (run the benchmark with --j-at-k)")
    return result["j_at_k"]


def j_at_k_table(results: Sequence[ResultLike], labels: Optional[Sequence[str]] = None) -> str:
    """Markdown table of J@k (mean J after k corrections per object; Kontogianni et al.
    2020's IoU@k) for several interactive results: one row per result, one column per k.

    Parameters
    ----------
    results : sequence of dict or path
        Interactive results run with ``j_at_k`` (:func:`~napari_lit.bench.runner.run_benchmark`).
    labels : sequence of str, optional
        Row names; the methods by default.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If a result has no J@k.
    """
    loaded = [load_result(r) for r in results]
    labels = list(labels) if labels else [r["method"] for r in loaded]
    curves = [_j_at_k(r) for r in loaded]
    k_max = max(len(c) for c in curves)
    lines = ["| | " + " | ".join(f"J@{k}" for k in range(k_max)) + " |",
             "|---|" + "---:|" * k_max]
    for label, c in zip(labels, curves):
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in c) + " |")
    return "\n".join(lines) + "\n"


def plot_j_at_k(results: Sequence[ResultLike], path: Union[str, Path],
                labels: Optional[Sequence[str]] = None, title: str = "") -> Path:
    """J@k against k, one line per result (e.g. frozen and LIT with each adapter scope).

    Parameters
    ----------
    results : sequence of dict or path
        Interactive results run with ``j_at_k``.
    path : str or Path
        PNG to write.
    labels : sequence of str, optional
        Legend entries; the methods by default.
    title : str

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        If a result has no J@k.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    loaded = [load_result(r) for r in results]
    labels = list(labels) if labels else [r["method"] for r in loaded]
    fig = Figure(figsize=(5.5, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for r, label in zip(loaded, labels):
        c = _j_at_k(r)
        ax.plot(range(len(c)), c, "o-", ms=4, label=label)
    ax.set_xlabel("corrections per object (k)")
    ax.set_ylabel("mean J after k corrections")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"J@k, tau {loaded[0].get('tau')}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def plot_corrections_by_sequence(results: Sequence[ResultLike], path: Union[str, Path],
                                 labels: Optional[Sequence[str]] = None, title: str = "") -> Path:
    """Corrections per sequence, one bar per result (adapter accepts hatched on top).

    Parameters
    ----------
    results : sequence of dict or path
        Interactive results at one tau.
    path : str or Path
        PNG to write.
    labels : sequence of str, optional
        Legend entries; the methods by default.
    title : str

    Returns
    -------
    Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    loaded = [load_result(r) for r in results]
    labels = list(labels) if labels else [r["method"] for r in loaded]
    summaries = [correction_summary(r) for r in loaded]
    names = sorted({n for s in summaries for n in s})
    fig = Figure(figsize=(max(5.5, 1.4 * len(names) + 2), 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(loaded)
    x = np.arange(len(names))
    for i, (s, label) in enumerate(zip(summaries, labels)):
        corr = [s.get(n, {}).get("corrections", 0) for n in names]
        acc = [s.get(n, {}).get("adapter_accepts", 0) for n in names]
        bars = ax.bar(x + (i - (len(loaded) - 1) / 2) * width, corr, width, label=label)
        ax.bar(x + (i - (len(loaded) - 1) / 2) * width, acc, width, bottom=corr, fill=False, hatch="//",
               edgecolor=bars.patches[0].get_facecolor() if bars.patches else "grey", lw=0.5)
    ax.set_xticks(x)
    ax.set_xticklabels([n.replace("-", "-\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("corrections (hatched: adapter accepts)")
    ax.legend(fontsize=8)
    ax.set_title(title or f"corrections per sequence, tau {loaded[0].get('tau')}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path
