"""Plot a lit-tiny training run's validation curve and losses from its ``log.jsonl``.

    python benchmarks/plot_training.py RUN_DIR [--out docs/training-curve.png]

Prints a Markdown table of the validation records (step, stage, tracking J vs the static
baseline, two-click J) for docs/training.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_log(run_dir: Path):
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    # a resumed run may repeat steps after its last checkpoint: keep the latest record per step
    latest = {}
    for r in records:
        latest[(r["step"], "val_track_j" in r)] = r
    return sorted(latest.values(), key=lambda r: r["step"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default="docs/training-curve.png")
    args = p.parse_args(argv)
    records = load_log(Path(args.run_dir))
    val = [r for r in records if "val_track_j" in r]
    train = [r for r in records if "core_loss" in r]

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    steps = [r["step"] for r in val]
    ax1.plot(steps, [r["val_track_j"] for r in val], "o-", label="tracking from a mask (lit-tiny)")
    ax1.plot(steps, [r["val_static_j"] for r in val], "--", label="static baseline (repeat the mask)")
    ax1.plot(steps, [r["val_click2_j"] for r in val], "s-", label="2 clicks, single frame")
    real = [r for r in val if "val_real_track_j" in r]
    if real:  # the held-back real clips (the `real` schedule), and the selection score
        rs = [r["step"] for r in real]
        ax1.plot(rs, [r["val_real_track_j"] for r in real], "o-", label="real clips: tracking from a mask")
        ax1.plot(rs, [r["val_real_static_j"] for r in real], "--", label="real clips: static baseline")
        ax1.plot(rs, [r["val_real_mix"] for r in real], "^-", label="val_real_mix (selects best.pt)")
    ax1.set(xlabel="step", ylabel="mean J on held-back clips", ylim=(0, 1),
            title="validation (generated; real where logged)")
    ax1.legend(fontsize=8)
    ax2.plot([r["step"] for r in train], [r["loss_dice"] for r in train], label="dice")
    ax2.plot([r["step"] for r in train], [r["loss_mask"] for r in train], label="focal")
    ax2.set(xlabel="step", ylabel="training loss (summed over frames and steps)", title="training")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print("| step | stage | tracking J | static J | 2-click J |")
    print("|---:|---|---:|---:|---:|")
    for r in val:
        print(f"| {r['step']} | {r.get('stage', '')} | {r['val_track_j']:.3f} | {r['val_static_j']:.3f} | {r['val_click2_j']:.3f} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
