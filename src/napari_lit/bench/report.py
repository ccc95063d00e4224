"""Reports of benchmark results: Markdown tables and a per-frame J plot.

A result is the dict :func:`napari_lit.bench.runner.run_benchmark` returns (or the JSON file
``napari-lit bench`` writes). Sequence rows average their objects; the rows of the domain
groups (microscopy, medical, natural video; :func:`domain_group`) average sequences (each
sequence counts once, whatever its number of objects).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "load_result",
    "sequence_summary",
    "domain_group",
    "DOMAIN_GROUPS",
    "markdown_table",
    "plot_per_frame",
    "plot_entropy_iou",
    "write_reports",
    "comparison_table",
]

_TOP_KEYS = ("method", "init", "mean_j", "mean_jf", "sequences")
_ENTRY_KEYS = ("name", "object", "frames", "mean_j", "mean_jf", "j")

ResultLike = Union[str, Path, Dict]


def load_result(result: ResultLike) -> Dict:
    """Read and check one benchmark result.

    Parameters
    ----------
    result : str, Path or dict
        A JSON file written by ``napari-lit bench``, or its dict.

    Returns
    -------
    dict

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not JSON or a required key is missing.
    """
    if isinstance(result, (str, Path)):
        path = Path(result)
        if not path.is_file():
            raise FileNotFoundError(f"benchmark result not found: {path}")
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not a JSON benchmark result: {exc}") from None
    if not isinstance(result, dict):
        raise ValueError(f"expected a benchmark result dict; got {type(result).__name__}")
    missing = [k for k in _TOP_KEYS if k not in result]
    if missing:
        raise ValueError(f"benchmark result lacks the keys {missing} (expected {list(_TOP_KEYS)})")
    for i, e in enumerate(result["sequences"]):
        lack = [k for k in _ENTRY_KEYS if k not in e]
        if lack:
            raise ValueError(f"entry {i} of the benchmark result lacks the keys {lack} (expected {list(_ENTRY_KEYS)})")
    return result


def _is_davis(entry: Dict) -> bool:
    return bool(entry.get("davis", str(entry["name"]).startswith("davis")))


#: The domain groups of the tables, in their order.
DOMAIN_GROUPS = ("microscopy", "medical", "natural video")


def domain_group(entry: Dict) -> str:
    """Which of :data:`DOMAIN_GROUPS` a benchmark entry belongs to.

    Parameters
    ----------
    entry : dict
        A ``sequences`` entry (``name``, ``domain``, ``davis``).

    Returns
    -------
    str
        ``natural video`` for DAVIS and other video, ``medical`` for domains that say
        medical, MRI or CT, else ``microscopy``.
    """
    domain = str(entry.get("domain", "")).lower()
    if _is_davis(entry) or "video" in domain:
        return "natural video"
    if any(w in domain.replace(",", " ").split() for w in ("medical", "mri", "ct")):
        return "medical"
    return "microscopy"


def sequence_summary(result: ResultLike) -> List[Dict]:
    """One row per sequence of ``result`` (a result dict or JSON path), objects averaged.

    Returns
    -------
    list of dict
        In order of first appearance, with ``name``, ``domain``, ``davis``, ``group``
        (:func:`domain_group`), ``objects``
        (count), ``frames``, ``mean_j``, ``mean_jf``, and ``j`` ((N,) float ndarray: per-frame
        J averaged over the objects).
    """
    result = load_result(result)
    rows: Dict[str, Dict] = {}
    for e in result["sequences"]:
        row = rows.setdefault(e["name"], {
            "name": e["name"], "domain": e.get("domain", ""), "davis": _is_davis(e), "group": domain_group(e),
            "frames": int(e["frames"]), "_j": [], "_jf": [], "_per_frame": [],
        })
        row["_j"].append(float(e["mean_j"]))
        row["_jf"].append(float(e["mean_jf"]))
        row["_per_frame"].append(np.asarray(e["j"], float))
    out = []
    for row in rows.values():
        out.append({
            "name": row["name"], "domain": row["domain"], "davis": row["davis"], "group": row["group"],
            "objects": len(row["_j"]), "frames": row["frames"],
            "mean_j": float(np.mean(row["_j"])), "mean_jf": float(np.mean(row["_jf"])),
            "j": np.mean(row["_per_frame"], axis=0),
        })
    return out


def _fmt(x: Optional[float]) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _group_mean(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _label(result: Dict) -> str:
    model = result.get("model")
    return f"{result['method']}/{result['init']}" + (f" ({model})" if model else "")


def markdown_table(result: ResultLike) -> str:
    """Markdown table of one result: one row per sequence, then the mean of each domain group.

    Parameters
    ----------
    result : str, Path or dict
        See :func:`load_result`.

    Returns
    -------
    str
        A heading line (method, init, model, overall means over objects, time) and a table
        with the columns sequence, domain, objects, frames, mean J, mean J&F.

    Raises
    ------
    FileNotFoundError, ValueError
        See :func:`load_result`.
    """
    result = load_result(result)
    rows = sequence_summary(result)
    secs = result.get("seconds")
    lines = [
        f"**{_label(result)}**: mean J {_fmt(result['mean_j'])}, mean J&F {_fmt(result['mean_jf'])} "
        f"over {len(result['sequences'])} objects"
        + (f" ({secs:.0f} s)" if isinstance(secs, (int, float)) else ""),
        "",
        "| sequence | domain | objects | frames | mean J | mean J&F |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['domain']} | {r['objects']} | {r['frames']} | "
                     f"{_fmt(r['mean_j'])} | {_fmt(r['mean_jf'])} |")
    for title in DOMAIN_GROUPS:
        group = [r for r in rows if r["group"] == title]
        if not group:
            continue
        lines.append(
            f"| **{title} mean** | | {sum(r['objects'] for r in group)} | {sum(r['frames'] for r in group)} | "
            f"{_fmt(_group_mean(r['mean_j'] for r in group))} | {_fmt(_group_mean(r['mean_jf'] for r in group))} |"
        )
    return "\n".join(lines) + "\n"


def plot_per_frame(result: ResultLike, path: Union[str, Path], max_sequences: int = 4,
                   sequences: Optional[Sequence[str]] = None) -> Path:
    """Plot per-frame J (averaged over objects) of up to ``max_sequences`` sequences to a PNG.

    Parameters
    ----------
    result : str, Path or dict
    path : str or Path
        Output ``.png``.
    max_sequences : int
        At most this many sequences are drawn.
    sequences : sequence of str, optional
        Names to draw; by default the first sequence of each domain, then the others, in
        the result's order.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        If a name in ``sequences`` is not in the result (or see :func:`load_result`).
    """
    # the Agg canvas directly: no pyplot, no global backend switch, no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = load_result(result)
    rows = sequence_summary(result)
    if sequences is not None:
        names = {r["name"]: r for r in rows}
        unknown = [s for s in sequences if s not in names]
        if unknown:
            raise ValueError(f"sequences {unknown} are not in the result (it has {list(names)})")
        rows = [names[s] for s in sequences]
    else:  # one sequence per domain first, for variety; then the rest in order
        seen = set()
        firsts = [r for r in rows if not (r["domain"] in seen or seen.add(r["domain"]))]
        rows = firsts + [r for r in rows if r not in firsts]
    rows = rows[:max_sequences]
    fig = Figure(figsize=(9, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for r in rows:
        ax.plot(np.arange(len(r["j"])), r["j"], marker=".", lw=1.2,
                label=f"{r['name']} (mean {r['mean_j']:.2f})")
    ax.set_xlabel("frame / slice")
    ax.set_ylabel("J (IoU)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"per-frame J, {_label(result)}", fontsize=10)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_entropy_iou(result: ResultLike, path: Union[str, Path], sequence: Optional[str] = None) -> Path:
    """Plot masked entropy against IoU over the frames of one sequence (Lazy-XMem Fig. 3).

    Left: per frame, J and the masked entropy of each object of ``sequence``; right: every
    (entropy, J) pair of the sequence, with each object's Spearman correlation of -entropy
    with J in the legend. The prompt frame's entropy is left out of both panels (its mask is
    given, not predicted).

    Parameters
    ----------
    result : str, Path or dict
        A ``--method propagate`` result (entries carry ``entropy`` and ``spearman``).
    path : str or Path
        Output ``.png``.
    sequence : str, optional
        Sequence name; by default the one with the most frames among those with several
        objects, else the first.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        If the result has no per-frame entropy (not a propagate result, or written before
        napari-lit recorded it), or ``sequence`` is not in it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = load_result(result)
    entries = [e for e in result["sequences"] if e.get("entropy") is not None]
    if not entries:
        raise ValueError("the result has no per-frame masked entropy: run `napari-lit bench "
                         "--method propagate` to get one")
    names = list(dict.fromkeys(e["name"] for e in entries))
    if sequence is None:
        counts = {n: sum(e["name"] == n for e in entries) for n in names}
        frames = {e["name"]: int(e["frames"]) for e in entries}
        several = [n for n in names if counts[n] > 1] or names
        sequence = max(several, key=lambda n: frames[n])
    elif sequence not in names:
        raise ValueError(f"sequence {sequence!r} is not in the result (it has {names})")
    chosen = [e for e in entries if e["name"] == sequence]
    fig = Figure(figsize=(11, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_t = fig.add_subplot(1, 2, 1)
    ax_e = ax_t.twinx()
    ax_s = fig.add_subplot(1, 2, 2)
    colours = [f"C{i % 10}" for i in range(len(chosen))]
    for e, c in zip(chosen, colours):
        j, h = np.asarray(e["j"], float), np.asarray(e["entropy"], float)
        x = np.arange(len(j))
        keep = np.isfinite(h) & (x != e.get("prompt_frame", -1))
        ax_t.plot(x, j, "-", color=c, lw=1.2)
        ax_e.plot(x, np.where(keep, h, np.nan), ":", color=c, lw=1.2)  # the prompt frame's mask is given
        rho = e.get("spearman")
        ax_s.scatter(h[keep], j[keep], s=10, color=c,
                     label=f"object {e['object']}: rho " + ("–" if rho is None else f"{rho:.2f}"))
    ax_t.set_xlabel("frame / slice")
    ax_t.set_ylabel("J (IoU), solid")
    ax_e.set_ylabel("masked entropy, dotted")
    ax_t.set_ylim(-0.02, 1.02)
    ax_t.set_title(f"{sequence}: per frame", fontsize=10)
    ax_s.set_xlabel("masked entropy")
    ax_s.set_ylabel("J (IoU)")
    ax_s.set_ylim(-0.02, 1.02)
    ax_s.set_title("each frame (prompt frame left out)", fontsize=10)
    ax_s.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    for ax in (ax_t, ax_s):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_reports(result: ResultLike, json_path: Union[str, Path],
                  report_dir: Optional[Union[str, Path]] = None) -> Tuple[Path, Path]:
    """Write the Markdown table and the per-frame plot of a result.

    Parameters
    ----------
    result : str, Path or dict
    json_path : str or Path
        The result's JSON file; the reports take its stem (``OUT.md``, ``OUT.png``).
    report_dir : str or Path, optional
        Folder for the reports (created); beside ``json_path`` by default.

    Returns
    -------
    (Path, Path)
        The ``.md`` and ``.png`` files.
    """
    json_path = Path(json_path)
    folder = Path(report_dir) if report_dir is not None else json_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / (json_path.stem + ".md")
    md.write_text(markdown_table(result))
    png = plot_per_frame(result, folder / (json_path.stem + ".png"))
    return md, png


def comparison_table(results: Sequence[ResultLike], labels: Optional[Sequence[str]] = None) -> str:
    """Markdown table comparing results: one row per sequence, one mean-J column per result.

    Parameters
    ----------
    results : sequence of (str, Path or dict)
        Benchmark results (JSON files or dicts), e.g. propagate and static on the same data.
    labels : sequence of str, optional
        Column titles; ``method/init (model)`` of each result by default (the file stem is
        added when two would be equal).

    Returns
    -------
    str
        Columns sequence, domain, then mean J per result; rows per sequence (in order of
        first appearance; ``–`` where a result lacks the sequence), then the mean of each
        domain group (:func:`domain_group`) of each column over the sequences it has, and of
        all sequences.

    Raises
    ------
    ValueError
        If ``results`` is empty, ``labels`` has the wrong length (or see :func:`load_result`).
    """
    if isinstance(results, (str, Path, dict)):
        results = [results]
    if not results:
        raise ValueError("comparison_table needs at least one benchmark result")
    loaded = [load_result(r) for r in results]
    if labels is None:
        labels = [_label(r) for r in loaded]
        if len(set(labels)) < len(labels):
            labels = [
                f"{lab} [{Path(src).stem}]" if isinstance(src, (str, Path)) else f"{lab} [{i + 1}]"
                for i, (lab, src) in enumerate(zip(labels, results))
            ]
    elif len(labels) != len(loaded):
        raise ValueError(f"got {len(labels)} labels for {len(loaded)} results")
    summaries = [{r["name"]: r for r in sequence_summary(res)} for res in loaded]
    names: Dict[str, Dict] = {}
    for s in summaries:
        for name, row in s.items():
            names.setdefault(name, row)
    lines = [
        "| sequence | domain | " + " | ".join(f"mean J {lab}" for lab in labels) + " |",
        "|---|---|" + "---:|" * len(labels),
    ]
    for name, row in names.items():
        cells = [_fmt(s[name]["mean_j"]) if name in s else "–" for s in summaries]
        lines.append(f"| {name} | {row['domain']} | " + " | ".join(cells) + " |")
    for title in DOMAIN_GROUPS + ("all sequences",):
        if title != "all sequences" and not any(r["group"] == title for r in names.values()):
            continue
        cells = [_fmt(_group_mean(r["mean_j"] for r in s.values() if title in ("all sequences", r["group"])))
                 for s in summaries]
        lines.append(f"| **{title} mean** | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
