"""Training curves: every train/* and eval/* metric of one or more runs' metrics.jsonl, runs overlaid.

python examples/plot_training_curves.py runs/ablation_synthetic/vanilla runs/ablation_synthetic/contrastive
"""

from __future__ import annotations

import argparse

from sld.viz import collect_series, plot_curves, read_metrics, run_labels, save_figure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run folders (or metrics.jsonl files)")
    parser.add_argument("--log-scale", action="store_true", help="log y axis where all values are positive")
    parser.add_argument("--out", default="runs/figures")
    args = parser.parse_args(argv)

    labels = run_labels(args.runs)
    series = collect_series({label: read_metrics(run) for label, run in zip(labels, args.runs)})
    figure = plot_curves(series, labels, log_scale=args.log_scale)
    print(f"{len(series)} panels: {', '.join(series)}")
    for path in save_figure(figure, args.out, "curves"):
        print("wrote", path)


if __name__ == "__main__":
    main()
