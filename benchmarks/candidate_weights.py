"""Score candidate lit-tiny weights on the dev sequences beside the shipped weights and the peers.

The one look at ``../shared/data/dev`` that decides whether a training run ships (issue 24;
``docs/training.md`` records each look). For every candidate: ``napari-lit bench --method
propagate`` with ``--init mask`` and ``--init click`` (zoom on, the defaults), then one table
per init -- static | flow | shipped | candidates, per sequence and per domain group -- and the
issue's checks (per-sequence mean J against flow + 0.05, DAVIS against flow + 0.10, each
group against flow, no sequence more than 0.03 below the shipped weights, click mean J).
The peers and the shipped weights are read from ``benchmarks/results`` (``static-*.json``,
``flow-*.json``, ``propagate-*.json``, written by ``dev_benchmarks.sh tracking``).

    .venv/bin/python benchmarks/candidate_weights.py runs/lit-tiny-r3/best.pt [more.pt ...] \\
        --out benchmarks/results/candidates/r3.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "dev"
RESULTS = ROOT / "benchmarks" / "results"


def per_sequence(result: dict) -> dict:
    """Sequence name -> mean J over its objects; also ``__group__<group>`` means."""
    from napari_lit.bench.report import DOMAIN_GROUPS, sequence_summary

    rows = sequence_summary(result)
    out = {r["name"]: r["mean_j"] for r in rows}
    for g in DOMAIN_GROUPS:
        vals = [r["mean_j"] for r in rows if r["group"] == g and r["mean_j"] is not None]
        if vals:
            out[f"__group__{g}"] = sum(vals) / len(vals)
    vals = [r["mean_j"] for r in rows if r["mean_j"] is not None]
    out["__all__"] = sum(vals) / len(vals)
    davis = [r["mean_j"] for r in rows if r["name"].startswith("davis-") and r["mean_j"] is not None]
    if davis:
        out["__davis__"] = sum(davis) / len(davis)
    return out


def checks(cand: dict, flow: dict, shipped: dict) -> list:
    """Issue 24's mask-init targets as (what, passed, figures) rows."""
    rows = [("per-sequence mean J >= flow + 0.05", cand["__all__"] >= flow["__all__"] + 0.05,
             f"{cand['__all__']:.3f} vs {flow['__all__']:.3f}")]
    if "__davis__" in cand:
        rows.append(("DAVIS mean >= flow + 0.10", cand["__davis__"] >= flow["__davis__"] + 0.10,
                     f"{cand['__davis__']:.3f} vs {flow['__davis__']:.3f}"))
    for g in ("microscopy", "medical"):
        k = f"__group__{g}"
        if k in cand:
            rows.append((f"{g} mean >= flow", cand[k] >= flow[k], f"{cand[k]:.3f} vs {flow[k]:.3f}"))
    worst = min((cand[k] - shipped[k], k) for k in cand if not k.startswith("__") and k in shipped)
    rows.append(("no sequence > 0.03 below the shipped weights", worst[0] >= -0.03,
                 f"worst {worst[1]} {worst[0]:+.3f}"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", nargs="+", help="candidate weights (run checkpoints or exported files)")
    p.add_argument("--labels", nargs="*", default=None)
    p.add_argument("--data", default=str(DEV))
    p.add_argument("--inits", nargs="*", default=["mask", "click"])
    p.add_argument("--sequences", nargs="*", default=None, help="a subset (for a quick check; the look is on all)")
    p.add_argument("--out", required=True, help="JSON with every candidate's bench results")
    args = p.parse_args(argv)
    from napari_lit.bench.report import comparison_table
    from napari_lit.bench.runner import run_benchmark
    from napari_lit.models.catalogue import LIT_TINY_CONFIG

    labels = args.labels or [Path(w).parent.name + "/" + Path(w).stem for w in args.weights]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(out.read_text()) if out.exists() else {}
    report = []
    for init in args.inits:
        peers = [json.loads((RESULTS / f"{m}-{init}.json").read_text()) for m in ("static", "flow", "propagate")]
        results = []
        for w, lab in zip(args.weights, labels):
            key = f"{lab}|{init}"
            if key not in saved:
                saved[key] = run_benchmark(args.data, "propagate", init, model=str(w), config=LIT_TINY_CONFIG,
                                           sequences=args.sequences,
                                           progress=False)
                out.write_text(json.dumps(saved, indent=1))
            results.append(saved[key])
        report.append(f"## --init {init}\n")
        report.append(comparison_table(peers + results, ["static", "flow", "shipped"] + labels))
        flow, shipped = per_sequence(peers[1]), per_sequence(peers[2])
        for lab, r in zip(labels, results):
            mine = per_sequence(r)
            report.append(f"\n{lab}: mean J over objects {r['mean_j']:.3f} (shipped {peers[2]['mean_j']:.3f}), "
                          f"per-sequence mean {mine['__all__']:.3f} (shipped {shipped['__all__']:.3f})\n")
            if init == "click":
                report.append(f"- {'pass' if r['mean_j'] >= 0.45 else 'MISS'}: click mean J >= 0.45 "
                              f"({r['mean_j']:.3f} over objects)\n")
            if init == "mask":
                for what, ok, figs in checks(mine, flow, shipped):
                    report.append(f"- {'pass' if ok else 'MISS'}: {what} ({figs})\n")
        report.append("\n")
    text = "".join(report)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
